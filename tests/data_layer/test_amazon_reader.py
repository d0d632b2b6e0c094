"""Amazon reader for IISAN's released TSVs (spec iisan.md §1.13): re-indexing, titles,
images from a folder, and errors that name the file, line or missing image."""

import os
import shutil

import numpy as np
import pytest

from jaxrec.data.events import DataFormatError
from jaxrec.data.readers import read

RAW = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "raw", "amazon_iisan")


def test_reads_sequences_titles_and_reindexes():
    log = read("amazon_iisan", RAW, category="Musical_Instruments")
    assert log.name == "amazon_Musical_Instruments"
    assert log.num_sessions == 3 and log.num_events == 13
    # A7 occurs in no sequence: not an item (the release re-indexes occurring items only).
    assert list(log.raw_item_ids) == ["A1", "A2", "A3", "A4", "A5", "A6"]
    assert log.items.titles[3] == "Drum sticks 5A maple"
    u1 = log.item[log.session == 0]
    np.testing.assert_array_equal(log.raw_item_ids[u1], ["A1", "A2", "A3", "A1", "A4", "A5"])
    np.testing.assert_array_equal(log.timestamp[log.session == 0], np.arange(6))


def test_images_and_missing_image_errors(tmp_path):
    from PIL import Image
    img = tmp_path / "img"
    img.mkdir()
    for i, a in enumerate(["A1", "A2", "A3", "A4", "A5"]):
        Image.new("RGB", (20, 10), (40 * i, 0, 0)).save(img / f"{a}.jpg")
    with pytest.raises(DataFormatError, match="1 item images missing, e.g. A6.jpg"):
        read("amazon_iisan", RAW, category="Musical_Instruments", image_dir=str(img))
    Image.new("RGB", (8, 8), (0, 0, 255)).save(img / "A6.jpg")
    log = read("amazon_iisan", RAW, category="Musical_Instruments", image_dir=str(img), image_size=16)
    images = log.items.extra["images"]
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    assert images[5, 8, 8, 2] > 200 and images[4, 8, 8, 0] > 140


def test_malformed_input_names_file_and_line(tmp_path):
    d = tmp_path / "raw"
    shutil.copytree(RAW, d)
    users = d / "am_Musical_Instruments_users_10K.tsv"
    users.write_text("u1\tA1 A2\nu2 A3 A4\n")
    with pytest.raises(DataFormatError, match=r"users_10K.tsv:2: expected 'user<TAB>asin"):
        read("amazon_iisan", str(d), category="Musical_Instruments")
    users.write_text("u1\tA1 A2\nu2\tA3 B9\n")
    with pytest.raises(DataFormatError, match=r":2: items not in the items file: \['B9'\]"):
        read("amazon_iisan", str(d), category="Musical_Instruments")
    (d / "Musical_Instruments_items.tsv").write_text("A1\tx\nA1\ty\n")
    with pytest.raises(DataFormatError, match=r"items.tsv:2: item 'A1' listed twice"):
        read("amazon_iisan", str(d), category="Musical_Instruments")
    with pytest.raises(DataFormatError, match="no users file"):
        read("amazon_iisan", str(d), category="Office_Products")
