"""The backbone tap cache: frozen towers run once over all items, only the used taps kept.

IISAN (Fu et al., SIGIR 2024, §3.4 "caching"; spec ``iisan.md`` §1.10) trains its side
networks on precomputed hidden states, so the frozen towers never run during training
("IISAN (Cached)": 22 s instead of 443 s per epoch in the abstract). The released code
stores all 13 [CLS] states per item as fp32 ``.pt`` files (79,872 B per item); only 7 are
used, so this cache keeps the tapped ones, in bfloat16 by default (21,504 B per item at
BERT-base + ViT-base: about 0.45 GB for Amazon Scientific).

Layout of a cache directory::

    <name>.npy      [N + 1, K, D] per tap stack (row 0 = padding, all zeros); bfloat16 is
                    stored as its uint16 bit pattern (numpy has no bfloat16), the real dtype
                    is in meta.json
    meta.json       {"fingerprint", "rows", "dtype", "arrays": {name: [shape, stored dtype]}}
    progress.json   {"rows_done"} while building; removed when complete

Building is resumable: rows are written into the memory-mapped ``.npy`` files in batches
and ``progress.json`` is updated after each flushed batch, so a killed build continues
where it stopped; a directory with ``progress.json`` is never loaded as a cache. A
directory whose ``fingerprint`` or ``dtype`` differs is rebuilt from scratch, never
silently reused. IISAN names each cache after a content hash (:func:`hash_tree` over the
item content and the tower weights, see ``jaxrec.methods.iisan.cache_key``), so caches of
other checkpoints, datasets or dtypes live side by side in subdirectories.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

META = "meta.json"
PROGRESS = "progress.json"
DTYPES = ("float32", "float16", "bfloat16")


def _stored(dtype: str) -> np.dtype:
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)


def _real(dtype: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)                  # atomic: a kill never leaves half a JSON file


def hash_tree(h, tree) -> None:
    """Feeds a nested dict of arrays to the hashlib object ``h``: each leaf's path, shape,
    dtype and bytes, in sorted path order (device arrays are copied to the host one at a
    time)."""
    flat = traverse_util.flatten_dict(dict(tree)) if isinstance(tree, dict) else {(): tree}
    for path in sorted(flat, key=lambda p: tuple(map(str, p))):
        a = np.ascontiguousarray(np.asarray(flat[path]))
        h.update(repr(("/".join(map(str, path)), a.shape, a.dtype.str)).encode())
        h.update(a.reshape(-1).view(np.uint8))     # any dtype, bfloat16 included


def _batches(content: dict, start: int, stop: int, batch_size: int):
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        rows = {k: v[lo:hi] for k, v in content.items()}
        if hi - lo < batch_size:           # pad the last batch so `extract` compiles once
            rows = {k: np.concatenate([v, np.zeros((batch_size - (hi - lo),) + v.shape[1:], v.dtype)])
                    for k, v in rows.items()}
        yield lo, hi, rows


def build(extract: Callable[[dict], dict], content: dict, directory: Optional[str] = None,
          dtype: str = "bfloat16", batch_size: int = 128, fingerprint: str = "",
          progress: bool = True, stop_after_rows: Optional[int] = None) -> dict:
    """Runs ``extract`` over every row of ``content`` and returns the taps of all ids.

    Args:
      extract: ``content rows [b, ...] -> {name: [b, K, D]}`` (e.g. a jitted tower pass).
      content: ``{name: [N + 1, ...]}`` raw item content, row 0 = padding (never extracted).
      directory: where to keep the cache (memory-mapped ``.npy``, resumable); None builds
        it in memory.
      dtype: storage dtype, one of :data:`DTYPES`.
      batch_size: rows per ``extract`` call.
      fingerprint: what the taps depend on; a directory built for another one is rebuilt.
      progress: show a tqdm bar.
      stop_after_rows: stop (as if killed) once at least this many rows are written (tests).

    Returns:
      ``{name: [N + 1, K, D]}`` numpy arrays in ``dtype`` (memory-mapped when ``directory``),
      row 0 zeros.
    """
    if dtype not in DTYPES:
        raise ValueError(f"tap cache dtype must be one of {DTYPES}, got {dtype!r}")
    n = len(next(iter(content.values())))
    if n < 1:
        raise ValueError("tap cache: content has no rows")
    if directory is not None:
        done = load(directory, fingerprint, dtype)
        if done is not None:
            return done
    # Output shapes without running the towers.
    example = {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype) for k, v in content.items()}
    shapes = {k: (n,) + tuple(v.shape[1:]) for k, v in jax.eval_shape(extract, example).items()}
    start = 1
    if directory is None:
        arrays = {k: np.zeros(s, _stored(dtype)) for k, s in shapes.items()}
    else:
        os.makedirs(directory, exist_ok=True)
        meta = {"fingerprint": fingerprint, "rows": n, "dtype": dtype,
                "arrays": {k: [list(s), _stored(dtype).name] for k, s in shapes.items()}}
        meta_path, prog_path = os.path.join(directory, META), os.path.join(directory, PROGRESS)
        old = None
        if os.path.exists(meta_path) and os.path.exists(prog_path):
            with open(meta_path) as f:
                old = json.load(f)
        if old == meta:
            with open(prog_path) as f:
                start = max(int(json.load(f)["rows_done"]), 1)
            arrays = {k: np.load(os.path.join(directory, f"{k}.npy"), mmap_mode="r+") for k in shapes}
        else:
            _write_json(prog_path, {"rows_done": 1})
            _write_json(meta_path, meta)
            arrays = {k: np.lib.format.open_memmap(os.path.join(directory, f"{k}.npy"), mode="w+",
                                                   dtype=_stored(dtype), shape=s) for k, s in shapes.items()}
            for a in arrays.values():
                a[0] = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n - 1, initial=start - 1, desc="tap cache", unit="item")
    for lo, hi, rows in _batches(content, start, n, batch_size):
        out = jax.device_get(extract(rows))
        for k, a in arrays.items():
            vals = np.asarray(out[k][: hi - lo], np.float32).astype(_real(dtype))
            a[lo:hi] = vals.view(_stored(dtype))
        if directory is not None:
            for a in arrays.values():
                a.flush()
            _write_json(os.path.join(directory, PROGRESS), {"rows_done": hi})
        if bar:
            bar.update(hi - lo)
        if stop_after_rows is not None and hi >= stop_after_rows and hi < n:
            if bar:
                bar.close()
            return {}
    if bar:
        bar.close()
    if directory is not None:
        os.remove(os.path.join(directory, PROGRESS))
        return load(directory, fingerprint, dtype)
    return {k: a.view(_real(dtype)) for k, a in arrays.items()}


def load(directory: str, fingerprint: str = "", dtype: Optional[str] = None) -> Optional[dict]:
    """A complete cache in ``directory`` built for ``fingerprint`` (and stored in ``dtype``
    when given), memory-mapped; else None."""
    meta_path = os.path.join(directory, META)
    if not os.path.exists(meta_path) or os.path.exists(os.path.join(directory, PROGRESS)):
        return None
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("fingerprint") != fingerprint or (dtype is not None and meta.get("dtype") != dtype):
        return None
    out = {}
    for k, (shape, stored) in meta["arrays"].items():
        path = os.path.join(directory, f"{k}.npy")
        a = np.load(path, mmap_mode="r")
        if list(a.shape) != shape or a.dtype.name != stored:
            raise ValueError(f"{path}: shape {a.shape} / dtype {a.dtype} do not match {META} "
                             f"({shape}, {stored}); delete the directory to rebuild the cache")
        out[k] = a.view(_real(meta["dtype"]))
    return out
