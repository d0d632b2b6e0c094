"""MicroLens-100K reader (spec iisan.md §1.13, §2.7): the last-13 / >= 5 window, numeric
re-indexing over the kept windows, titles and covers, errors naming file and line, and the
TFDS preparation round trip through configs/iisan.py.

The fixture (tests/data/raw/microlens) was written by hand:
  user 12: 15 events, items in time order 900 2 10 2 10 30 100 2 30 10 100 2 10 30 100
           (the file lists them newest first); the last 13 drop 900 and the first 2;
  user 3:  5 events 100 30 2 50 10 (items 2 and 50 share a timestamp: file order kept);
  user 7:  4 events 800 2 10 30 -> dropped (fewer than 5).
Kept items in numeric order 2, 10, 30, 50, 100 -> dense 0..4 (a string sort would give
10, 100, 2, 30, 50); users 3, 12 -> sessions 0, 1.
"""

import logging
import os
import shutil

import numpy as np
import pytest

from jaxrec import config_util
from jaxrec.data import prepare as prep
from jaxrec.data import tasks
from jaxrec.data.events import DataFormatError
from jaxrec.data.readers import read

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
RAW = os.path.join(ROOT, "tests", "data", "raw", "microlens")
PAIRS, TITLES = "MicroLens-100k_pairs.csv", "MicroLens-100k_title_en.csv"
T0 = 1_600_000_000_000
USER3 = [4, 2, 0, 3, 1]                                   # 100 30 2 50 10
USER12 = [1, 0, 1, 2, 4, 0, 2, 1, 4, 0, 1, 2, 4]          # its last 13
TITLES_KEPT = ["Cat video", "Cooking, part 2", "Guitar cover # music", 'She said "hi"',
               "Skateboard trick"]
# Two-colour covers (left half, right half) per raw item id: a resize that transposed or
# mixed up items would show.
COLOURS = {2: ((250, 10, 10), (10, 10, 250)), 10: ((10, 250, 10), (250, 250, 10)),
           30: ((10, 10, 10), (250, 250, 250)), 50: ((250, 10, 250), (10, 250, 250)),
           100: ((120, 60, 10), (10, 60, 120))}


def _copy(tmp_path, covers=True):
    d = tmp_path / "microlens"
    shutil.copytree(RAW, d)
    if covers:
        from PIL import Image
        (d / "MicroLens-100k_covers").mkdir()
        for item, (left, right) in COLOURS.items():
            im = Image.new("RGB", (32, 16), left)
            im.paste(Image.new("RGB", (16, 16), right), (16, 0))
            im.save(d / "MicroLens-100k_covers" / f"{item}.jpg", quality=95)
    return d


def _assert_fixture_sequences(log):
    assert log.name == "microlens"
    assert log.raw_item_ids.tolist() == [2, 10, 30, 50, 100]
    assert log.raw_session_ids.tolist() == [3, 12]
    assert log.session.tolist() == [0] * 5 + [1] * 13
    assert log.item.tolist() == USER3 + USER12
    assert log.items.titles == TITLES_KEPT


def test_csv_keeps_last_13_of_at_least_5_and_reindexes_numerically():
    log = read("microlens", RAW, image_dir="")
    _assert_fixture_sequences(log)
    np.testing.assert_array_equal(log.timestamp[:5] - T0, [500, 510, 520, 520, 530])
    # User 12's first kept event is its third (t = 1000 + 2 * 10).
    np.testing.assert_array_equal(log.timestamp[5:] - T0, 1020 + 10 * np.arange(13))
    assert log.items.extra == {}


def test_tsv_gives_the_same_sequences_with_positions():
    log = read("microlens", RAW, pairs="tsv", image_dir="")
    _assert_fixture_sequences(log)
    np.testing.assert_array_equal(log.timestamp, list(range(5)) + list(range(2, 15)))


def test_window_options():
    log = read("microlens", RAW, image_dir="", keep_last=0, min_len=1)
    assert log.raw_item_ids.tolist() == [2, 10, 30, 50, 100, 800, 900]
    assert log.raw_session_ids.tolist() == [3, 7, 12] and log.num_events == 24
    # Last 2 each: user 3 -> 50 10, user 12 -> 30 100; item 2 is in no window: no id.
    log = read("microlens", RAW, image_dir="", keep_last=2)
    assert log.raw_item_ids.tolist() == [10, 30, 50, 100]
    assert log.item.tolist() == [2, 0, 1, 3]
    log = read("microlens", RAW, image_dir="", min_len=6)
    assert log.raw_session_ids.tolist() == [12]
    assert log.raw_item_ids.tolist() == [2, 10, 30, 100]
    with pytest.raises(DataFormatError, match="no user has at least min_len=16"):
        read("microlens", RAW, image_dir="", min_len=16)


