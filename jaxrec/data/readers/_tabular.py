"""Delimited-text parsing shared by the raw-format readers.

Not tied to a paper: this is the machinery the per-format readers (``retailrocket``,
``yoochoose``, ``movielens``, ``recbole``) use to turn a delimited file into validated
columns. Two paths read the same rules:

- a **fast path**: ``pyarrow.csv`` parses the whole file with typed columns, multithreaded,
  and the semantic checks (allowed values, patterns) run vectorised in Arrow. The
  YooChoose clicks file has 33M lines, so nothing per-line in Python may run on good input.
- a **line scan**, run only when the fast path rejects the file: it re-reads the file line
  by line with the same rules and raises :class:`DataFormatError` naming the 1-based line
  and the field, which Arrow's own messages do not reliably give (its row numbers skip
  blank lines and are per parse block).

The scan is deliberately *no stricter* than Arrow (e.g. Arrow accepts spaces around
numbers, so the scan does too): a stricter scan could blame an earlier, acceptable line.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import re
from typing import Callable, Optional, Sequence

import numpy as np

from jaxrec.data.events import DataFormatError

log = logging.getLogger(__name__)

INT = "int"        # signed 64-bit integer -> int64
FLOAT = "float"    # decimal / scientific number, nan, inf -> float64
ISO_MS = "iso_ms"  # ISO-8601 timestamp with a zone ('Z' or +hh:mm) -> int64 ms since epoch
STR = "str"        # free text, optionally restricted by ``choices`` or ``pattern``

_KINDS = (INT, FLOAT, ISO_MS, STR)

# Python regexes mirroring what Arrow's CSV converters accept (see module docstring).
_INT_RE = re.compile(r"\s*-?\d+\s*")
_FLOAT_RE = re.compile(
    r"\s*[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|infinity)\s*", re.IGNORECASE)
_ISO_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,3})?)?(?:Z|[-+]\d{2}(?::?\d{2})?)")
_INT64_MAX = 2**63 - 1

# Multi-character delimiters ('::' in MovieLens-1M) are rewritten to this byte for Arrow,
# which only splits on one character; a field containing it would then split wrongly.
_UNIT_SEP = "\x1f"


@dataclasses.dataclass(frozen=True)
class Field:
    """One column of a delimited file.

    Attributes:
      name: column name used in messages and as the Arrow column name.
      kind: one of ``int``, ``float``, ``iso_ms``, ``str``.
      choices: for ``str``: the only allowed values (e.g. event types).
      pattern: for ``str``: a regex the whole value must match (RE2- and Python-compatible).
      expected: human description of the allowed values, overriding the default.
    """

    name: str
    kind: str = STR
    choices: Optional[tuple[str, ...]] = None
    pattern: Optional[str] = None
    expected: Optional[str] = None

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"Field {self.name!r}: unknown kind {self.kind!r}")

    def describe(self) -> str:
        if self.expected:
            return self.expected
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return {INT: "an integer", FLOAT: "a number",
                ISO_MS: "an ISO-8601 timestamp like 2014-04-07T10:51:09.277Z",
                STR: "text" if self.pattern is None else f"text matching {self.pattern}"}[self.kind]

    def problem(self, value: str) -> Optional[str]:
        """Returns None if ``value`` is acceptable, else what was expected."""
        ok = True
        if self.kind == INT:
            ok = bool(_INT_RE.fullmatch(value)) and abs(int(value)) <= _INT64_MAX
        elif self.kind == FLOAT:
            ok = bool(_FLOAT_RE.fullmatch(value))
        elif self.kind == ISO_MS:
            ok = bool(_ISO_RE.fullmatch(value)) and _valid_iso(value)
        elif self.choices is not None:
            ok = value in self.choices
        elif self.pattern is not None:
            ok = re.fullmatch(self.pattern, value) is not None
        return None if ok else self.describe()


def _valid_iso(value: str) -> bool:
    try:  # calendar validity (month 13, Feb 30) that the regex cannot see
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """The layout of one delimited file.

    Attributes:
      fields: the columns, in file order.
      delimiter: field separator; may be several characters (MovieLens-1M ``::``).
      header: the exact first line, or None for headerless files.
      encoding: text encoding of the file (MovieLens titles are latin-1).
    """

    fields: tuple[Field, ...]
    delimiter: str = ","
    header: Optional[str] = None
    encoding: str = "utf-8"

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def row_description(self) -> str:
        sep = "tab" if self.delimiter == "\t" else repr(self.delimiter)
        return f"{len(self.fields)} {sep}-separated fields ({', '.join(self.names)})"


RowCheck = Callable[[Sequence[str]], Optional[str]]


def require_file(raw_dir, filename: str, reader: str, expected: Sequence[str]) -> str:
    """Path of ``raw_dir/filename``; raises DataFormatError naming the file and directory."""
    path = os.path.join(os.fspath(raw_dir), filename)
    if not os.path.isdir(raw_dir):
        raise DataFormatError(raw_dir, f"{reader}: raw directory does not exist; expected a "
                              f"directory holding {', '.join(expected)}")
    if not os.path.isfile(path):
        raise DataFormatError(path, f"{reader}: missing file {filename!r} in directory "
                              f"{os.fspath(raw_dir)} (expected: {', '.join(expected)})")
    return path


def read_table(path: str, spec: TableSpec, row_check: Optional[RowCheck] = None):
    """Parses and validates a delimited file.

    Args:
      path: the file.
      spec: its layout.
      row_check: optional cross-field rule, given the split string values of one row and
        returning a message on violation; it runs only in the line scan, so the caller must
        check the same rule vectorised and call :func:`locate_error` when it fails.
    Returns:
      a ``pyarrow.Table`` with R rows and one column per field: int64 (``int``), float64
      (``float``), timestamp[ms, UTC] (``iso_ms``, see :func:`to_numpy`) or string.
    Raises:
      DataFormatError: naming the file, the 1-based line and the expected content.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    size = os.path.getsize(path)
    if size == 0:
        what = f"the header line {spec.header!r}" if spec.header else spec.row_description()
        raise DataFormatError(path, f"file is empty (0 bytes); expected {what}", 1)
    if spec.header is not None:
        _check_header(path, spec)

    types = {INT: pa.int64(), FLOAT: pa.float64(), ISO_MS: pa.timestamp("ms", tz="UTC"),
             STR: pa.string()}
    multi = len(spec.delimiter) > 1
    try:
        if multi:
            with open(path, "rb") as f:
                data = f.read()
            if _UNIT_SEP.encode() in data:
                raise _FastPathRefused("file contains the control character U+001F")
            source = pa.BufferReader(data.replace(spec.delimiter.encode(spec.encoding),
                                                  _UNIT_SEP.encode()))
        else:
            source = path
        table = pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(
                column_names=spec.names, skip_rows=1 if spec.header is not None else 0,
                encoding=spec.encoding),
            parse_options=pacsv.ParseOptions(
                delimiter=_UNIT_SEP if multi else spec.delimiter, quote_char=False,
                double_quote=False, escape_char=False, newlines_in_values=False,
                ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                column_types={f.name: types[f.kind] for f in spec.fields},
                # No null markers: an empty or 'NA' id must be an error, not a null.
                null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, _FastPathRefused, UnicodeDecodeError) as e:
        locate_error(path, spec, str(e), row_check)
        raise AssertionError("unreachable")  # locate_error always raises

    if table.num_rows == 0:
        line = 2 if spec.header is not None else 1
        raise DataFormatError(path, f"no data rows; expected rows of {spec.row_description()}"
                              + (" after the header" if spec.header else ""), line)
    bad = _vectorised_problem(table, spec)
    if bad is not None:
        locate_error(path, spec, bad, row_check)
    return table


