"""The configs of every method, shipped inside the package (``jaxrec/configs/<name>.py``).

Each file defines ``get_config(arg)`` (``arg``: comma-separated ``key=value`` pairs and bare
flags, e.g. ``dataset=retailrocket,encoder=sasrec,smoke``). ``--config`` of ``jaxrec-train`` /
``python -m jaxrec.main`` takes, before the optional ``:arg``:

* a registered name: ``sqn``, ``iisan``, ... (:func:`names`), e.g. ``--config=sqn:smoke``;
* a file path, e.g. ``--config=my_configs/sqn_variant.py:smoke``;
* ``configs/<name>.py``, the form older commands use: when no such file exists relative to
  the current directory it means the packaged config of that name, so the commands in the
  README work from any directory and from an installed wheel.
"""

from __future__ import annotations

import importlib.resources
import os
import re

_NAME = re.compile(r"^(?:.*/)?configs/(\w+)\.py$|^(\w+)(?:\.py)?$")


def names() -> list[str]:
    """The registered config names (the files of this package)."""
    root = importlib.resources.files(__name__)
    return sorted(p.name[:-3] for p in root.iterdir()
                  if p.name.endswith(".py") and not p.name.startswith("_"))


def path(name: str) -> str:
    """The file of the packaged config ``name``."""
    if name not in names():
        raise FileNotFoundError(f"no config named {name!r}; registered: {', '.join(names())}")
    return os.fspath(importlib.resources.files(__name__) / f"{name}.py")


def resolve(spec: str) -> str:
    """A config file for ``spec`` (a path, a registered name or ``configs/<name>.py``; see
    the module docstring). An existing file always wins; an unknown name is returned as it is,
    for the loader to report as a missing file."""
    if os.path.isfile(spec):
        return spec
    m = _NAME.match(spec)
    name = m and (m.group(1) or m.group(2))
    if name and name in names():
        return path(name)
    return spec


def split_spec(value: str) -> tuple[str, str]:
    """``'sqn:smoke'`` -> (resolved file, 'smoke'); the argument after the first ':'."""
    file, sep, arg = value.partition(":")
    return resolve(file), arg
