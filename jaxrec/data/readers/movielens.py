"""MovieLens-100K and MovieLens-1M rating files (GroupLens distributions).

Used as per-user sequence data by the leave-one-out papers: Latent intent / PCRec read
ML-style rating logs as one sequence per user (``specs/intent_pcrec.md`` §2.6, from the
PCRec code), and ML-100K is the real dataset available offline (``specs/ecosystem.md`` §9).
The file layouts are those of the GroupLens READMEs of ``ml-100k`` and ``ml-1m``:

- ML-100K ``u.data``: ``user \\t item \\t rating \\t timestamp`` (no header);
  ``u.item``: ``|``-separated, latin-1: id, title, release date, video release date, IMDb
  URL and 19 genre flags in the README's order (:data:`ML100K_GENRES`).
- ML-1M ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``; ``movies.dat``:
  ``MovieID::Title (Year)::Genre|Genre``, latin-1.

Ratings: both READMEs give whole stars from 1 to 5; a rating that is not a whole number in
the ``rating_scale`` option (default ``(1, 5)``) is a :class:`DataFormatError` naming the
file, line and field (a corrupt or mis-converted file, not a new scale to learn).

Normalisation [inferred, shared by all jaxrec readers]: session = user; items and users are
label-encoded in sorted raw-id order; ratings are kept (float32) with ``is_buy = 0``; events
are stably sorted by (user, timestamp), so equal timestamps keep file order. Filters such
as the papers' "sequences of length >= 5" are applied by the example builders, not here.
Titles are kept verbatim (ML-1M titles include the year); genre lists go to
``ItemInfo.genres``. Movies in the item file that nobody rated get no dense id; a rated
movie missing from the item file is an error.

Licence: the MovieLens README forbids redistribution, so jaxrec ships no copy of these files.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from jaxrec.data.events import DataFormatError, EventLog, ItemInfo, from_raw
from jaxrec.data.readers import _tabular as tab

log = logging.getLogger(__name__)

ML100K_FILES = ("u.data", "u.item")
ML1M_FILES = ("ratings.dat", "movies.dat")
# Genre flag order of u.item, as listed in the ML-100K README (and its u.genre file).
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
                 "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror",
                 "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")

# Both READMEs: ratings are whole stars on a 1-5 scale (the ``rating_scale`` option).
RATING_SCALE = (1, 5)
_RATING_FIELDS = (
    tab.Field("user", tab.INT, expected="an integer user id"),
    tab.Field("item", tab.INT, expected="an integer item id"),
    tab.Field("rating", tab.INT, expected="an integer rating", bounds=RATING_SCALE),
    tab.Field("timestamp", tab.INT, expected="an integer timestamp (s)"),
)
ML100K_DATA_SPEC = tab.TableSpec(fields=_RATING_FIELDS, delimiter="\t")
ML100K_ITEM_SPEC = tab.TableSpec(fields=(
    tab.Field("item", tab.INT, expected="an integer movie id"),
    tab.Field("title"), tab.Field("release_date"), tab.Field("video_release_date"),
    tab.Field("url"),
) + tuple(tab.Field(f"genre_{g}", tab.STR, choices=("0", "1")) for g in ML100K_GENRES),
    delimiter="|", encoding="latin-1")
ML1M_RATINGS_SPEC = tab.TableSpec(fields=_RATING_FIELDS, delimiter="::")
ML1M_MOVIES_SPEC = tab.TableSpec(fields=(
    tab.Field("item", tab.INT, expected="an integer movie id"),
    tab.Field("title"),
    tab.Field("genres"),
), delimiter="::", encoding="latin-1")


def _ratings(path: str, spec: tab.TableSpec, rating_scale):
    """(user, item, rating, timestamp) columns, each [E]; ratings outside ``rating_scale``
    (``(low, high)``, ``'low,high'`` or None for no check) are a DataFormatError."""
    scale = tab.parse_range(rating_scale, "rating_scale")
    spec = dataclasses.replace(spec, fields=tuple(
        dataclasses.replace(f, bounds=scale) if f.name == "rating" else f
        for f in spec.fields))
    table = tab.read_table(path, spec)
    return (tab.to_numpy(table, "user"), tab.to_numpy(table, "item"),
            tab.to_numpy(table, "rating"), tab.to_numpy(table, "timestamp"))


def _item_info(item_path: str, table, item_uniques: np.ndarray, genres_of) -> ItemInfo:
    """Titles and genre lists aligned with the dense item ids.

    Args:
      table: the parsed item file (one row per movie).
      item_uniques: [N] sorted raw ids of the rated movies.
      genres_of: row index -> list of genre labels.
    Returns:
      ItemInfo with [N] titles and [N] genre lists, index = dense item id.
    """
    ids = tab.to_numpy(table, "item")
    uniq, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        dup = uniq[counts > 1][0]
        raise DataFormatError(item_path, f"movie id {dup} appears on {counts[counts > 1][0]} "
                              "lines; expected one line per movie")
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], item_uniques)
    pos_c = np.minimum(pos, len(ids) - 1)
    missing = ids[order][pos_c] != item_uniques
    if missing.any():
        raise DataFormatError(item_path, f"{int(missing.sum())} rated movie(s) have no line "
                              f"in this file, e.g. movie id {item_uniques[missing][0]}")
    rows = order[pos]
    titles = table.column("title").to_pylist()
    return ItemInfo(titles=[titles[r] for r in rows], genres=[genres_of(r) for r in rows])


def read_movielens_100k(raw_dir, rating_scale=RATING_SCALE) -> EventLog:
    """Reads ML-100K ``u.data`` + ``u.item``.

    Args:
      raw_dir: directory holding ``u.data`` and ``u.item``.
      rating_scale: ``(low, high)`` (or ``'low,high'``) every rating must lie in; whole
        stars only. None skips the range check.
    Returns:
      EventLog named ``movielens_100k``: session = user, [E] int32 session/item, timestamp
      [E] int64 seconds, rating [E] float32, is_buy [E] zeros; ItemInfo with [N] titles and
      [N] genre lists.
    Raises:
      DataFormatError: missing/empty/malformed files (with 1-based line), a rating that is
        not a whole number in ``rating_scale`` (with its line), duplicate or missing movie
        rows.
      ValueError: a malformed ``rating_scale``.
    """
    data_path = tab.require_file(raw_dir, "u.data", "movielens_100k", ML100K_FILES)
    item_path = tab.require_file(raw_dir, "u.item", "movielens_100k", ML100K_FILES)
    user, item, rating, ts = _ratings(data_path, ML100K_DATA_SPEC, rating_scale)
    table = tab.read_table(item_path, ML100K_ITEM_SPEC)
    # [M, 19] genre flags; a movie's genres are the labels of its set flags, in README order.
    flags = np.stack([tab.choice_codes(table, ML100K_ITEM_SPEC.fields[5 + g])
                      for g in range(len(ML100K_GENRES))], axis=1) == 1
    item_uniques = np.unique(item)
    info = _item_info(item_path, table, item_uniques,
                      lambda r: [g for g, f in zip(ML100K_GENRES, flags[r]) if f])
    out = from_raw(user, item, ts, np.zeros(len(item), np.int8), name="movielens_100k",
                   rating=rating, items=info, item_uniques=item_uniques)
    log.info("movielens_100k: %s", out.stats())
    return out


def read_movielens_1m(raw_dir, rating_scale=RATING_SCALE) -> EventLog:
    """Reads ML-1M ``ratings.dat`` + ``movies.dat`` (``::``-separated, latin-1 titles).

    Args:
      raw_dir: directory holding ``ratings.dat`` and ``movies.dat``.
      rating_scale: as for :func:`read_movielens_100k`.
    Returns:
      EventLog named ``movielens_1m``, laid out as :func:`read_movielens_100k`'s; titles keep
      their ``(Year)`` suffix, genres are the ``|``-separated labels.
    Raises:
      DataFormatError: missing/empty/malformed files (with 1-based line), a rating that is
        not a whole number in ``rating_scale`` (with its line), duplicate or missing movie
        rows.
      ValueError: a malformed ``rating_scale``.
    """
    ratings_path = tab.require_file(raw_dir, "ratings.dat", "movielens_1m", ML1M_FILES)
    movies_path = tab.require_file(raw_dir, "movies.dat", "movielens_1m", ML1M_FILES)
    user, item, rating, ts = _ratings(ratings_path, ML1M_RATINGS_SPEC,
                                      rating_scale)
    table = tab.read_table(movies_path, ML1M_MOVIES_SPEC)
    genre_text = table.column("genres").to_pylist()
    item_uniques = np.unique(item)
    info = _item_info(movies_path, table, item_uniques,
                      lambda r: [g for g in genre_text[r].split("|") if g])
    out = from_raw(user, item, ts, np.zeros(len(item), np.int8), name="movielens_1m",
                   rating=rating, items=info, item_uniques=item_uniques)
    log.info("movielens_1m: %s", out.stats())
    return out


__all__ = ["read_movielens_100k", "read_movielens_1m", "ML100K_GENRES", "ML100K_FILES",
           "ML1M_FILES", "RATING_SCALE"]
