"""Delimited-text parsing shared by the raw-format readers.

Not tied to a paper: this is the machinery the per-format readers (``retailrocket``,
``yoochoose``, ``movielens``, ``recbole``) use to turn a delimited file into validated
columns. Two paths read the same rules:

- a **fast path**: ``pyarrow.csv`` parses the whole file with typed columns, multithreaded,
  and the semantic checks (allowed values, patterns) run vectorised in Arrow. The
  YooChoose clicks file has 33M lines, so nothing per-line in Python may run on good input.
- a **locating scan**, run only when the fast path rejects the file: Arrow re-parses it in
  chunks cut at line ends, and the first failing chunk is checked line by line in Python
  with the same rules, raising :class:`DataFormatError` with the 1-based line and field.
  Arrow's own messages do not reliably give the line (its row numbers skip blank lines
  and restart per parse block).

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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from jaxrec.data.events import DataFormatError

log = logging.getLogger(__name__)

INT = "int"        # signed 64-bit integer -> int64
FLOAT = "float"    # decimal / scientific number, nan, inf -> float64
ISO_MS = "iso_ms"  # ISO-8601 timestamp with a zone ('Z' or +hh:mm) -> int64 ms since epoch
STR = "str"        # free text, optionally restricted by ``choices`` or ``pattern``

_KINDS = (INT, FLOAT, ISO_MS, STR)

# What Arrow's CSV converters accept, as Python regexes (ASCII digits, as in RE2/Arrow);
# see the module docstring for why they must not be stricter.
_INT_RE = re.compile(r"\s*-?\d+\s*", re.ASCII)
_FLOAT_RE = re.compile(r"\s*[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|infinity)\s*",
                       re.IGNORECASE | re.ASCII)
_ISO_RE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,3})?)?"
                     r"(?:Z|[-+]\d{2}(?::?\d{2})?)", re.ASCII)
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
      bounds: for ``int`` / ``float``: the closed range ``(low, high)`` every value must lie
        in (a rating scale); nan lies in no range.
    """

    name: str
    kind: str = STR
    choices: Optional[tuple[str, ...]] = None
    pattern: Optional[str] = None
    expected: Optional[str] = None
    bounds: Optional[tuple[float, float]] = None

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"Field {self.name!r}: unknown kind {self.kind!r}")
        if self.bounds is not None and self.kind not in (INT, FLOAT):
            raise ValueError(f"Field {self.name!r}: bounds need kind int or float")

    def describe(self) -> str:
        """What a value must be, e.g. 'an integer rating from 1 to 5' (``expected`` plus the
        range of ``bounds``)."""
        if self.expected:
            what = self.expected
        elif self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            what = {INT: "an integer", FLOAT: "a number",
                    ISO_MS: "an ISO-8601 timestamp like 2014-04-07T10:51:09.277Z",
                    STR: "text" if self.pattern is None else f"text matching {self.pattern}"
                    }[self.kind]
        if self.bounds is not None:
            what += f" from {_num(self.bounds[0])} to {_num(self.bounds[1])}"
        return what

    def in_bounds(self, values: np.ndarray) -> np.ndarray:
        """[R] bool: each of ``values`` ([R] numbers) lies in ``bounds`` (all True if none)."""
        if self.bounds is None:
            return np.ones(np.shape(values), bool)
        return (values >= self.bounds[0]) & (values <= self.bounds[1])

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
            ok = re.fullmatch(self.pattern, value, re.ASCII) is not None  # RE2: ASCII \d
        if ok and self.bounds is not None:
            ok = bool(self.in_bounds(float(value)))
        return None if ok else self.describe()


def _num(x: float) -> str:
    """1.0 -> '1', 0.5 -> '0.5' (for messages)."""
    return str(int(x)) if float(x).is_integer() else str(x)