def test_covers_are_resized_uint8_and_missing_ones_named(tmp_path, caplog):
    d = _copy(tmp_path)
    log = read("microlens", str(d), image_size=8)          # image_dir=auto finds the covers
    images = log.items.extra["images"]
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8
    for dense, item in enumerate([2, 10, 30, 50, 100]):
        left, right = COLOURS[item]
        # Away from the edge (JPEG ringing, bilinear blending): within 12 of the colour.
        assert np.abs(images[dense, :, :3].astype(int) - left).max() <= 12, item
        assert np.abs(images[dense, :, 5:].astype(int) - right).max() <= 12, item
    assert log.items.extra["has_image"].tolist() == [1, 1, 1, 1, 1]

    os.remove(d / "MicroLens-100k_covers" / "50.jpg")
    with pytest.raises(DataFormatError, match=r"MicroLens-100k_covers: 1 of 5 item images "
                                              r"missing, e.g. 50.jpg"):
        read("microlens", str(d), image_size=8)
    with caplog.at_level(logging.WARNING):
        log = read("microlens", str(d), image_size=8, allow_missing_images=True)
    assert "1 of 5 item images missing" in caplog.text
    assert log.items.extra["has_image"].tolist() == [1, 1, 1, 0, 1]
    assert log.items.extra["images"][3].max() == 0 and log.items.extra["images"][4].max() > 0

    (d / "MicroLens-100k_covers" / "10.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataFormatError, match=r"10.jpg: unreadable image"):
        read("microlens", str(d), image_size=8, allow_missing_images=True)
    with pytest.raises(DataFormatError, match=r"nowhere: image folder does not exist"):
        read("microlens", str(d), image_dir=str(tmp_path / "nowhere"))


def _edit_line(path, lineno, new):
    lines = path.read_text().split("\n")
    lines[lineno - 1] = new
    path.write_text("\n".join(lines))


def test_malformed_rows_name_file_and_line(tmp_path):
    d = _copy(tmp_path, covers=False)
    pairs, titles = d / PAIRS, d / TITLES
    good_pairs, good_titles = pairs.read_text(), titles.read_text()

    def raises(match, **kw):
        with pytest.raises(DataFormatError, match=match):
            read("microlens", str(d), image_dir="", **kw)

    _edit_line(pairs, 5, "12,30")
    raises(r"pairs.csv:5: expected 3 ','-separated fields .* got 2 field\(s\)")
    pairs.write_text(good_pairs)
    _edit_line(pairs, 7, "3,abc,1600000000510")
    raises(r"pairs.csv:7: field 2 \(item\): expected an integer item id, got 'abc'")
    pairs.write_text(good_pairs)
    _edit_line(pairs, 1, "timestamp,user,item")
    raises(r"pairs.csv:1: expected a header 'user,item,timestamp'")
    # A headerless file is read the same.
    pairs.write_text(good_pairs.split("\n", 1)[1])
    _assert_fixture_sequences(read("microlens", str(d), image_dir=""))
    pairs.write_text(good_pairs)

    _edit_line(titles, 2, "10,Cooking, part 2")
    raises(r"title_en.csv:2: expected 2 comma-separated fields \(item, title; quote titles "
           r"holding commas\), got 3")
    _edit_line(titles, 2, "ten,Cooking")
    raises(r"title_en.csv:2: field 1 \(item\): expected an integer item id, got 'ten'")
    titles.write_text(good_titles + "30,again\n")
    raises(r"title_en.csv:8: item 30 listed twice")
    # Item 50 has no title: the message names the titles file and the pairs line using it
    # (user 3's item 50 is the 11th data row of the CSV: line 12).
    titles.write_text(good_titles.replace('50,"She said ""hi"""\n', ""))
    raises(r"title_en.csv: 1 item\(s\) have no title, e.g. item 50 \(used at .*pairs.csv:12\)")
    log = read("microlens", str(d), image_dir="", allow_missing_titles=True)
    assert log.items.titles[3] == "" and log.items.titles[4] == "Skateboard trick"
    titles.write_text("item,title\n" + good_titles)          # a header line is skipped
    assert read("microlens", str(d), image_dir="").items.titles == TITLES_KEPT
    os.remove(titles)
    raises(r"missing file 'MicroLens-100k_title_en.csv'")
    titles.write_text(good_titles)

    tsv = d / "MicroLens-100k_pairs.tsv"
    _edit_line(tsv, 2, "3\t100 30 x 50 10")
    raises(r"pairs.tsv:2: expected integer user and item ids, got 'x'", pairs="tsv")
    _edit_line(tsv, 2, "3 100 30 2 50 10")
    raises(r"pairs.tsv:2: expected 'user<TAB>item item ...'", pairs="tsv")
    with pytest.raises(DataFormatError, match="raw directory does not exist"):
        read("microlens", str(tmp_path / "nowhere"))


@pytest.fixture(scope="module")
def covers_dir(tmp_path_factory):
    return _copy(tmp_path_factory.mktemp("ml"))


def test_prepare_round_trip_keeps_titles_and_pixels(covers_dir, tmp_path):
    ref = read("microlens", str(covers_dir), image_size=8)
    ds = prep.load("microlens", raw_dir=str(covers_dir), data_dir=str(tmp_path), image_size=8)
    sdir, idir = prep.dataset_dirs("microlens", str(tmp_path), prep._normalise_options(
        "microlens", {"image_size": 8}, str(covers_dir)))
    assert any(f.endswith("array_record-00000-of-00001") for f in os.listdir(idir))
    assert ds.num_items == 5 and ds.raw_item_ids.tolist() == ["2", "10", "30", "50", "100"]
    assert ds.items.titles == TITLES_KEPT
    np.testing.assert_array_equal(ds.items.extra["images"], ref.items.extra["images"])
    assert ds.items.extra["images"].dtype == np.uint8
    assert ds.items.extra["has_image"].tolist() == [1, 1, 1, 1, 1]
    users = ds.all_sessions()
    assert users.raw_session_ids.tolist() == ["3", "12"]
    assert users.items.tolist() == USER3 + USER12


def test_interrupted_preparation_is_redone(covers_dir, tmp_path, monkeypatch):
    real, calls = prep._session_example, {"n": 0}

    def dying(log, bounds, s):
        calls["n"] += 1
        if calls["n"] == 2:                 # after the items, during the sessions
            raise KeyboardInterrupt("simulated kill")
        return real(log, bounds, s)

    monkeypatch.setattr(prep, "_session_example", dying)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare("microlens", raw_dir=str(covers_dir), data_dir=str(tmp_path),
                     image_size=8)
    assert not prep.is_prepared("microlens", data_dir=str(tmp_path), image_size=8,
                                raw_source=os.path.realpath(covers_dir))
    sdir, idir = prep.dataset_dirs("microlens", str(tmp_path), prep._normalise_options(
        "microlens", {"image_size": 8}, str(covers_dir)))
    assert os.path.exists(os.path.join(idir, "dataset_info.json"))     # items complete
    assert not os.path.exists(sdir)                                     # sessions not
    leftovers = os.listdir(os.path.dirname(sdir))
    assert all(f.startswith("incomplete") for f in leftovers), leftovers
    monkeypatch.setattr(prep, "_session_example", real)
    ds = prep.load("microlens", raw_dir=str(covers_dir), data_dir=str(tmp_path), image_size=8)
    assert ds.all_sessions().items.tolist() == USER3 + USER12


def test_iisan_config_selects_microlens_and_the_split_is_leave_one_out(covers_dir, tmp_path):
    c = config_util.load_config_file(os.path.join(ROOT, "configs", "iisan.py"),
                                     f"dataset=microlens,raw_dir={covers_dir}")
    assert c.dataset.name == "microlens" and c.dataset.options.image_size == 16
    c.dataset.data_dir = str(tmp_path)
    task = tasks.build_task(c)
    # The copy training prepared is the one `jaxrec.data.stats --dataset=microlens
    # --raw_dir=... --option=image_size=16` names (docs/datasets.md relies on it).
    assert prep.is_prepared("microlens", data_dir=str(tmp_path), image_size=16,
                            raw_source=os.path.realpath(covers_dir))
    assert task.num_items == 5 and task.items.extra["images"].shape == (5, 16, 16, 3)
    assert task.items.titles == TITLES_KEPT
    # Leave-one-out (spec §1.13): test target seq[-1], validation target seq[-2]; inputs are
    # ids + 1 left-padded with 0: user 12's test input is seq[-11:-1].
    assert task.test.arrays["target"].tolist() == [USER3[-1], USER12[-1]]
    assert task.validation.arrays["target"].tolist() == [USER3[-2], USER12[-2]]
    np.testing.assert_array_equal(task.test.arrays["state"][1],
                                  np.asarray(USER12[-11:-1]) + 1)
    np.testing.assert_array_equal(task.test.arrays["state"][0],
                                  [0] * 6 + [i + 1 for i in USER3[:-1]])
    # amazon_* names pick the amazon_iisan reader's category.
    a = config_util.load_config_file(os.path.join(ROOT, "configs", "iisan.py"),
                                     "dataset=amazon_office,raw_dir=/x,towers=base")
    assert dict(a.dataset.options) == {"category": "Office_Products", "image_size": 224}
    assert a.dataset.name == "amazon_iisan" and a.dataset.raw_dir == "/x"
    a = config_util.load_config_file(os.path.join(ROOT, "configs", "iisan.py"),
                                     "dataset=amazon_office,raw_dir=/x,image_dir=/i,"
                                     "allow_missing_images")
    assert dict(a.dataset.options) == {"category": "Office_Products", "image_size": 16,
                                       "image_dir": "/i", "allow_missing_images": 1}
