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


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (binary units, for tables)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


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


def build_once(path: str, is_complete, build, name: str = "cache") -> None:
    """Makes sure the derived artefact at ``path`` exists, built by one process only.

    In a single process: ``build()`` runs when ``is_complete()`` is false. With several JAX
    processes (multi-host), process 0 builds while the others wait at a barrier, so N hosts
    never pretrain the same decoder N times or race on one directory; after the barrier every
    process finds it complete (on a shared filesystem) and loads it. ``build`` must write
    atomically (:func:`atomic_directory`).

    Raises:
      FileNotFoundError: after the barrier, a process other than 0 does not see the
        artefact: the cache directory is not on a filesystem that every host shares (set it
        to one, e.g. ``$JAXREC_DATA_DIR``).
    """
    import jax
    if jax.process_count() == 1:
        if not is_complete():
            build()
        return
    from jax.experimental import multihost_utils
    if jax.process_index() == 0 and not is_complete():
        build()
    multihost_utils.sync_global_devices(f"jaxrec build_once {name} {os.path.basename(path)}")
    if not is_complete():
        raise FileNotFoundError(f"{path}: process {jax.process_index()} does not see the {name} "
                                "that process 0 built; put the cache on a filesystem every host "
                                "shares (JAXREC_DATA_DIR or the config's cache_dir)")
