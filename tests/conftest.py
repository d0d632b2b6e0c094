"""Test-session setup: prepared datasets go to a temporary cache, never ~/.cache.

The directory is created by the first process (pytest itself, or the xdist controller)
and inherited by xdist workers through the environment, so workers share one cache;
concurrent preparation of one dataset is serialised by a file lock in jaxrec.data.prepare.
"""

import atexit
import os
import shutil
import tempfile

import pytest

if "JAXREC_DATA_DIR" not in os.environ:
    _DIR = tempfile.mkdtemp(prefix="jaxrec_test_data_")
    os.environ["JAXREC_DATA_DIR"] = _DIR
    atexit.register(shutil.rmtree, _DIR, ignore_errors=True)

RAW = os.path.join(os.path.dirname(__file__), "data", "raw")


@pytest.fixture(scope="session")
def raw_dir():
    """Directory of the small raw-format fixtures (tests/data/raw/<format>)."""
    return RAW


@pytest.fixture(scope="session")
def tiny():
    """The tiny synthetic dataset (300 sessions, 80 items), prepared once per session."""
    from jaxrec.data import prepare as prep
    return prep.load("synthetic", preset="tiny")
