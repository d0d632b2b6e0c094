"""Tests of jaxrec.data.readers on hand-made raw fixtures (tests/data/raw/<format>/).

Every expected value below is worked out by hand from the fixture files; the comments say
which filter rule each fixture row exercises. The only real data is MovieLens-100K in
RecBole's atomic format, read from the installed ``recbole`` wheel (never copied here).
"""

import csv
import importlib.resources
import logging
import os
import shutil

import numpy as np
import pytest

from jaxrec.data import readers
from jaxrec.data.events import DataFormatError

RAW = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "raw")
DAY0_MS = 1_396_828_800_000  # 2014-04-07T00:00:00Z in ms (1396828800 s since the epoch)


def _assert_log(log, *, session, item, timestamp, is_buy, raw_sessions, raw_items,
                rating=None):
    np.testing.assert_array_equal(log.session, session)
    np.testing.assert_array_equal(log.item, item)
    np.testing.assert_array_equal(log.timestamp, timestamp)
    np.testing.assert_array_equal(log.is_buy, is_buy)
    np.testing.assert_array_equal(log.raw_session_ids, raw_sessions)
    np.testing.assert_array_equal(log.raw_item_ids, raw_items)
    if rating is None:
        assert log.rating is None
    else:
        np.testing.assert_allclose(log.rating, rating)
    assert log.session.dtype == np.int32 and log.item.dtype == np.int32
    assert log.is_buy.dtype == np.int8
    log.validate()


def _copy(fmt, tmp_path):
    """A writable copy of a fixture directory."""
    dst = tmp_path / fmt
    shutil.copytree(os.path.join(RAW, fmt), dst)
    return dst


def _edit_line(path, lineno, new):
    """Replaces 1-based line ``lineno`` of ``path`` with ``new``."""
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = new.encode("latin-1")
    path.write_bytes(b"\n".join(lines))


def _raises(fn, *fragments, line=None):
    with pytest.raises(DataFormatError) as info:
        fn()
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    assert info.value.line == line, msg
    return info.value


# ----------------------------------------------------------------------------- registry
def test_registry_names_and_expected_files():
    names = {"retailrocket", "yoochoose", "movielens_100k", "movielens_1m", "recbole",
             "amazon_iisan", "microlens"}
    assert set(readers.READERS) == names
    assert set(readers.EXPECTED_FILES) == names
    assert readers.READERS["yoochoose"] is readers.read_yoochoose
    # Interpolated into messages by the preparation CLI, so it must print as file names.
    assert f"{readers.EXPECTED_FILES['yoochoose']}" == "yoochoose-clicks.dat, yoochoose-buys.dat"
    assert tuple(readers.EXPECTED_FILES["movielens_1m"]) == ("ratings.dat", "movies.dat")
    with pytest.raises(KeyError, match="unknown raw format 'netflix'"):
        readers.read("netflix", RAW)


# ----------------------------------------------------------------------------- RetailRocket
@pytest.fixture(scope="module")
def rr_log():
    return readers.read_retailrocket(os.path.join(RAW, "retailrocket"))


def test_retailrocket_filters_encoding_and_order(rr_log):
    # Visitor 100: its transaction row (line 9) is dropped by the null-transactionid rule,
    #   leaving 3 events. Visitor 8: 3 rows, one a transaction -> 2 events -> dropped.
    # Visitor 55: 2 events -> dropped. Item 40: 3 raw events, one in visitor 55, so 2 after
    #   the session filter -> dropped; item 99 (1 event) too. That leaves visitor 300 with
    #   2 events (10, 20), kept because the filters are a single pass.
    # Item 30: 4 events before the session filter (2 in visitor 8), 3 after -> kept.
    # Visitor 7: the view of 30 and the view of 10 at t=2000 tie; the file has 30 first.
    # Encoding by sorted raw id: items 10, 20, 30 -> 0, 1, 2; visitors 7, 100, 300 -> 0, 1, 2.
    _assert_log(
        rr_log,
        session=[0, 0, 0, 0, 0, 1, 1, 1, 2, 2],
        item=[0, 2, 0, 2, 2, 0, 1, 1, 0, 1],
        timestamp=[1990, 2000, 2000, 2001, 2002, 1000, 1005, 1010, 3000, 3003],
        is_buy=[0, 0, 0, 1, 0, 0, 0, 1, 0, 0],
        raw_sessions=[7, 100, 300], raw_items=[10, 20, 30])
    assert rr_log.timestamp.dtype == np.int64
    assert rr_log.stats() == {"dataset": "retailrocket", "sessions": 3, "items": 3,
                              "interactions": 10, "clicks": 8, "purchases": 2}


