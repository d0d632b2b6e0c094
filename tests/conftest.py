"""Test-session setup: full-precision matmuls, no GPU preallocation, and prepared datasets in a
temporary cache, never ~/.cache.

The directory is created by the first process (pytest itself, or the xdist controller)
and inherited by xdist workers through the environment, so workers share one cache;
concurrent preparation of one dataset is serialised by a file lock in jaxrec.data.prepare.
"""

import atexit
import os
import shutil
import tempfile

# Before JAX is imported anywhere (and inherited by subprocesses, xdist workers and notebook
# kernels through the environment):
# - matmuls and convolutions at full float32 precision: a GPU's default is TF32 (10-bit
#   mantissa), which would put every comparison with a float32 reference out of tolerance;
# - no GPU memory preallocation: each xdist worker, CLI subprocess and notebook kernel would
#   otherwise take 75 % of the device and the second one would fail to start.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

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
