"""Fixtures of the trainer tests."""

import pytest

from jaxrec.data import prepare as prep


@pytest.fixture(scope="session")
def tiny():
    """The tiny synthetic dataset, prepared once per session."""
    return prep.load("synthetic", preset="tiny")
