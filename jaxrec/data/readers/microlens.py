"""MicroLens-100K (Ni et al., "A Content-Driven Micro-Video Recommendation Dataset at
Scale", arXiv 2309.15379), as used by IISAN-Versa's ``run_IISAN_micro`` (spec ``iisan.md``
§2.7): English titles as the text modality and video cover images as the image modality.

Files of the public release (https://recsys.westlake.edu.cn/MicroLens-100k-Dataset/), with
``prefix`` = ``MicroLens-100k`` (``MicroLens-50k`` reads the smaller release):

* ``<prefix>_pairs.csv`` — one interaction per line, ``user,item,timestamp`` (integer ids,
  timestamps in ms), with a header line such as ``user,item,timestamp`` (or none);
* or ``<prefix>_pairs.tsv`` — one user per line, ``user<TAB>item item ...`` in
  chronological order (what the IISAN scripts read; positions become timestamps);
* ``<prefix>_title_en.csv`` (50K release: ``<prefix>_titles.csv``) — ``item,title``, titles
  quoted when they hold commas, with or without an ``item,title`` header;
* a folder of cover images ``<item>.jpg`` (``<prefix>_covers/`` or ``covers/`` by default;
  the IISAN scripts read the same covers from an LMDB built by the MicroLens tools).

Preprocessing follows the Amazon subsets (spec §1.13, "each keeps the last-13 window"):
users with at least ``min_len`` (5) interactions, each user's last ``keep_last`` (13) by
timestamp (ties keep file order), then the items of those windows re-indexed in ascending
numeric id order. Users are the sessions (dense ids in ascending numeric user id).
"""

from __future__ import annotations

import csv
import os
from typing import Optional

import numpy as np

from jaxrec.data.events import DataFormatError, EventLog, ItemInfo, from_raw
from jaxrec.data.readers import _content
from jaxrec.data.readers import _tabular as tab

PREFIX = "MicroLens-100k"
FILES = (f"{PREFIX}_pairs.csv (or {PREFIX}_pairs.tsv)", f"{PREFIX}_title_en.csv",
         f"{PREFIX}_covers/<item>.jpg")
_PAIR_FIELDS = (tab.Field("user", tab.INT, expected="an integer user id"),
                tab.Field("item", tab.INT, expected="an integer item id"),
                tab.Field("timestamp", tab.INT, expected="an integer timestamp"))
# Header names accepted per column (the release's readme calls them userID, videoID and
# timestamp; the CSV's own header is user,item,timestamp).
_HEADER_WORDS = (("user",), ("item", "video"), ("time",))


def _pairs_header(path: str) -> Optional[str]:
    """The header line of a pairs CSV, or None when the first line is already data."""
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")
    cells = first.split(",")
    if len(cells) == 3 and all(c.strip().lstrip("-").isdigit() for c in cells):
        return None
    if len(cells) == 3 and all(any(w in c.lower() for w in words)
                               for c, words in zip(cells, _HEADER_WORDS)):
        return first
    raise DataFormatError(path, "expected a header 'user,item,timestamp' or a first row of "
                                f"three integers, got {first[:80]!r}", 1)


def _read_pairs_csv(path: str):
    spec = tab.TableSpec(fields=_PAIR_FIELDS, delimiter=",", header=_pairs_header(path))
    table = tab.read_table(path, spec)
    return (tab.to_numpy(table, "user"), tab.to_numpy(table, "item"),
            tab.to_numpy(table, "timestamp").astype(np.int64))


def _read_titles(path: str) -> dict:
    """``item,title`` rows -> {int item: title}; errors name the file and line."""
    titles: dict[int, str] = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f)
        try:
            for row in rows:
                n = rows.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != 2:
                    raise DataFormatError(path, f"expected 2 comma-separated fields (item, "
                                                f"title; quote titles holding commas), got "
                                                f"{len(row)}", n)
                item, title = row[0].strip(), row[1]
                if not item.lstrip("-").isdigit():
                    if not titles and item.lower() in ("item", "item_id", "itemid", "video_id",
                                                       "videoid"):
                        continue                      # the header line
                    raise DataFormatError(path, f"field 1 (item): expected an integer item "
                                                f"id, got {item[:80]!r}", n)
                if int(item) in titles:
                    raise DataFormatError(path, f"item {item} listed twice", n)
                titles[int(item)] = title
        except csv.Error as e:
            raise DataFormatError(path, f"malformed CSV ({e})", rows.line_num) from None
    if not titles:
        raise DataFormatError(path, "no titles")
    return titles