def test_retailrocket_malformed(tmp_path):
    d = _copy("retailrocket", tmp_path)
    f = d / "events.csv"
    good = f.read_bytes()

    def case(lineno, new, *fragments):
        f.write_bytes(good)
        _edit_line(f, lineno, new)
        _raises(lambda: readers.read_retailrocket(d), "events.csv", *fragments, line=lineno)

    # The last line cut short (no trailing newline either).
    f.write_bytes(good.rstrip(b"\n").rsplit(b"\n", 1)[0] + b"\n2002,7,vi")
    _raises(lambda: readers.read_retailrocket(d), "events.csv", "got 3 field(s)",
            "looks truncated", line=20)
    case(5, "2000,7,view,10,,9", "expected 5 ','-separated fields", "got 6 field(s)")
    case(3, "2000,abc,view,30,", "field 2 (visitorid)", "integer visitor id", "'abc'")
    case(4, "5x0,55,view,10,", "field 1 (timestamp)", "'5x0'")
    case(12, "3000,300,view,1o,", "field 4 (itemid)", "'1o'")
    case(6, "1005,100,click,20,", "field 3 (event)",
         "one of 'addtocart', 'transaction', 'view'", "'click'")
    case(9, "1020,100,transaction,20,", "'transaction' must carry a transactionid")
    case(1, "timestamp,visitorid,event,itemid", "expected the header line")

    # A blank line does not shift the reported (physical) line number.
    f.write_bytes(good.replace(b"1005,100,view,20,\n", b"\n1005,100,view,2O,\n"))
    _raises(lambda: readers.read_retailrocket(d), "field 4 (itemid)", line=7)

    f.write_bytes(b"")
    _raises(lambda: readers.read_retailrocket(d), "file is empty",
            "timestamp,visitorid,event,itemid,transactionid", line=1)
    f.write_bytes(b"timestamp,visitorid,event,itemid,transactionid\n")
    _raises(lambda: readers.read_retailrocket(d), "no data rows", line=2)

    f.unlink()
    err = _raises(lambda: readers.read_retailrocket(d), "missing file 'events.csv'", str(d))
    assert err.path == str(d / "events.csv")


@pytest.mark.parametrize("chunk", [16, 37, 1 << 20])
def test_error_line_is_exact_across_locate_chunks(tmp_path, monkeypatch, chunk):
    """The bad line is found by re-parsing chunks; line numbers must not depend on them."""
    from jaxrec.data.readers import _tabular
    monkeypatch.setattr(_tabular, "LOCATE_CHUNK_BYTES", chunk)
    d = _copy("retailrocket", tmp_path)
    f = d / "events.csv"
    good = f.read_bytes()
    # Blank lines 3 and 4 (with a CR) are skipped but counted.
    lines = good.split(b"\n")
    lines[2:2] = [b"", b"\r"]
    f.write_bytes(b"\n".join(lines))
    assert readers.read_retailrocket(d).num_events == 10
    for lineno, new, frag in [(16, b"3003,300,view,2x,", "field 4 (itemid)"),
                              (20, b"4002,8,transaction,30,", "must carry a transactionid"),
                              (22, b"2002,7,view", "got 3 field(s)")]:
        bad = list(lines)
        bad[lineno - 1] = new
        f.write_bytes(b"\n".join(bad))
        _raises(lambda: readers.read_retailrocket(d), frag, line=lineno)


def test_retailrocket_everything_filtered(tmp_path):
    (tmp_path / "events.csv").write_text(
        "timestamp,visitorid,event,itemid,transactionid\n1,1,view,1,\n2,1,view,2,\n")
    _raises(lambda: readers.read_retailrocket(tmp_path), "no events left", line=None)


# ----------------------------------------------------------------------------- YooChoose
@pytest.fixture(scope="module")
def yc_all():
    return readers.read_yoochoose(os.path.join(RAW, "yoochoose"), num_sessions=None)


