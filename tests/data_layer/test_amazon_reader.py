"""Amazon reader for IISAN's released TSVs (spec iisan.md §1.13): the last-13 / >= 5 window
before re-indexing, titles, images from a folder, errors that name the file, line or
missing image, and the TFDS preparation round trip of each of the paper's three subsets."""

import logging
import os
import shutil

import numpy as np
import pytest

from jaxrec.data import prepare as prep
from jaxrec.data.events import DataFormatError
from jaxrec.data.readers import read

RAW = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "raw", "amazon_iisan")


def test_reads_sequences_titles_and_reindexes():
    # Fixture: u1 A1 A2 A3 A1 A4 A5 (6), u2 A2 A3 A6 A4 A5 (5), u3 A6 A5 (2 < 5: dropped).
    log = read("amazon_iisan", RAW, category="Musical_Instruments")
    assert log.name == "amazon_Musical_Instruments"
    assert log.raw_session_ids.tolist() == ["u1", "u2"] and log.num_events == 11
    # A7 occurs in no sequence: not an item (the release re-indexes occurring items only).
    assert list(log.raw_item_ids) == ["A1", "A2", "A3", "A4", "A5", "A6"]
    assert log.items.titles[3] == "Drum sticks 5A maple"
    assert log.item.tolist() == [0, 1, 2, 0, 3, 4] + [1, 2, 5, 3, 4]
    np.testing.assert_array_equal(log.timestamp, list(range(6)) + list(range(5)))
    whole = read("amazon_iisan", RAW, category="Musical_Instruments", keep_last=0, min_len=1)
    assert whole.num_sessions == 3 and whole.num_events == 13


def _write_category(d, category):
    """A tiny release of ``category``: y has 5 items, x has 15 (its last 13 drop B2 and B3),
    z has 4 (dropped by min_len 5); B3 then occurs in no kept window. Neither file is in
    sorted order, as the release numbers items and users in file order."""
    d.mkdir(parents=True, exist_ok=True)
    (d / f"am_{category}_users.tsv").write_text(
        "y\tB1 C4 C4 C4 C1\n"
        "x\tB2 B3 C1 C2 C3 C1 C2 C3 C1 C2 C3 C1 C2 C3 C4\n"
        "\n"
        "z\tB3 C1 C1 C1\n")
    (d / f"{category}_items.tsv").write_text(
        "C4\tBeaker 250 ml\nB2\tOnly before the window\nB1\tSolder wire\n"
        "C1\tLab goggles, anti-fog\nB3\tOnly outside windows\nC3\tNitrile gloves\n"
        "C2\tPipette tips\n")
    return d


# The kept items in items-file order C4 B1 C1 C3 C2 -> 0..4; users y, x -> 0, 1.
KEPT = ["C4", "B1", "C1", "C3", "C2"]
Y = [1, 0, 0, 0, 2]
X = [2, 4, 3, 2, 4, 3, 2, 4, 3, 2, 4, 3, 0]


def test_last_13_of_at_least_5_before_reindexing(tmp_path):
    d = _write_category(tmp_path / "raw", "Office_Products")
    log = read("amazon_iisan", str(d), category="Office_Products")
    assert log.raw_item_ids.tolist() == KEPT
    assert log.raw_session_ids.tolist() == ["y", "x"]
    assert log.item.tolist() == Y + X
    np.testing.assert_array_equal(log.timestamp[5:], np.arange(2, 15))
    assert log.items.titles == ["Beaker 250 ml", "Solder wire", "Lab goggles, anti-fog",
                                "Nitrile gloves", "Pipette tips"]
    log = read("amazon_iisan", str(d), category="Office_Products", keep_last=14, min_len=4)
    assert log.raw_item_ids.tolist() == ["C4", "B1", "C1", "B3", "C3", "C2"]
    assert log.raw_session_ids.tolist() == ["y", "x", "z"] and log.num_events == 5 + 14 + 4


def _images(folder, names, size=(20, 10)):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(names):
        Image.new("RGB", size, (40 * i, 0, 255 - 40 * i)).save(folder / f"{a}.jpg", quality=95)


