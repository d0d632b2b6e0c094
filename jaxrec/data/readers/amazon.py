"""Amazon Reviews 2018 subsets as released with IISAN (Fu et al., SIGIR 2024; spec
``iisan.md`` §1.13): Industrial_and_Scientific, Musical_Instruments, Office_Products.

Files (the release's ``Dataset/<name>/`` folder, GAIR-Lab/IISAN):

* ``am_<category>_users*.tsv`` — one user per line: ``user_id<TAB>asin asin ...`` in
  chronological order (the whole Scientific set; 10K-user samples for the others);
* ``<category>_items.tsv`` — ``asin<TAB>title``;
* optionally an image folder with ``<asin>.jpg`` per item (separate download in the release).

The release's own preprocessing (``data_utils/preprocess.py``) keeps users with at least 5
items and each user's last 13; both are done by the leave-one-out task builder
(``config.data.loo_min_len`` / ``loo_keep_last``), so this reader keeps the sequences whole.
Event timestamps are positions in the user's line (the files carry no times).
"""

from __future__ import annotations

import glob
import os
from typing import Optional

import numpy as np

from jaxrec.data.events import DataFormatError, EventLog, ItemInfo, from_raw

FILES = ("am_<category>_users*.tsv", "<category>_items.tsv")


def _one(raw_dir: str, pattern: str, what: str) -> str:
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
            line = line.rstrip("\n")
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


def _load_images(image_dir: str, asins, size: int) -> np.ndarray:
    from PIL import Image
    missing = [a for a in asins if not os.path.exists(os.path.join(image_dir, f"{a}.jpg"))]
    if missing:
        raise DataFormatError(image_dir, f"{len(missing)} item images missing, e.g. "
                                         f"{', '.join(m + '.jpg' for m in missing[:5])}")
    out = np.zeros((len(asins), size, size, 3), np.uint8)
    for i, a in enumerate(asins):
        path = os.path.join(image_dir, f"{a}.jpg")
        try:
            with Image.open(path) as im:
                out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        except OSError as e:
            raise DataFormatError(path, f"unreadable image: {e}") from e
    return out


def read_amazon_iisan(raw_dir, category: str = "Industrial_and_Scientific",
                      image_dir: Optional[str] = None, image_size: int = 224) -> EventLog:
    """Reads one category of IISAN's Amazon release.

    Args:
      raw_dir: the folder with the users and items TSVs.
      category: ``Industrial_and_Scientific`` | ``Musical_Instruments`` | ``Office_Products``.
      image_dir: folder of ``<asin>.jpg`` (None: no images).
      image_size: side the images are resized to (224 for ViT-B/16).
    Returns:
      EventLog named ``amazon_<category>``: one session per user, items re-indexed over the
      items that occur in some sequence, timestamps = positions; ItemInfo with [N] titles and,
      with ``image_dir``, ``extra['images']`` uint8 [N, S, S, 3].
    Raises:
      DataFormatError: missing files, malformed lines (file and 1-based line), a sequence
        item absent from the items file, missing or unreadable images (named).
    """
    raw_dir = os.fspath(raw_dir)
    users_path = _one(raw_dir, f"am_{category}_users*.tsv", "users")
    titles = _read_items(_one(raw_dir, f"{category}_items.tsv", "items"))
    sess, items, ts = [], [], []
    with open(users_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            user, sep, seq = line.partition("\t")
            asins = seq.split()
            if not sep or not user or not asins:
                raise DataFormatError(users_path, "expected 'user<TAB>asin asin ...'", n)
            unknown = [a for a in asins if a not in titles]
            if unknown:
                raise DataFormatError(users_path, f"items not in the items file: {unknown[:3]}", n)
            sess += [user] * len(asins)
            items += asins
            ts += range(len(asins))
    if not items:
        raise DataFormatError(users_path, "no interactions")
    uniques = np.unique(np.asarray(items))
    info = ItemInfo(titles=[titles[a] for a in uniques])
    if image_dir is not None:
        info.extra["images"] = _load_images(os.fspath(image_dir), list(uniques), int(image_size))
    return from_raw(np.asarray(sess), np.asarray(items), np.asarray(ts, np.int64),
                    np.zeros(len(items), np.int8), name=f"amazon_{category}", items=info,
                    item_uniques=uniques)