def test_yoochoose_filters_encoding_and_order(yc_all):
    # Session 12 has exactly 2 clicks -> not eligible, and its buy goes with it; session 99
    # has a buy but no clicks. Session 30's buy of item 1500, never clicked in the sample,
    # is dropped. Items are encoded on the sampled clicks only (1100/1200 of session 12 get
    # no id): 600, 700, 800, 900, 1000 -> 0..4; sessions 5, 11, 30 -> 0, 1, 2.
    # Session 5: the clicks of 700 and 800 tie at 09:00:00.100 and keep file order; the
    #   first click is the day before (23:59:59.999). '09:05:00Z' has no fraction.
    # Session 11: a click and a buy of 900 tie at 10:01:00.000: the click stays first.
    _assert_log(
        yc_all,
        session=[0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2],
        item=[0, 1, 2, 1, 3, 2, 3, 3, 2, 0, 0, 4],
        timestamp=[DAY0_MS - 1,
                   DAY0_MS + 32_400_100, DAY0_MS + 32_400_100, DAY0_MS + 32_700_000,
                   DAY0_MS + 36_000_000, DAY0_MS + 36_005_500, DAY0_MS + 36_060_000,
                   DAY0_MS + 36_060_000, DAY0_MS + 36_120_000,
                   DAY0_MS + 86_400_000 + 28_800_000, DAY0_MS + 86_400_000 + 28_801_000,
                   DAY0_MS + 86_400_000 + 28_802_000],
        is_buy=[0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0],
        raw_sessions=[5, 11, 30], raw_items=[600, 700, 800, 900, 1000])
    assert yc_all.timestamp.dtype == np.int64
    assert yc_all.stats() == {"dataset": "yoochoose", "sessions": 3, "items": 5,
                              "interactions": 12, "clicks": 10, "purchases": 2}


def test_yoochoose_default_sample_larger_than_data_warns(caplog, yc_all):
    with caplog.at_level(logging.WARNING, logger="jaxrec.data.readers.yoochoose"):
        log = readers.read_yoochoose(os.path.join(RAW, "yoochoose"))  # 200,000 requested
    assert "asked for 200000 sessions but only 3 have more than 2 clicks" in caplog.text
    assert "dropping 1 buy(s)" in caplog.text and "session 30 item 1500" in caplog.text
    np.testing.assert_array_equal(log.item, yc_all.item)


def test_yoochoose_unknown_buy_item_can_raise():
    _raises(lambda: readers.read_yoochoose(os.path.join(RAW, "yoochoose"),
                                           unknown_buy_items="raise"),
            "yoochoose-buys.dat", "1 buy(s)", "session 30 item 1500", line=None)
    with pytest.raises(ValueError, match="unknown_buy_items"):
        readers.read_yoochoose(os.path.join(RAW, "yoochoose"), unknown_buy_items="keep")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_yoochoose_rejects_bad_num_sessions(bad):
    with pytest.raises(ValueError, match="num_sessions"):
        readers.read_yoochoose(os.path.join(RAW, "yoochoose"), num_sessions=bad)


@pytest.fixture(scope="module")
def yc_big(tmp_path_factory):
    """40 eligible sessions (ids 1000..1039, 3 clicks each, item 5000+s unique to session s)
    plus 5 two-click sessions (2000..2004); one buy per session of its unique item."""
    d = tmp_path_factory.mktemp("yc_big")
    clicks, buys = [], []
    for s in range(1000, 1040):
        for k, it in enumerate((5000 + s, 7 + s % 4, 5000 + s)):
            clicks.append(f"{s},2014-04-07T10:00:0{k}.000Z,{it},0")
        buys.append(f"{s},2014-04-07T10:00:09.000Z,{5000 + s},10,1")
    for s in range(2000, 2005):
        clicks += [f"{s},2014-04-07T10:00:00.000Z,{s},0", f"{s},2014-04-07T10:00:01.000Z,7,0"]
        buys.append(f"{s},2014-04-07T10:00:02.000Z,7,10,1")
    (d / "yoochoose-clicks.dat").write_text("\n".join(clicks) + "\n")
    (d / "yoochoose-buys.dat").write_text("\n".join(buys) + "\n")
    return d