def test_images_and_missing_image_errors(tmp_path, caplog):
    img = tmp_path / "img"
    _images(img, ["A1", "A2", "A3", "A4", "A5"])
    with pytest.raises(DataFormatError, match="img: 1 of 6 item images missing, e.g. A6.jpg"):
        read("amazon_iisan", RAW, category="Musical_Instruments", image_dir=str(img))
    with caplog.at_level(logging.WARNING):
        log = read("amazon_iisan", RAW, category="Musical_Instruments", image_dir=str(img),
                   image_size=4, allow_missing_images=True)
    assert "1 of 6 item images missing" in caplog.text
    assert log.items.extra["has_image"].tolist() == [1, 1, 1, 1, 1, 0]
    assert log.items.extra["images"][5].max() == 0
    from PIL import Image
    Image.new("RGB", (8, 8), (0, 0, 255)).save(img / "A6.jpg")
    log = read("amazon_iisan", RAW, category="Musical_Instruments", image_dir=str(img),
               image_size=16)
    images = log.items.extra["images"]
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    # Solid colours: item i (A1..A5) is (40 i, 0, 255 - 40 i); A6 is blue (JPEG: within 3).
    want = np.asarray([(40 * i, 0, 255 - 40 * i) for i in range(5)] + [(0, 0, 255)])
    assert np.abs(images.astype(int) - want[:, None, None, :]).max() <= 3