def parse_range(value, option: str) -> Optional[tuple[float, float]]:
    """A reader option naming a closed range: ``(low, high)``, ``'low,high'`` or None.

    Args:
      value: a 2-sequence of numbers, a ``'low,high'`` string (as ``--option`` passes it),
        or None / ``'none'`` for no range.
      option: the option's name, for the message.
    Returns:
      ``(low, high)`` as floats with ``low <= high``, or None.
    Raises:
      ValueError: naming the option and what was expected.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    parts = value.split(",") if isinstance(value, str) else value
    try:
        low, high = (float(p) for p in parts)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise ValueError(f"option {option}={value!r}: expected two finite numbers low,high "
                         "with low <= high (e.g. 1,5), or none")
    return low, high


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
        names = self.names if len(self.names) <= 8 else self.names[:6] + ["..."]
        return f"{len(self.fields)} {sep}-separated fields ({', '.join(names)})"


@dataclasses.dataclass(frozen=True)
class RowRule:
    """A cross-field rule, stated twice: once vectorised, once for a single line.

    Attributes:
      table_ok: parsed ``pyarrow.Table`` -> True when every row obeys the rule.
      line_problem: the split string values of one line -> None, or what is wrong.
    """

    table_ok: Callable[..., bool]
    line_problem: Callable[[Sequence[str]], Optional[str]]


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


def read_table(path: str, spec: TableSpec, rules: Sequence[RowRule] = ()):
    """Parses and validates a delimited file.

    Args:
      path: the file.
      spec: its layout.
      rules: cross-field rules every row must obey.
    Returns:
      a ``pyarrow.Table`` with R rows and one column per field: int64 (``int``), float64
      (``float``), timestamp[ms, UTC] (``iso_ms``, see :func:`to_numpy`) or string.
    Raises:
      DataFormatError: naming the file, the 1-based line and the expected content.
    """
    size = os.path.getsize(path)
    if size == 0:
        what = f"the header line {spec.header!r}" if spec.header else spec.row_description()
        raise DataFormatError(path, f"file is empty (0 bytes); expected {what}", 1)
    if spec.header is not None:
        _check_header(path, spec)

    if len(spec.delimiter) > 1:
        with open(path, "rb") as f:
            source = f.read()
    else:
        source = path  # Arrow reads (and decodes) the file itself, multithreaded
    table, problem = _parse(source, spec, skip_header=spec.header is not None, rules=rules)
    if problem is not None:
        locate_error(path, spec, problem, rules)
    if table.num_rows == 0:
        line = 2 if spec.header is not None else 1
        raise DataFormatError(path, f"no data rows; expected rows of {spec.row_description()}"
                              + (" after the header" if spec.header else ""), line)
    return table


def _parse(source, spec: TableSpec, skip_header: bool, rules: Sequence[RowRule] = ()):
    """Arrow parse of a path or bytes plus all vectorised checks.

    Returns:
      (table, None) on success, (None, reason) when anything is wrong.
    """
    multi = len(spec.delimiter) > 1
    if multi:
        # Arrow splits on one character only: rewrite the delimiter to U+001F, unless that
        # character already occurs (it would then split a field).
        if _UNIT_SEP.encode() in source:
            return None, "the file contains the control character U+001F"
        source = source.replace(spec.delimiter.encode(spec.encoding), _UNIT_SEP.encode())
    if isinstance(source, bytes):
        source = pa.BufferReader(source)
    types = {INT: pa.int64(), FLOAT: pa.float64(), ISO_MS: pa.timestamp("ms", tz="UTC"),
             STR: pa.string()}
    try:
        table = pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(column_names=spec.names,
                                           skip_rows=1 if skip_header else 0,
                                           encoding=spec.encoding),
            parse_options=pacsv.ParseOptions(
                delimiter=_UNIT_SEP if multi else spec.delimiter, quote_char=False,
                double_quote=False, escape_char=False, newlines_in_values=False,
                ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                column_types={f.name: types[f.kind] for f in spec.fields},
                # No null markers: an empty or 'NA' id must be an error, not a null.
                null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as e:
        return None, str(e)
    if table.num_rows == 0:
        return table, None
    problem = _vectorised_problem(table, spec)
    if problem is None and not all(rule.table_ok(table) for rule in rules):
        problem = "a cross-field rule is violated"
    return (None, problem) if problem is not None else (table, None)


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
    """Arrow-side check of ``choices`` / ``pattern`` / ``bounds`` rules; a description of
    the failure."""
    for f in spec.fields:
        if f.bounds is not None:
            if not f.in_bounds(table.column(f.name).to_numpy()).all():
                return f"column {f.name!r} holds a value that is not {f.describe()}"
            continue
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


LOCATE_CHUNK_BYTES = 4 << 20


def locate_error(path: str, spec: TableSpec, reason: str,
                 rules: Sequence[RowRule] = ()) -> None:
    """Finds the first bad line of ``path`` and raises DataFormatError naming it.

    Called when the fast path failed (``reason`` is its message). The file is re-parsed
    with Arrow in ~4 MB chunks cut at line ends, counting newlines to know each chunk's
    first line; only the first failing chunk is scanned line by line in Python (a full
    Python scan of the 33M-line YooChoose file would take minutes). Blank lines are skipped
    as Arrow skips them. If no line is found at fault, the error carries ``reason``.
    """
    log.info("%s: fast parse failed (%s); locating the first bad line", path, reason)
    with open(path, "rb") as f:
        lines_before = 0
        if spec.header is not None:
            f.readline()
            lines_before = 1
        while True:
            chunk = f.read(LOCATE_CHUNK_BYTES)
            if not chunk:
                break
            if not chunk.endswith(b"\n"):
                chunk += f.readline()  # complete the last line of the chunk
            if chunk.strip(b"\r\n"):
                _, problem = _parse(chunk, spec, skip_header=False, rules=rules)
                if problem is not None:
                    _scan_lines(path, spec, chunk, lines_before, rules)
            lines_before += chunk.count(b"\n")
    raise DataFormatError(path, f"could not be parsed ({reason}); no single line was found "
                          "at fault")


def _scan_lines(path: str, spec: TableSpec, chunk: bytes, lines_before: int,
                rules: Sequence[RowRule]) -> None:
    """Checks each line of ``chunk`` (whose first line is ``lines_before + 1``); raises at
    the first bad one, returns if none is bad."""
    n = len(spec.fields)
    multi = len(spec.delimiter) > 1
    for lineno, raw in enumerate(chunk.split(b"\n"), start=lines_before + 1):
        try:
            text = raw.decode(spec.encoding)
        except UnicodeDecodeError as e:
            raise DataFormatError(path, f"bytes {e.start}-{e.end} are not valid "
                                  f"{spec.encoding} ({e.reason})", lineno) from None
        text = text.rstrip("\r")
        if not text:
            continue
        if multi and _UNIT_SEP in text:
            raise DataFormatError(path, "unexpected control character U+001F", lineno)
        values = text.split(spec.delimiter)
        if len(values) != n:
            hint = " (the line looks truncated or is missing fields)" if len(values) < n else ""
            raise DataFormatError(path, f"expected {spec.row_description()}, got "
                                  f"{len(values)} field(s){hint}: {_clip(text)!r}", lineno)
        for i, (fld, value) in enumerate(zip(spec.fields, values)):
            expected = fld.problem(value)
            if expected is not None:
                raise DataFormatError(path, f"field {i + 1} ({fld.name}): expected "
                                      f"{expected}, got {_clip(value)!r}", lineno)
        for rule in rules:
            msg = rule.line_problem(values)
            if msg is not None:
                raise DataFormatError(path, msg, lineno)


def _clip(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[:n] + "..."


def to_numpy(table, name: str) -> np.ndarray:
    """One column as numpy: [R] int64 / float64; ``iso_ms`` columns as int64 milliseconds;
    ``str`` columns as a numpy unicode array (only use on small or low-cardinality data)."""
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
    codes = pc.index_in(table.column(fld.name),
                        value_set=pa.array(list(fld.choices), pa.string()))
    return codes.to_numpy().astype(np.int8)


def is_empty(table, name: str) -> np.ndarray:
    """[R] bool: the string column's value is the empty string."""
    return pc.equal(pc.utf8_length(table.column(name)), 0).to_numpy()


def unique_with_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted uniques [K], inverse [R], counts [K]) — pandas' ``groupby(...).size()``."""
    uniques, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return uniques, inverse.reshape(-1), counts