def test_yoochoose_sampling(yc_big, caplog):
    a = readers.read_yoochoose(yc_big, num_sessions=10, seed=0)
    b = readers.read_yoochoose(yc_big, num_sessions=10, seed=0)
    c = readers.read_yoochoose(yc_big, num_sessions=10, seed=1)
    # Same seed, same sample and same log.
    np.testing.assert_array_equal(a.raw_session_ids, b.raw_session_ids)
    np.testing.assert_array_equal(a.item, b.item)
    # A different seed draws a different set (C(40,10) possible sets).
    assert set(a.raw_session_ids.tolist()) != set(c.raw_session_ids.tolist())
    for log in (a, c):
        sessions = log.raw_session_ids.tolist()
        assert log.num_sessions == 10 and len(set(sessions)) == 10
        assert all(1000 <= s < 1040 for s in sessions)  # no two-click session
        # Encoder fitted on the sampled clicks: each sampled session's own item + 7..10
        # (the shared items of the sampled sessions), nothing from unsampled sessions.
        expected_items = sorted({5000 + s for s in sessions} | {7 + s % 4 for s in sessions})
        assert log.raw_item_ids.tolist() == expected_items
        # 3 clicks + 1 buy per session; the buy (item 5000+s) comes last.
        assert log.stats()["clicks"] == 30 and log.stats()["purchases"] == 10
        np.testing.assert_array_equal(log.session_bounds(), np.arange(0, 41, 4))
        bought = log.item[log.is_buy == 1]
        np.testing.assert_array_equal(log.raw_item_ids[bought], [5000 + s for s in sessions])
    # Asking for all 40 needs no warning and keeps every eligible session.
    with caplog.at_level(logging.WARNING, logger="jaxrec.data.readers.yoochoose"):
        full = readers.read_yoochoose(yc_big, num_sessions=40, seed=3)
    assert caplog.text == ""
    assert full.raw_session_ids.tolist() == list(range(1000, 1040))


def test_sample_sessions_properties():
    eligible = np.arange(100, 200, 2)
    s = readers.sample_sessions(eligible, 7, seed=5)
    assert len(s) == 7 and len(np.unique(s)) == 7
    assert np.all(np.diff(s) > 0) and np.isin(s, eligible).all()
    np.testing.assert_array_equal(readers.sample_sessions(eligible, None, 0), eligible)
    np.testing.assert_array_equal(readers.sample_sessions(eligible, 500, 0), eligible)


def test_yoochoose_malformed(tmp_path):
    d = _copy("yoochoose", tmp_path)
    clicks, buys = d / "yoochoose-clicks.dat", d / "yoochoose-buys.dat"
    good_c, good_b = clicks.read_bytes(), buys.read_bytes()

    def case(f, good, lineno, new, *fragments):
        clicks.write_bytes(good_c)
        buys.write_bytes(good_b)
        f.write_bytes(good)
        _edit_line(f, lineno, new)
        _raises(lambda: readers.read_yoochoose(d), f.name, *fragments, line=lineno)

    clicks.write_bytes(good_c.rstrip(b"\n") .rsplit(b"\n", 1)[0] + b"\n30,2014-04-08T08:0")
    _raises(lambda: readers.read_yoochoose(d), "yoochoose-clicks.dat",
            "expected 4 ','-separated fields", "got 2 field(s)", "truncated", line=12)
    case(clicks, good_c, 3, "12,2014-04-07 11:00,1100,3", "field 2 (timestamp)",
         "ISO-8601", "'2014-04-07 11:00'")
    case(clicks, good_c, 2, "11,2014-04-07T10:00:05.500Z,8OO,0", "field 3 (item_id)", "'8OO'")
    case(clicks, good_c, 6, "5,2014-04-07T09:00:00.100Z,800,X", "field 4 (category)",
         "'S' or an integer category", "'X'")
    case(clicks, good_c, 7, "x5,2014-04-06T23:59:59.999Z,600,2053520130",
         "field 1 (session_id)", "'x5'")
    case(buys, good_b, 4, "99,2014-04-09T10:00:00.000Z,900,700", "expected 5 ','-separated",
         "got 4 field(s)")
    case(buys, good_b, 1, "11,2014-04-07T10:01:00.000Z,900,12,00,1", "got 6 field(s)")
    case(buys, good_b, 2, "12,2014-04-07T11:05:00.000Z,1100,five,2", "field 4 (price)",
         "'five'")

    clicks.write_bytes(good_c)
    buys.write_bytes(b"")
    _raises(lambda: readers.read_yoochoose(d), "yoochoose-buys.dat", "file is empty", line=1)
    buys.unlink()
    _raises(lambda: readers.read_yoochoose(d), "missing file 'yoochoose-buys.dat'", str(d))
    _raises(lambda: readers.read_yoochoose(tmp_path / "nowhere"), "raw directory does not "
            "exist", "yoochoose-clicks.dat")


