"""Small on-disk helpers shared by the caches of derived artefacts (pretrained decoders,
LEA environments, PERSOMA item embeddings): where they live, parameter trees as ``.npz``,
and directories that appear only when complete."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import flax.traverse_util
import numpy as np


def cache_dir(name: str, override: str = "") -> str:
    """``override`` if set, else ``$JAXREC_DATA_DIR/<name>`` (next to the prepared datasets)."""
    if override:
        return str(override)
    from jaxrec.data.prepare import default_data_dir
    return os.path.join(default_data_dir(), name)


def save_tree(path: str, tree: dict) -> None:
    """A nested dict of arrays as one ``.npz`` with '/'-joined keys."""
    flat = {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}
    np.savez(path, **flat)


def load_tree(path: str) -> dict:
    """The nested dict written by :func:`save_tree` (numpy arrays)."""
    with np.load(path) as z:
        return flax.traverse_util.unflatten_dict({tuple(k.split("/")): z[k] for k in z.files})


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yields a temporary directory next to ``path`` to write into; on success it replaces
    ``path`` by a rename, on failure it is removed — a crash never leaves a half-written
    directory that looks finished."""
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".incomplete-", dir=parent)
    try:
        yield tmp
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
