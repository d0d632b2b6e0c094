"""Test-session setup: prepared datasets go to a temporary cache, never ~/.cache."""

import os
import tempfile

import pytest

os.environ.setdefault("JAXREC_DATA_DIR", tempfile.mkdtemp(prefix="jaxrec_test_data_"))

RAW = os.path.join(os.path.dirname(__file__), "data", "raw")


@pytest.fixture(scope="session")
def raw_dir():
    """Directory of the small raw-format fixtures (tests/data/raw/<format>)."""
    return RAW