def test_malformed_input_names_file_and_line(tmp_path):
    d = tmp_path / "raw"
    shutil.copytree(RAW, d)
    users = d / "am_Musical_Instruments_users_10K.tsv"
    users.write_text("u1\tA1 A2\nu2 A3 A4\n")
    with pytest.raises(DataFormatError, match=r"users_10K.tsv:2: expected 'user<TAB>item"):
        read("amazon_iisan", str(d), category="Musical_Instruments")
    users.write_text("u1\tA1 A2\nu2\tA3 B9\n")
    with pytest.raises(DataFormatError, match=r":2: items not in the items file: \['B9'\]"):
        read("amazon_iisan", str(d), category="Musical_Instruments")
    users.write_text("u1\tA1 A2\nu2\tA3 A4\n")
    with pytest.raises(DataFormatError, match=r"users_10K.tsv: no user has at least min_len=5"):
        read("amazon_iisan", str(d), category="Musical_Instruments")
    (d / "Musical_Instruments_items.tsv").write_text("A1\tx\nA1\ty\n")
    with pytest.raises(DataFormatError, match=r"items.tsv:2: item 'A1' listed twice"):
        read("amazon_iisan", str(d), category="Musical_Instruments")
    with pytest.raises(DataFormatError, match="no users file"):
        read("amazon_iisan", str(d), category="Office_Products")
    with pytest.raises(DataFormatError, match="raw directory does not exist"):
        read("amazon_iisan", str(tmp_path / "nowhere"))
    with pytest.raises(DataFormatError, match="image folder does not exist"):
        read("amazon_iisan", RAW, category="Musical_Instruments",
             image_dir=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("category,folder", [("Industrial_and_Scientific", "am_image_is"),
                                             ("Musical_Instruments", "am_image_mi"),
                                             ("Office_Products", "am_image_op")])
def test_each_subset_survives_preparation(category, folder, tmp_path):
    d = _write_category(tmp_path / "raw", category)
    # The release's image folder inside raw_dir is found by the default image_dir='auto'.
    _images(d / folder, KEPT, size=(12, 6))
    opts = dict(category=category, image_size=6)
    ref = read("amazon_iisan", str(d), **opts)
    ds = prep.load("amazon_iisan", raw_dir=str(d), data_dir=str(tmp_path / "data"), **opts)
    assert ds.num_items == 5 and ds.raw_item_ids.tolist() == KEPT
    assert ds.items.titles == ref.items.titles
    np.testing.assert_array_equal(ds.items.extra["images"], ref.items.extra["images"])
    assert ds.items.extra["images"].dtype == np.uint8
    users = ds.all_sessions()
    assert users.raw_session_ids.tolist() == ["y", "x"]
    assert users.items.tolist() == Y + X
    # Item i's image is colour i of _images (JPEG: within 3 of it).
    want = np.asarray([(40 * i, 0, 255 - 40 * i) for i in range(5)])
    assert np.abs(ds.items.extra["images"].astype(int) - want[:, None, None, :]).max() <= 3


def test_interrupted_preparation_leaves_no_complete_dataset(tmp_path, monkeypatch):
    d = _write_category(tmp_path / "raw", "Industrial_and_Scientific")
    data = str(tmp_path / "data")
    real, calls = prep._session_example, {"n": 0}

    def dying(log, bounds, s):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(log, bounds, s)

    monkeypatch.setattr(prep, "_session_example", dying)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare("amazon_iisan", raw_dir=str(d), data_dir=data)
    sdir, idir = prep.dataset_dirs("amazon_iisan", data,
                                   prep._normalise_options("amazon_iisan", {}, str(d)))
    assert os.path.exists(os.path.join(idir, "dataset_info.json")) and not os.path.exists(sdir)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        prep.load("amazon_iisan", raw_dir=str(d), data_dir=data, prepare_if_missing=False)
    monkeypatch.setattr(prep, "_session_example", real)
    ds = prep.load("amazon_iisan", raw_dir=str(d), data_dir=data)
    assert ds.all_sessions().items.tolist() == Y + X


def test_items_file_and_image_urls_from_the_2018_metadata(tmp_path):
    """The Office items file is missing from the release: build it from the metadata."""
    import gzip
    import json
    import subprocess
    import sys

    from jaxrec.data.readers import amazon_meta
    d = _write_category(tmp_path / "raw", "Office_Products")
    os.remove(d / "Office_Products_items.tsv")
    recs = [{"asin": "Z9", "title": "not in the users file"},
            {"asin": "C4", "title": "Beaker\t250 ml", "imageURLHighRes": ["http://x/c4.jpg"]},
            {"asin": "B2", "title": "Only before\nthe window", "imageURL": ["http://x/b2s.jpg"]},
            {"asin": "B1", "title": "Solder wire", "imageURLHighRes": [], "imageURL": []},
            {"asin": "C4", "title": "a repeated asin keeps the first"},
            {"asin": "C1", "title": "Lab goggles, anti-fog", "imageURLHighRes": ["http://x/c1.jpg"]},
            {"asin": "B3", "title": "Only outside windows"},
            {"asin": "C3", "title": "Nitrile gloves"}, {"asin": "C2", "title": "Pipette tips"}]
    meta = tmp_path / "meta_Office_Products.json.gz"
    with gzip.open(meta, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in recs) + "\n")
    out = amazon_meta.build(str(meta), str(d / "am_Office_Products_users.tsv"),
                            "Office_Products")
    assert out["num_items"] == 7 and out["without_image"] == 4
    assert (d / "Office_Products_items.tsv").read_text().splitlines() == [
        "C4\tBeaker 250 ml", "B2\tOnly before the window", "B1\tSolder wire",
        "C1\tLab goggles, anti-fog", "B3\tOnly outside windows", "C3\tNitrile gloves",
        "C2\tPipette tips"]
    assert (d / "am_image_op.urls.tsv").read_text().splitlines() == [
        "C4\thttp://x/c4.jpg", "B2\thttp://x/b2s.jpg", "C1\thttp://x/c1.jpg"]
    # Same file order as _write_category's items file: the reader numbers items the same.
    log = read("amazon_iisan", str(d), category="Office_Products")
    assert log.raw_item_ids.tolist() == KEPT and log.item.tolist() == Y + X

    with gzip.open(meta, "wt") as f:
        f.write(json.dumps(recs[1]) + "\n{'asin': 'C1', 'title': 'python literal ok'}\n"
                "[1, 2]\n")
    with pytest.raises(DataFormatError, match=r"meta_Office_Products.json.gz:3: expected a "
                                              r"JSON object with an 'asin' field"):
        amazon_meta.build(str(meta), str(d / "am_Office_Products_users.tsv"), "Office_Products")
    with gzip.open(meta, "wt") as f:
        f.write(json.dumps(recs[1]) + "\n")
    r = subprocess.run([sys.executable, "-m", "jaxrec.data.readers.amazon_meta",
                        f"--meta={meta}", f"--users={d / 'am_Office_Products_users.tsv'}",
                        "--category=Office_Products"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "error:" in r.stderr and "6 item(s) of" in r.stderr and "B1, B2, B3, C1, C2" in r.stderr