def _first_line_with_item(path: str, item: int, tsv: bool) -> Optional[int]:
    """1-based line of ``path`` where ``item`` first occurs (for an error message)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if tsv:
                ids = line.partition("\t")[2].split()
            else:
                cells = line.split(",")
                ids = cells[1:2]
            if str(item) in (x.strip() for x in ids):
                return n
    return None


def _pick(raw_dir: str, names) -> Optional[str]:
    for name in names:
        if os.path.exists(os.path.join(raw_dir, name)):
            return os.path.join(raw_dir, name)
    return None


def read_microlens(raw_dir, prefix: str = PREFIX, pairs: str = "auto",
                   image_dir: Optional[str] = "auto", image_size: int = 224,
                   keep_last: int = _content.KEEP_LAST, min_len: int = _content.MIN_LEN,
                   allow_missing_images: bool = False, allow_missing_titles: bool = False,
                   image_workers: int = 8) -> EventLog:
    """Reads MicroLens (100K by default) into a per-user EventLog with titles and covers.

    Args:
      raw_dir: the folder holding the release's files.
      prefix: file-name prefix (``MicroLens-100k`` | ``MicroLens-50k``).
      pairs: ``auto`` (the CSV if present, else the TSV) | ``csv`` | ``tsv``.
      image_dir: folder of ``<item>.jpg``; ``auto``: ``<raw_dir>/<prefix>_covers`` or
        ``<raw_dir>/covers`` if one exists (else no images, logged); ''/None: no images.
      image_size: side S the covers are resized to (224 for ViT-B/16).
      keep_last: each user's last ``keep_last`` interactions are kept (13; 0 = all).
      min_len: users with fewer interactions are dropped (5).
      allow_missing_images: a missing cover gives a blank image (count logged) instead of
        an error naming the missing files.
      allow_missing_titles: an item without a title gets '' instead of an error.
      image_workers: image decoding threads.
    Returns:
      EventLog named ``microlens``: sessions = kept users, items re-indexed over the kept
      windows' items in ascending id order, timestamps from the CSV (or positions from the
      TSV); ItemInfo with [N] titles and, with images, ``extra['images']`` uint8
      [N, S, S, 3] and ``extra['has_image']`` int8 [N].
    Raises:
      DataFormatError: a missing file or folder; a malformed row (file and 1-based line);
        an item without a title (the titles file and the pairs line where it occurs);
        missing covers (the folder, their count and names); an unreadable cover.
    """
    raw_dir = os.path.expanduser(os.fspath(raw_dir))
    csv_path = os.path.join(raw_dir, f"{prefix}_pairs.csv")
    tsv_path = os.path.join(raw_dir, f"{prefix}_pairs.tsv")
    if pairs not in ("auto", "csv", "tsv"):
        raise ValueError(f"microlens: option pairs must be auto, csv or tsv, got {pairs!r}")
    use_tsv = pairs == "tsv" or (pairs == "auto" and not os.path.exists(csv_path)
                                 and os.path.exists(tsv_path))
    pairs_path = tsv_path if use_tsv else csv_path
    expected = ", ".join(f.replace(PREFIX, prefix) for f in FILES)
    pairs_path = tab.require_file(raw_dir, os.path.basename(pairs_path), "microlens",
                                  [expected])
    titles_name = f"{prefix}_title_en.csv"
    titles_path = _pick(raw_dir, [titles_name, f"{prefix}_titles.csv"])
    if titles_path is None:
        tab.require_file(raw_dir, titles_name, "microlens", [expected])
    if use_tsv:
        users, items, ts = (np.asarray(x, np.int64) for x in
                            _content.read_sequence_lines(pairs_path, as_int=True))
    else:
        users, items, ts = _read_pairs_csv(pairs_path)
    keep = _content.last_window(users, ts, keep_last, min_len)
    if not keep.any():
        raise DataFormatError(pairs_path, f"no user has at least min_len={min_len} "
                                          "interactions")
    users, items, ts = users[keep], items[keep], ts[keep]
    uniques = np.unique(items)
    titles = _read_titles(titles_path)
    missing = [int(i) for i in uniques if int(i) not in titles]
    if missing and not allow_missing_titles:
        line = _first_line_with_item(pairs_path, missing[0], use_tsv)
        where = f"{pairs_path}:{line}" if line else pairs_path
        raise DataFormatError(titles_path, f"{len(missing)} item(s) have no title, e.g. item "
                                           f"{missing[0]} (used at {where}); option "
                                           "allow_missing_titles=1 gives them ''")
    info = ItemInfo(titles=[titles.get(int(i), "") for i in uniques])
    default_dir = _pick(raw_dir, [f"{prefix}_covers", "covers"])
    folder = _content.resolve_image_dir(
        image_dir, default_dir or os.path.join(raw_dir, f"{prefix}_covers"))
    if folder is not None:
        images, has = _content.load_images(folder, [int(i) for i in uniques], int(image_size),
                                           allow_missing=bool(allow_missing_images),
                                           workers=image_workers)
        info.extra["images"] = images
        info.extra["has_image"] = has.astype(np.int8)
    return from_raw(users, items, ts, np.zeros(len(items), np.int8), name="microlens",
                    items=info, item_uniques=uniques)