# ----------------------------------------------------------------------------- MovieLens
def test_movielens_100k(tmp_path):
    log = readers.read_movielens_100k(os.path.join(RAW, "movielens_100k"))
    # Users 1, 2, 3, 10 -> 0..3 (numeric order: 10 is last). Items 1..5 -> 0..4; movie 6
    # is in u.item but unrated, so it gets no id. User 1 rated items 1 and 3 at the same
    # second; the file lists 1 first.
    _assert_log(
        log,
        session=[0, 0, 0, 1, 1, 2, 2, 3],
        item=[1, 0, 2, 3, 4, 0, 1, 4],
        timestamp=[879999999, 880000000, 880000000, 880000400, 880000500, 880000050,
                   880000100, 880000000],
        is_buy=[0] * 8, raw_sessions=[1, 2, 3, 10], raw_items=[1, 2, 3, 4, 5],
        rating=[4, 5, 3, 5, 1, 2, 4, 3])
    assert log.items.titles == ["Le Caf\u00e9 Imaginaire (1994)", "Rocket Garden (1997)",
                                "Quiet Harbour (1995)", "The Paper Lantern (1996)",
                                "Unknown Signal (1998)"]
    assert log.items.genres == [["Comedy", "Drama", "Romance"], ["Action", "Sci-Fi"],
                                ["Drama"], ["Animation", "Children's"], ["unknown"]]

    d = _copy("movielens_100k", tmp_path)
    data, item = d / "u.data", d / "u.item"
    good_d, good_i = data.read_bytes(), item.read_bytes()
    _edit_line(data, 4, "2\t5\tone\t880000500")
    _raises(lambda: readers.read_movielens_100k(d), "u.data", "field 3 (rating)", "'one'",
            line=4)
    data.write_bytes(good_d)
    _edit_line(item, 2, "1|Le Cafe Imaginaire (1994)|01-Jan-1994||http://x|0|0|0")
    _raises(lambda: readers.read_movielens_100k(d), "u.item", "expected 24 '|'-separated",
            "got 8 field(s)", line=2)
    item.write_bytes(good_i)
    # Line 4 is movie 2 (Action, Sci-Fi); field 21 is its Sci-Fi flag (5 fields + 15).
    fields = good_i.split(b"\n")[3].split(b"|")
    assert fields[20] == b"1"
    _edit_line(item, 4, b"|".join(fields[:20] + [b"2"] + fields[21:]).decode("latin-1"))
    _raises(lambda: readers.read_movielens_100k(d), "u.item", "field 21 (genre_Sci-Fi)",
            "one of '0', '1'", "'2'", line=4)
    # A rated movie without a u.item line.
    item.write_bytes(b"\n".join(l for l in good_i.split(b"\n") if not l.startswith(b"4|")))
    _raises(lambda: readers.read_movielens_100k(d), "u.item", "1 rated movie(s)",
            "movie id 4", line=None)
    item.write_bytes(good_i + good_i.split(b"\n")[0] + b"\n")
    _raises(lambda: readers.read_movielens_100k(d), "movie id 3 appears on 2 lines")
    item.unlink()
    _raises(lambda: readers.read_movielens_100k(d), "missing file 'u.item'", str(d))


