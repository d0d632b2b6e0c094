"""Pieces shared by the item-content readers of IISAN's datasets (``amazon``, ``microlens``).

IISAN (Fu et al., SIGIR 2024; spec ``iisan.md`` §1.13) preprocesses every dataset the same
way: keep each user's **last 13 interactions** (max_seq_len 10 + 3), keep users with **at
least 5**, and re-index the items that occur in the kept windows as 1..N. The readers do
the windowing *before* re-indexing (:func:`last_window`), so an item seen only outside
every window gets no id and is not in the catalogue that evaluation ranks — the released
statistics (e.g. Scientific: 20,314 items) count only the windows' items.

Items carry a title (the text modality) and, when an image folder is given, a cover image
``<raw item id>.jpg`` resized to a square (the image modality), stored as **uint8**
``[N, S, S, 3]`` (224x224 for 20K items is 3 GB as uint8, 12 GB as float32: the float
conversion belongs to the consumer, a batch at a time).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from typing import Optional, Sequence

import numpy as np

from jaxrec.data.events import DataFormatError

log = logging.getLogger(__name__)

KEEP_LAST = 13   # spec §1.13: max_seq_len + 3
MIN_LEN = 5      # spec §1.13: every user has at least 5 interactions


def read_sequence_lines(path: str, known: Optional[dict] = None, as_int: bool = False
                        ) -> tuple[list, list, list]:
    """Reads ``user<TAB>item item ...`` lines (one user per line, items in time order).

    Args:
      path: the file (IISAN's ``am_<category>_users*.tsv``, MicroLens ``*_pairs.tsv``).
      known: raw item id -> anything; an item absent from it is an error (None: no check).
      as_int: user and item ids must be integers (MicroLens) and are returned as ints.
    Returns:
      (users [E], items [E], positions [E]) as flat lists: every event of every line, its
      user, item and index in the line (the files carry no timestamps).
    Raises:
      DataFormatError: naming the file and 1-based line of a malformed line or of an item
        missing from ``known``.
    """
    users, items, pos = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            user, sep, seq = line.partition("\t")
            ids = seq.split()
            if not sep or not user or not ids:
                raise DataFormatError(path, "expected 'user<TAB>item item ...' (a user id, a "
                                            "tab, space-separated item ids)", n)
            if as_int:
                bad = [x for x in [user] + ids if not x.lstrip("-").isdigit()]
                if bad:
                    raise DataFormatError(path, f"expected integer user and item ids, got "
                                                f"{bad[0]!r}", n)
                user, ids = int(user), [int(x) for x in ids]
            if known is not None:
                unknown = [a for a in ids if a not in known]
                if unknown:
                    raise DataFormatError(path, f"items not in the items file: {unknown[:3]}", n)
            users += [user] * len(ids)
            items += ids
            pos += range(len(ids))
    if not items:
        raise DataFormatError(path, "no interactions")
    return users, items, pos


def last_window(users: np.ndarray, order: np.ndarray, keep_last: Optional[int],
                min_len: int) -> np.ndarray:
    """Which events survive IISAN's preprocessing (spec §1.13).

    Args:
      users: [E] raw user ids.
      order: [E] time key of each event (timestamp or position); ties keep file order.
      keep_last: keep each user's last ``keep_last`` events (None or 0: all of them).
      min_len: drop users with fewer than ``min_len`` events (counted before truncation;
        the same as after it whenever ``keep_last >= min_len``).
    Returns:
      [E] bool mask over the events in their given order.
    """
    users, order = np.asarray(users), np.asarray(order)
    if keep_last is not None and keep_last < 0:
        raise ValueError(f"keep_last must be >= 0 (0 or None: keep all), got {keep_last}")
    _, codes = np.unique(users, return_inverse=True)
    codes = codes.reshape(-1)
    perm = np.lexsort((order, codes))            # stable: by user, then time, then file order
    s = codes[perm]
    counts = np.bincount(s)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    from_end = counts[s] - 1 - (np.arange(len(s)) - starts[s])
    keep = counts[s] >= int(min_len)
    if keep_last:
        keep &= from_end < int(keep_last)
    out = np.empty(len(s), bool)
    out[perm] = keep
    return out


def first_appearance_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label-encodes in order of first appearance (the release's user numbering).

    Args:
      values: [E] raw ids.
    Returns:
      (names [K] in first-appearance order, codes [E] int64 with ``names[codes] == values``).
    """
    uniques, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    rank = np.empty(len(uniques), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniques))
    return uniques[np.argsort(first, kind="stable")], rank[inverse.reshape(-1)]


def resolve_image_dir(image_dir, default: Optional[str] = None) -> Optional[str]:
    """``image_dir`` option -> a folder or None.

    ``None`` / ``''`` / ``'none'``: no images. ``'auto'``: ``default`` when that folder
    exists, else no images (logged). Anything else is a folder that must exist.
    """
    if image_dir is None or str(image_dir).strip().lower() in ("", "none"):
        return None
    if str(image_dir) == "auto":
        if default is not None and os.path.isdir(default):
            return default
        log.warning("no image folder %s: items get no images", default)
        return None
    path = os.path.expanduser(os.fspath(image_dir))
    if not os.path.isdir(path):
        raise DataFormatError(path, "image folder does not exist (option image_dir; expected "
                                    "a folder of <item id>.jpg)")
    return path


def _load_one(path: str, size: int) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as im:
            # A square resize without cropping: what the reference ViT processor does.
            return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    except OSError as e:
        raise DataFormatError(path, f"unreadable image: {e}") from e


def load_images(image_dir: str, names: Sequence, size: int, allow_missing: bool = False,
                workers: int = 8, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Loads ``<image_dir>/<name>.jpg`` for every item, resized to ``size`` x ``size``.

    Args:
      image_dir: the folder.
      names: [N] raw item ids (the file stems), in dense-id order.
      size: output side S.
      allow_missing: missing files give all-zero images (their count is logged as a
        warning) instead of an error.
      workers: decoding threads (PIL releases the GIL while decoding).
      progress: show a tqdm bar.
    Returns:
      (images uint8 [N, S, S, 3], has_image bool [N]).
    Raises:
      DataFormatError: missing images (the folder, their count and the first names) unless
        ``allow_missing``; an unreadable image (its path).
    """
    size = int(size)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {size}")
    paths = [os.path.join(image_dir, f"{a}.jpg") for a in names]
    has = np.asarray([os.path.isfile(p) for p in paths], bool)
    missing = [f"{a}.jpg" for a, h in zip(names, has) if not h]
    if missing:
        what = (f"{len(missing)} of {len(paths)} item images missing, e.g. "
                f"{', '.join(missing[:5])}")
        if not allow_missing:
            raise DataFormatError(image_dir, what + " (option allow_missing_images=1 gives "
                                             "them blank images)")
        log.warning("%s: %s; they get blank (all-zero) images", image_dir, what)
    out = np.zeros((len(paths), size, size, 3), np.uint8)
    todo = np.flatnonzero(has)
    bar = None
    if progress and len(todo):
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc=f"images {os.path.basename(image_dir)}", unit="img")
    with concurrent.futures.ThreadPoolExecutor(max(int(workers), 1)) as pool:
        for i, img in zip(todo, pool.map(lambda i: _load_one(paths[i], size), todo)):
            out[i] = img
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return out, has