class _FastPathRefused(Exception):
    pass


def _check_header(path: str, spec: TableSpec) -> None:
    with open(path, "rb") as f:
        first = f.readline()
    try:
        text = first.decode(spec.encoding)
    except UnicodeDecodeError:
        text = first.decode(spec.encoding, errors="replace")
    text = text.lstrip("\ufeff").rstrip("\r\n")  # tolerate a UTF-8 byte-order mark
    if text != spec.header:
        raise DataFormatError(path, f"expected the header line {spec.header!r}, got {text!r}", 1)


def _vectorised_problem(table, spec: TableSpec) -> Optional[str]:
    """Arrow-side check of ``choices`` / ``pattern`` rules; a description of the failure."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for f in spec.fields:
        if f.kind != STR:
            continue
        col = table.column(f.name)
        if f.choices is not None:
            ok = pc.all(pc.is_in(col, value_set=pa.array(list(f.choices), pa.string())))
        elif f.pattern is not None:
            ok = pc.all(pc.match_substring_regex(col, f"^(?:{f.pattern})$"))
        else:
            continue
        if not ok.as_py():
            return f"column {f.name!r} holds a value that is not {f.describe()}"
    return None


def locate_error(path: str, spec: TableSpec, reason: str,
                 row_check: Optional[RowCheck] = None) -> None:
    """Scans ``path`` line by line and raises DataFormatError at the first bad line.

    Called when the fast path failed (``reason`` is its message). Blank lines are skipped,
    as Arrow skips them. If no line is found at fault the error carries ``reason`` alone.
    """
    log.info("%s: fast parse failed (%s); scanning line by line to locate the error",
             path, reason)
    n = len(spec.fields)
    multi = len(spec.delimiter) > 1
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and spec.header is not None:
                continue
            try:
                text = raw.decode(spec.encoding)
            except UnicodeDecodeError as e:
                raise DataFormatError(path, f"bytes {e.start}-{e.end} are not valid "
                                      f"{spec.encoding} ({e.reason})", lineno) from None
            text = text.rstrip("\r\n")
            if not text:
                continue
            if multi and _UNIT_SEP in text:
                raise DataFormatError(path, "unexpected control character U+001F", lineno)
            values = text.split(spec.delimiter)
            if len(values) != n:
                hint = (" (the line looks truncated or is missing fields)"
                        if len(values) < n else "")
                raise DataFormatError(path, f"expected {spec.row_description()}, got "
                                      f"{len(values)} field(s){hint}: {_clip(text)!r}", lineno)
            for i, (fld, value) in enumerate(zip(spec.fields, values)):
                expected = fld.problem(value)
                if expected is not None:
                    raise DataFormatError(path, f"field {i + 1} ({fld.name}): expected "
                                          f"{expected}, got {_clip(value)!r}", lineno)
            if row_check is not None:
                msg = row_check(values)
                if msg is not None:
                    raise DataFormatError(path, msg, lineno)
    raise DataFormatError(path, f"could not be parsed ({reason}); no single line was found "
                          "at fault")


def _clip(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[:n] + "..."


def to_numpy(table, name: str) -> np.ndarray:
    """One column as numpy: [R] int64 / float64; ``iso_ms`` columns as int64 milliseconds;
    ``str`` columns as a numpy unicode array (only use on small or low-cardinality data)."""
    import pyarrow as pa

    col = table.column(name)
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    if pa.types.is_string(col.type):
        return np.asarray(col.to_pylist(), dtype=str) if len(col) else np.zeros(0, str)
    return col.to_numpy()


def choice_codes(table, fld: Field) -> np.ndarray:
    """[R] int8 index of each value of a ``choices`` column in ``fld.choices``.

    Arrow computes the codes, so no per-row Python strings are created (RetailRocket's
    event column has 2.7M rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    codes = pc.index_in(table.column(fld.name),
                        value_set=pa.array(list(fld.choices), pa.string()))
    return codes.to_numpy().astype(np.int8)


def is_empty(table, name: str) -> np.ndarray:
    """[R] bool: the string column's value is the empty string."""
    import pyarrow.compute as pc

    return pc.equal(pc.utf8_length(table.column(name)), 0).to_numpy()


def unique_with_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted uniques [K], inverse [R], counts [K]) — pandas' ``groupby(...).size()``."""
    uniques, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return uniques, inverse.reshape(-1), counts
