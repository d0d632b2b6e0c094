"""Test helpers: turn a transformers Flax model's parameters into a hub-style checkpoint.

The hub checkpoints that jaxrec loads are PyTorch-layout safetensors (``Linear.weight`` is
``[out, in]``, ``Conv2d.weight`` is ``[out, in, kh, kw]``, LayerNorm ``weight``/``bias``,
Embedding ``weight``). transformers' Flax models keep linen layouts, so these helpers write
the inverse conversion; the reference model and our loader then see the same numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import save_file


def flax_to_torch_tensors(params, prefix: str = "") -> dict[str, np.ndarray]:
    """HF Flax param tree -> ``{PyTorch tensor name: PyTorch-layout float32 array}``."""
    out = {}
    for path, value in traverse_util.flatten_dict(params).items():
        value = np.asarray(value, np.float32)
        *head, last = [str(p) for p in path]
        if last == "kernel" and value.ndim == 2:
            name, value = "weight", value.T  # Dense [in, out] -> Linear [out, in]
        elif last == "kernel" and value.ndim == 4:
            name, value = "weight", value.transpose(3, 2, 0, 1)  # Conv HWIO -> OIHW
        elif last in ("scale", "embedding"):
            name = "weight"
        else:
            name = last
        out[prefix + ".".join(head + [name])] = np.ascontiguousarray(value)
    return out


def perturb(params, seed: int = 0, scale: float = 0.1):
    """Adds N(0, scale^2) noise to every leaf, so that zero-initialised biases and unit
    LayerNorm scales carry information (a swapped or skipped tensor then changes outputs)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    noisy = [np.asarray(x) + scale * rng.standard_normal(np.shape(x)).astype(np.float32) for x in leaves]
    return jax.tree_util.tree_unflatten(treedef, noisy)


def write_checkpoint(ckpt_dir, tensors: dict, config: dict, shards: int = 1, extra_files: dict | None = None) -> Path:
    """Writes ``config.json`` and the tensors as one ``model.safetensors`` or as ``shards``
    files named like the hub's (``model-00001-of-00002.safetensors``) plus the index json."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / "config.json").write_text(json.dumps(config))
    names = sorted(tensors)
    if shards == 1:
        save_file({n: tensors[n] for n in names}, str(ckpt_dir / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for s, part in enumerate(np.array_split(np.arange(len(names)), shards)):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            chunk = {names[i]: tensors[names[i]] for i in part}
            save_file(chunk, str(ckpt_dir / fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in chunk})
        index = {"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))}, "weight_map": weight_map}
        (ckpt_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    for fname, content in (extra_files or {}).items():
        (ckpt_dir / fname).write_text(content)
    return ckpt_dir