def test_movielens_1m(tmp_path):
    log = readers.read_movielens_1m(os.path.join(RAW, "movielens_1m"))
    # Users 1, 2 -> 0, 1; movies 10, 20, 30 -> 0, 1, 2 (40 is unrated). User 1 rated 10 and
    # 30 in the same second (file order 10 first).
    _assert_log(
        log, session=[0, 0, 0, 1, 1], item=[1, 0, 2, 1, 0],
        timestamp=[978300100, 978300760, 978300760, 978300000, 978300050],
        is_buy=[0] * 5, raw_sessions=[1, 2], raw_items=[10, 20, 30],
        rating=[4, 5, 3, 4, 1])
    # latin-1 title; a single ':' inside a title is not a separator.
    assert log.items.titles == ["Se\u00f1or Invented (1999)",
                                "Star Path: The Beginning (2000)",
                                "Documentary of Nothing (1998)"]
    assert log.items.genres == [["Comedy", "Drama"], ["Action", "Sci-Fi", "Thriller"],
                                ["Documentary"]]

    d = _copy("movielens_1m", tmp_path)
    ratings = d / "ratings.dat"
    good = ratings.read_bytes()
    _edit_line(ratings, 3, "1::30:3::978300760")
    _raises(lambda: readers.read_movielens_1m(d), "ratings.dat", "expected 4 '::'-separated",
            "got 3 field(s)", line=3)
    ratings.write_bytes(good)
    _edit_line(ratings, 5, "2::10::1::97830005O")
    _raises(lambda: readers.read_movielens_1m(d), "ratings.dat", "field 4 (timestamp)",
            "'97830005O'", line=5)
    ratings.write_bytes(b"\n\n")
    _raises(lambda: readers.read_movielens_1m(d), "ratings.dat", "no data rows", line=1)
    (d / "movies.dat").unlink()
    _raises(lambda: readers.read_movielens_1m(d), "missing file 'movies.dat'", str(d))


@pytest.mark.parametrize("fmt,fname,line,fields", [
    ("movielens_100k", "u.data", 4, ["2", "5", "{r}", "880000500"]),
    ("movielens_1m", "ratings.dat", 2, ["1", "10", "{r}", "978300760"]),
])
def test_movielens_rating_outside_scale(tmp_path, fmt, fname, line, fields):
    """Ratings are whole stars 1-5 (both READMEs); anything else names file, line, field."""
    read = readers.READERS[fmt]
    d = _copy(fmt, tmp_path)
    f = d / fname
    sep = "\t" if fname == "u.data" else "::"
    good = f.read_bytes()
    for bad in ("6", "0", "-1", "3.5", "10"):
        f.write_bytes(good)
        _edit_line(f, line, sep.join(fields).format(r=bad))
        err = _raises(lambda: read(d), fname, "field 3 (rating)",
                      "expected an integer rating from 1 to 5", f"got {bad!r}", line=line)
        assert err.path == str(f)
    # The scale is a reader option: (low, high), 'low,high' (as --option passes it) or None.
    f.write_bytes(good)
    _edit_line(f, line, sep.join(fields).format(r="7"))
    assert read(d, rating_scale=(1, 10)).rating.max() == 7
    assert read(d, rating_scale="0,10").rating.max() == 7
    assert read(d, rating_scale=None).rating.max() == 7
    _raises(lambda: read(d, rating_scale=(0, 6)), "expected an integer rating from 0 to 6",
            "got '7'", line=line)
    for bad_scale in ((5, 1), "1-5", (1,), ("a", 5), (0, float("inf"))):
        with pytest.raises(ValueError, match="option rating_scale=.*expected two finite"):
            read(d, rating_scale=bad_scale)


def test_tabular_bounds_fast_path_and_scan_agree(tmp_path):
    """A bounded float field: good files pass the vectorised check, and the line scan
    blames the same (first) out-of-range line that the vectorised check rejects."""
    from jaxrec.data.readers import _tabular as tab
    spec = tab.TableSpec(fields=(tab.Field("id", tab.INT),
                                 tab.Field("x", tab.FLOAT, bounds=(0.5, 5))), delimiter=",")
    f = tmp_path / "t.csv"
    f.write_text("1,0.5\n2, 5 \n3,2.25\n")
    np.testing.assert_allclose(tab.to_numpy(tab.read_table(str(f), spec), "x"),
                               [0.5, 5, 2.25])
    for bad_line, value in ((2, "nan"), (3, "5.01"), (1, "0.49"), (2, "-inf")):
        rows = ["1,0.5", "2,5", "3,2.25"]
        rows[bad_line - 1] = f"{bad_line},{value}"
        f.write_text("\n".join(rows) + "\n")
        _raises(lambda: tab.read_table(str(f), spec), "field 2 (x)",
                "expected a number from 0.5 to 5", repr(value), line=bad_line)
    with pytest.raises(ValueError, match="bounds need kind int or float"):
        tab.Field("s", tab.STR, bounds=(0, 1))


