"""Amazon Reviews 2018 subsets as released with IISAN (Fu et al., SIGIR 2024; spec
``iisan.md`` §1.13): Industrial_and_Scientific, Musical_Instruments, Office_Products.

Files (the release's ``Dataset/<name>/`` folder, GAIR-Lab/IISAN):

* ``am_<category>_users*.tsv`` — one user per line: ``user_id<TAB>asin asin ...`` in
  chronological order (the whole Scientific set; 10K-user samples for the others);
* ``<category>_items.tsv`` — ``asin<TAB>title``;
* optionally an image folder with ``<asin>.jpg`` per item (separate download in the release;
  its ``Dataset/build_lmdb.py`` reads them from ``am_image_is`` / ``am_image_mi`` /
  ``am_image_op``, the initials of the category, which ``image_dir='auto'`` looks for).

The release's preprocessing (``data_utils/preprocess.py: read_behaviors``; spec §1.13) is
done here, before re-indexing: users with at least ``min_len`` (5) items, each user's last
``keep_last`` (13), and the items occurring in those windows re-indexed **in the items
file's order** and users numbered in the users file's order, as the release does (the
catalogue is the paper's: Scientific 12,076 users, 20,314 items, 81,711 interactions). The
leave-one-out task builder's ``loo_min_len`` / ``loo_keep_last`` then find nothing left to
drop. Event timestamps are positions in the user's line (the files carry no times).
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Optional

import numpy as np

from jaxrec.data.events import DataFormatError, EventLog, ItemInfo, from_raw
from jaxrec.data.readers import _content

FILES = ("am_<category>_users*.tsv", "<category>_items.tsv")
CATEGORIES = ("Industrial_and_Scientific", "Musical_Instruments", "Office_Products")


def _one(raw_dir: str, pattern: str, what: str) -> str:
    if not os.path.isdir(raw_dir):
        raise DataFormatError(raw_dir, f"raw directory does not exist; expected a directory "
                                       f"holding {', '.join(FILES)}")
    hits = sorted(glob.glob(os.path.join(raw_dir, pattern)))
    if not hits:
        raise DataFormatError(raw_dir, f"no {what} file matching {pattern!r}")
    if len(hits) > 1:
        raise DataFormatError(raw_dir, f"several {what} files match {pattern!r}: "
                                       f"{[os.path.basename(h) for h in hits]}")
    return hits[0]


def _read_items(path: str) -> dict:
    titles = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            asin, sep, title = line.partition("\t")
            if not sep or not asin:
                raise DataFormatError(path, "expected 'asin<TAB>title'", n)
            if asin in titles:
                raise DataFormatError(path, f"item {asin!r} listed twice", n)
            titles[asin] = title
    if not titles:
        raise DataFormatError(path, "no items")
    return titles


def image_folder_name(category: str) -> str:
    """The release's image folder of a category: ``am_image_`` + the initials of its first
    and last words (``Industrial_and_Scientific`` -> ``am_image_is``)."""
    words = category.split("_")
    return f"am_image_{words[0][0].lower()}{words[-1][0].lower()}"


def read_amazon_iisan(raw_dir, category: str = "Industrial_and_Scientific",
                      image_dir: Optional[str] = "auto", image_size: int = 224,
                      keep_last: int = _content.KEEP_LAST, min_len: int = _content.MIN_LEN,
                      allow_missing_images: bool = False, image_workers: int = 8
                      ) -> EventLog:
    """Reads one category of IISAN's Amazon release.

    Args:
      raw_dir: the folder with the users and items TSVs.
      category: ``Industrial_and_Scientific`` | ``Musical_Instruments`` | ``Office_Products``
        (the file-name stem; another stem is accepted for other categories).
      image_dir: folder of ``<asin>.jpg``; ``auto``: ``<raw_dir>/am_image_<xx>`` (see
        :func:`image_folder_name`) if it exists, else no images (logged); None / '': none.
      image_size: side S the images are resized to (224 for ViT-B/16).
      keep_last: each user's last ``keep_last`` items are kept (spec: 13; 0 = all).
      min_len: users with fewer items are dropped (spec: 5).
      allow_missing_images: a missing ``<asin>.jpg`` gives a blank image (count logged)
        instead of an error.
      image_workers: image decoding threads.
    Returns:
      EventLog named ``amazon_<category>``: one session per kept user (in file order), items
      re-indexed over the items of the kept windows (in items-file order), timestamps =
      positions in the line;
      ItemInfo with [N] titles and, with ``image_dir``, ``extra['images']`` uint8
      [N, S, S, 3] and ``extra['has_image']`` int8 [N].
    Raises:
      DataFormatError: missing files, malformed lines (file and 1-based line), a sequence
        item absent from the items file, no user left after the filter, missing or
        unreadable images (named).
    """
    raw_dir = os.fspath(raw_dir)
    users_path = _one(raw_dir, f"am_{category}_users*.tsv", "users")
    titles = _read_items(_one(raw_dir, f"{category}_items.tsv", "items"))
    users, items, pos = _content.read_sequence_lines(users_path, known=titles)
    keep = _content.last_window(np.asarray(users), np.asarray(pos), keep_last, min_len)
    if not keep.any():
        raise DataFormatError(users_path, f"no user has at least min_len={min_len} items")
    # Dense ids in file order (the release's numbering): encode by position in the items
    # file and by first appearance in the users file, then put the raw names back.
    asins = np.asarray(list(titles))
    where = {a: i for i, a in enumerate(asins)}
    item_pos = np.asarray([where[a] for a in items], np.int64)[keep]
    user_names, user_pos = _content.first_appearance_codes(np.asarray(users)[keep])
    ts = np.asarray(pos, np.int64)[keep]
    uniques = np.unique(item_pos)
    info = ItemInfo(titles=[titles[a] for a in asins[uniques]])
    image_dir = _content.resolve_image_dir(
        image_dir, os.path.join(raw_dir, image_folder_name(category)))
    if image_dir is not None:
        images, has = _content.load_images(image_dir, list(asins[uniques]), int(image_size),
                                           allow_missing=bool(allow_missing_images),
                                           workers=image_workers)
        info.extra["images"] = images
        info.extra["has_image"] = has.astype(np.int8)
    log = from_raw(user_pos, item_pos, ts, np.zeros(len(ts), np.int8),
                   name=f"amazon_{category}", items=info, item_uniques=uniques)
    return dataclasses.replace(log, raw_item_ids=asins[log.raw_item_ids],
                               raw_session_ids=user_names[log.raw_session_ids])
