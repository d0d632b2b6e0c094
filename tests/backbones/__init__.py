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


# ---- float64 NumPy building blocks for independent references of the PEFT variants ----


def np_layer_norm(x, p, eps):
    """LayerNorm over the last axis with our ``{scale, bias}`` params."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_dense(x, p, alpha=1.0):
    """``x @ kernel + bias`` plus the LoRA term ``(alpha / r) (x A) B`` when the params have it."""
    y = x @ p["kernel"]
    if "bias" in p:
        y = y + p["bias"]
    if "lora_a" in p:
        y = y + (alpha / p["lora_a"].shape[1]) * (x @ p["lora_a"]) @ p["lora_b"]
    return y


def np_gelu(x):
    """Exact (erf) GELU."""
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def np_adapter(x, p):
    """Houlsby adapter ``x + up(relu(down(x)))``."""
    return x + np_dense(np.maximum(np_dense(x, p["down"]), 0.0), p["up"])


def np_attention(x, lp, num_heads, alpha, mask=None):
    """Multi-head self-attention with our ``query/key/value/attn_out`` params; x ``[B, T, D]``."""
    b, t, d = x.shape
    dh = d // num_heads
    split = lambda y: y.reshape(b, t, num_heads, dh).transpose(0, 2, 1, 3)
    q, k, v = (split(np_dense(x, lp[n], alpha)) for n in ("query", "key", "value"))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
    if mask is not None:
        s = s + np.where(mask[:, None, None, :] > 0, 0.0, -1e30)
    a = np.exp(s - s.max(-1, keepdims=True))
    a = (a / a.sum(-1, keepdims=True)) @ v
    return np_dense(a.transpose(0, 2, 1, 3).reshape(b, t, d), lp["attn_out"], alpha)


def to_float64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)