# ----------------------------------------------------------------------------- RecBole
def test_recbole_toy(caplog):
    with caplog.at_level(logging.WARNING, logger="jaxrec.data.readers.recbole"):
        log = readers.read_recbole(os.path.join(RAW, "recbole", "toy"))  # name found: 'toy'
    # Tokens stay strings: items sort as text, i1 < i10 < i2 < i3. alice -> 0, bob -> 1.
    # alice rated i10 and i1 at t=100 (file order i10 first). i3 has no .item row.
    _assert_log(
        log, session=[0, 0, 0, 1, 1], item=[3, 1, 0, 0, 2],
        timestamp=[50, 100, 100, 150, 200], is_buy=[0] * 5,
        raw_sessions=["alice", "bob"], raw_items=["i1", "i10", "i2", "i3"],
        rating=[1, 3, 5, 2, 4.5])
    assert log.name == "toy" and log.timestamp.dtype == np.int64
    assert log.items.titles == ["Moon Over Tokens", "Ten", "Two", ""]
    assert log.items.genres == [["Drama", "Comedy"], ["Sci-Fi"], ["Action"], []]
    assert "1 of 4 items with interactions have no row" in caplog.text


def test_recbole_without_timestamp_or_rating(tmp_path):
    (tmp_path / "x.inter").write_text("item_id:token\tuser_id:token\n"
                                      "b\tu2\na\tu1\nc\tu2\na\tu2\n")
    log = readers.read_recbole(tmp_path, name="x")
    # File order stands in for time: row indices 0..3; u1 -> 0, u2 -> 1.
    _assert_log(log, session=[0, 1, 1, 1], item=[0, 1, 2, 0], timestamp=[1, 0, 2, 3],
                is_buy=[0] * 4, raw_sessions=["u1", "u2"], raw_items=["a", "b", "c"])
    assert log.items.titles is None and log.items.genres is None
    (tmp_path / "y.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                      "u\ta\t2.5\nu\tb\t1.25\n")
    log = readers.read_recbole(tmp_path, name="y")
    assert log.timestamp.dtype == np.float64
    np.testing.assert_array_equal(log.timestamp, [1.25, 2.5])
    np.testing.assert_array_equal(log.item, [1, 0])


def test_recbole_malformed(tmp_path):
    d = _copy("recbole/toy", tmp_path)
    inter, item = d / "toy.inter", d / "toy.item"
    good_i, good_item = inter.read_bytes(), item.read_bytes()

    def case(f, lineno, new, *fragments):
        inter.write_bytes(good_i)
        item.write_bytes(good_item)
        _edit_line(f, lineno, new)
        _raises(lambda: readers.read_recbole(d), f.name, *fragments, line=lineno)

    case(inter, 1, "user_id:token\titem_id:token\trating\ttimestamp:float",
         "header field 3 'rating' has no ':type' suffix")
    case(inter, 1, "user_id:token\titem_id:token\trating:int\ttimestamp:float",
         "unknown type 'int'", "token, float, token_seq, float_seq")
    case(inter, 1, "uid:token\titem_id:token\trating:float\ttimestamp:float",
         "lacks the required field 'user_id'")
    case(inter, 1, "user_id:token\titem_id:token\trating:token\ttimestamp:float",
         "'rating' must have type float")
    case(inter, 4, "alice\ti1\tfive\t100", "field 3 (rating)", "'five'")
    case(inter, 3, "alice\t\t3\t100", "field 2 (item_id)", "non-empty token")
    case(inter, 6, "alice\ti3\t1", "expected 4 tab-separated fields", "got 3", "truncated")
    case(inter, 5, "bob\ti1\t2\tnan", "field 4 (timestamp)", "finite number", "'nan'")
    case(item, 3, "i10\tTen\tSci-Fi\t1 x", "field 4 (vec)", "space-separated numbers")
    case(item, 1, "movie_title:token_seq\tclass:token_seq\tvec:float_seq\tid:token",
         "lacks the required field 'item_id'")

    inter.write_bytes(good_i)
    item.write_bytes(good_item + b"i2\tTwo again\tAction\t0 0\n")
    _raises(lambda: readers.read_recbole(d), "toy.item", "item_id 'i2' appears on 2 lines")
    item.write_bytes(good_item)
    inter.write_bytes(b"user_id:token\titem_id:token\n")
    _raises(lambda: readers.read_recbole(d), "toy.inter", "no data rows", line=2)
    inter.unlink()
    _raises(lambda: readers.read_recbole(d), "no *.inter files", str(d))
    _raises(lambda: readers.read_recbole(d, name="toy"), "missing file 'toy.inter'", str(d))
    (d / "a.inter").write_text("user_id:token\titem_id:token\nu\ti\n")
    (d / "b.inter").write_text("user_id:token\titem_id:token\nu\ti\n")
    _raises(lambda: readers.read_recbole(d), "2 *.inter files", "pass name=")


def test_recbole_rating_scale(tmp_path):
    """ML-100K/ML-1M under RecBole's names get the 1-5 scale; other names only on request."""
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (tmp_path / "ml-100k.inter").write_text(header + "1\t10\t4\t1\n1\t11\t5\t2\n"
                                            "2\t10\t6\t3\n")
    _raises(lambda: readers.read_recbole(tmp_path), "ml-100k.inter", "field 3 (rating)",
            "expected a rating from 1 to 5", "got '6'", line=4)
    assert readers.read_recbole(tmp_path, rating_scale=None).rating.max() == 6
    assert readers.read_recbole(tmp_path, rating_scale="1,6").num_events == 3
    # The toy dataset (half stars, unknown name) is unchecked unless a scale is given.
    d = _copy("recbole/toy", tmp_path)
    assert readers.read_recbole(d).rating.max() == 5
    _raises(lambda: readers.read_recbole(d, rating_scale=(1, 4)), "toy.inter",
            "field 3 (rating)", "from 1 to 4", "got '4.5'", line=2)
    with pytest.raises(ValueError, match="rating_scale"):
        readers.read_recbole(d, rating_scale="high")


def test_recbole_ml100k_from_the_recbole_wheel():
    """The real MovieLens-100K atomic files, checked against a plain csv re-reading."""
    root = importlib.resources.files("recbole") / "dataset_example" / "ml-100k"
    log = readers.read_recbole(str(root))  # name found from the single .inter: 'ml-100k'
    assert log.name == "ml-100k"
    assert (log.num_sessions, log.num_items, log.num_events) == (943, 1682, 100_000)

    # Reference: every user's items in (timestamp, file line) order, read with csv.
    with open(root / "ml-100k.inter", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    per_user = {}
    for n, (u, i, r, t) in enumerate(rows):
        per_user.setdefault(u, []).append((float(t), n, i, float(r)))
    assert sorted(per_user) == log.raw_session_ids.tolist()
    bounds = log.session_bounds()
    for s, u in enumerate(log.raw_session_ids.tolist()):
        ref = sorted(per_user[u])
        got = slice(bounds[s], bounds[s + 1])
        assert log.raw_item_ids[log.item[got]].tolist() == [x[2] for x in ref]
        assert log.rating[got].tolist() == [x[3] for x in ref]

    with open(root / "ml-100k.item", newline="", encoding="utf-8") as f:
        item_rows = {r[0]: r for r in list(csv.reader(f, delimiter="\t",
                                                      quoting=csv.QUOTE_NONE))[1:]}
    assert len(log.items.titles) == len(log.items.genres) == 1682
    assert all(log.items.titles) and all(log.items.genres)
    for k in (0, 500, 1681):  # titles and genres follow the dense ids
        raw = item_rows[log.raw_item_ids[k]]
        assert log.items.titles[k] == raw[1] and log.items.genres[k] == raw[3].split(" ")
    drama_raw = sum("Drama" in r[3].split(" ") for r in item_rows.values())
    assert drama_raw == 725  # the Drama count of MovieLens-100K's u.item
    assert sum("Drama" in g for g in log.items.genres) == drama_raw
