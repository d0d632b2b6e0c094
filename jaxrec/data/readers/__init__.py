"""Readers for the public raw interaction formats, each returning an :class:`EventLog`.

One module per format; each cites the paper / code whose processing it reproduces:

- ``retailrocket`` (module ``retailrocket``): ``events.csv``; the SQN release's
  ``preprocess_kaggle.py`` (``specs/rl.md`` §1.1).
- ``yoochoose`` (``yoochoose``): ``yoochoose-clicks.dat``, ``yoochoose-buys.dat``; the SQN
  release's ``sample_data.py`` + ``merge_and_sort.py`` (``specs/rl.md`` §1.2).
- ``movielens_100k`` / ``movielens_1m`` (``movielens``): ``u.data`` + ``u.item`` /
  ``ratings.dat`` + ``movies.dat``; GroupLens READMEs, per-user sequences for the
  leave-one-out papers (``specs/intent_pcrec.md`` §2.6).
- ``recbole`` (``recbole``): ``<name>.inter`` (+ ``<name>.item``), RecBole atomic files, e.g.
  the ML-100K copy in the ``recbole`` wheel (``specs/ecosystem.md`` §9).
- ``amazon_iisan`` (``amazon``): IISAN's Amazon 2018 TSVs (+ ``<asin>.jpg`` images);
  ``microlens`` (``microlens``): MicroLens-100K pairs, English titles and covers. Both keep
  each user's last 13 of >= 5 interactions and carry titles / images (``specs/iisan.md``
  §1.13, §2.7; ``docs/datasets.md``).

Every reader takes the raw directory first (``READERS[name](raw_dir, **options)``) and
raises :class:`~jaxrec.data.events.DataFormatError` naming the file, the 1-based line and
what was expected. Parsing is vectorised (pyarrow.csv); a line scan runs only on failure to
locate the bad line (see ``_tabular``).
"""

from __future__ import annotations

import inspect
from typing import Callable

from jaxrec.data.events import DataFormatError, EventLog
from jaxrec.data.readers.amazon import read_amazon_iisan
from jaxrec.data.readers.microlens import read_microlens
from jaxrec.data.readers.movielens import (ML100K_GENRES, read_movielens_1m,
                                           read_movielens_100k)
from jaxrec.data.readers.recbole import read_recbole
from jaxrec.data.readers.retailrocket import read_retailrocket
from jaxrec.data.readers.yoochoose import read_yoochoose, sample_sessions
from jaxrec.data.readers import amazon as _am
from jaxrec.data.readers import microlens as _mlens
from jaxrec.data.readers import movielens as _ml
from jaxrec.data.readers import recbole as _rb
from jaxrec.data.readers import retailrocket as _rr
from jaxrec.data.readers import yoochoose as _yc


class FileList(tuple):
    """A tuple of file names that prints as ``a, b`` (it is interpolated into messages)."""

    def __str__(self) -> str:
        return ", ".join(self)


READERS: dict[str, Callable[..., EventLog]] = {
    "retailrocket": read_retailrocket,
    "yoochoose": read_yoochoose,
    "movielens_100k": read_movielens_100k,
    "movielens_1m": read_movielens_1m,
    "recbole": read_recbole,
    "amazon_iisan": read_amazon_iisan,
    "microlens": read_microlens,
}

EXPECTED_FILES: dict[str, FileList] = {
    "retailrocket": FileList(_rr.FILES),
    "yoochoose": FileList(_yc.FILES),
    "movielens_100k": FileList(_ml.ML100K_FILES),
    "movielens_1m": FileList(_ml.ML1M_FILES),
    "recbole": FileList(_rb.FILES),
    "amazon_iisan": FileList(_am.FILES),
    "microlens": FileList(_mlens.FILES),
}


def check_options(name: str, options) -> None:
    """Raises ValueError naming the accepted options if reader ``name`` does not take one of
    ``options`` (names), instead of the reader call's TypeError."""
    params = list(inspect.signature(READERS[name]).parameters)[1:]  # after raw_dir
    unknown = [k for k in options if k not in params]
    if unknown:
        raise ValueError(f"{name}: unknown reader option(s) {', '.join(map(repr, unknown))}; "
                         f"accepted: {', '.join(params) or 'none'}")


def read(name: str, raw_dir, /, **options) -> EventLog:
    """``READERS[name](raw_dir, **options)`` with errors naming the known readers and
    options."""
    if name not in READERS:
        raise KeyError(f"unknown raw format {name!r}; known: {', '.join(READERS)}")
    check_options(name, options)
    return READERS[name](raw_dir, **options)


__all__ = ["READERS", "EXPECTED_FILES", "FileList", "read", "check_options",
           "read_retailrocket", "read_yoochoose", "read_movielens_100k", "read_movielens_1m",
           "read_recbole", "read_amazon_iisan", "read_microlens", "sample_sessions",
           "ML100K_GENRES", "DataFormatError"]
