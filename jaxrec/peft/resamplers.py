"""History resamplers: item embeddings of a user's history -> soft-prompt tokens for a decoder.

PERSOMA (Hebert et al., "PERSOMA: PERsonalized SOft ProMpt Adapter Architecture for
Personalized Language Prompting", arXiv 2408.00960, §3; spec ``llm.md`` §1.2) maps the frozen
sentence-encoder embeddings of a user's ``n`` history items, ``H'_u = [e_1..e_n]`` with
``e_i in R^{d_e}``, to ``k`` soft tokens ``P_u in R^{k x d_llm}`` placed before the task prompt.
The three adapter families are from the paper [2nd]; every shape here is [inferred] (spec
§1.2), so widths, depths and ``k`` are constructor fields:

* :class:`MLPResampler` — a per-item MLP ``d_e -> h -> d_llm`` with GELU; ``k = n``.
* :class:`TransformerResampler` — ``L`` pre-LN encoder layers over the items plus a recency
  embedding, then a linear map to ``d_llm``; ``k = n``.
* :class:`PerceiverResampler` — Flamingo's resampler (Alayrac et al., NeurIPS 2022, §2.1 and
  App. A.1.1): ``m`` learned latents cross-attend to ``concat(items, latents)``,
  ``(cross-attn -> FFN) x L``, then a linear map to ``d_llm``; ``k = m`` whatever ``n`` is, so
  the decoder's input length (and cost) does not grow with the history.
* :class:`PooledResampler` — the UEM-style baseline [inferred] (Doddapaneni et al., arXiv
  2401.04858): one user vector (the masked mean of the history) through an MLP into ``k``
  tokens; the history's order and individual items are lost.

Every resampler is ``(e [B, n, d_e], mask [B, n]) -> (tokens [B, k, D], mask [B, k])``; the
returned mask goes straight into :func:`jaxrec.peft.soft_prompt.concat_blocks`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Array = Any

__all__ = ["MLPResampler", "TransformerResampler", "PerceiverResampler", "PooledResampler",
           "RESAMPLERS", "make_resampler", "recency"]


def recency(mask: Array) -> Array:
    """``[B, n]`` mask of a right-padded, time-ordered history -> ``[B, n]`` int32 recency
    (0 = most recent real item, 1 = the one before, ...; padding gets 0)."""
    m = jnp.asarray(mask).astype(jnp.int32)
    length = m.sum(axis=1, keepdims=True)
    return jnp.maximum(length - 1 - jnp.arange(m.shape[1])[None], 0) * m


class MLPResampler(nn.Module):
    """Per-item ``Dense(h) -> GELU -> Dense(D)``: ``e [B, n, d_e] -> ([B, n, D], mask [B, n])``."""

    out_dim: int
    hidden: int = 128

    @nn.compact
    def __call__(self, e: Array, mask: Array, deterministic: bool = True):
        x = nn.gelu(nn.Dense(self.hidden, name="fc1")(e))
        x = nn.Dense(self.out_dim, name="fc2")(x)
        m = jnp.asarray(mask).astype(jnp.int32)
        return x * m[..., None].astype(x.dtype), m


class _FFN(nn.Module):
    width: int
    mult: int = 2
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic=True):
        h = nn.gelu(nn.Dense(self.width * self.mult)(nn.LayerNorm()(x)))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return nn.Dense(self.width)(h)


class _Items(nn.Module):
    """``Dense(h)`` of each item plus a learned recency embedding (0 = the last item, so the
    most recent item looks the same whatever ``n`` is): ``[B, n, d_e] -> [B, n, h]``."""

    hidden: int
    max_recency: int = 512

    @nn.compact
    def __call__(self, e, mask):
        x = nn.Dense(self.hidden, name="proj_in")(e)
        return x + nn.Embed(self.max_recency, self.hidden, name="recency")(
            jnp.minimum(recency(mask), self.max_recency - 1))


class TransformerResampler(nn.Module):
    """``Dense(h)`` + recency embedding, ``L`` pre-LN self-attention layers (padding masked),
    ``Dense(D)``: ``e [B, n, d_e] -> ([B, n, D], mask [B, n])``."""

    out_dim: int
    hidden: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_recency: int = 512
    dropout: float = 0.0

    @nn.compact
    def __call__(self, e: Array, mask: Array, deterministic: bool = True):
        m = jnp.asarray(mask).astype(jnp.int32)
        x = _Items(self.hidden, self.max_recency, name="items")(e, m)
        att = nn.make_attention_mask(m, m)                       # [B, 1, n, n]
        for i in range(self.num_layers):
            h = nn.LayerNorm(name=f"ln_{i}")(x)
            x = x + nn.MultiHeadDotProductAttention(self.num_heads, dropout_rate=self.dropout,
                                                    name=f"attn_{i}")(h, h, mask=att,
                                                                      deterministic=deterministic)
            x = x + _FFN(self.hidden, dropout=self.dropout, name=f"ffn_{i}")(x, deterministic)
        x = nn.Dense(self.out_dim, name="proj_out")(nn.LayerNorm(name="ln_out")(x))
        return x * m[..., None].astype(x.dtype), m


class PerceiverResampler(nn.Module):
    """Flamingo resampler: ``num_latents`` learned queries, ``L`` x (cross-attention over
    ``concat(items, latents)`` -> FFN), ``Dense(D)``: ``e [B, n, d_e] -> ([B, m, D], ones [B, m])``."""

    out_dim: int
    num_latents: int = 8
    hidden: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_recency: int = 512
    dropout: float = 0.0

    @nn.compact
    def __call__(self, e: Array, mask: Array, deterministic: bool = True):
        b = e.shape[0]
        m = jnp.asarray(mask).astype(jnp.int32)
        x = _Items(self.hidden, self.max_recency, name="items")(e, m)
        lat = self.param("latents", nn.initializers.normal(0.02), (self.num_latents, self.hidden))
        lat = jnp.broadcast_to(lat[None], (b,) + lat.shape).astype(x.dtype)
        kv_mask = jnp.concatenate([m, jnp.ones((b, self.num_latents), jnp.int32)], axis=1)
        att = nn.make_attention_mask(jnp.ones((b, self.num_latents), jnp.int32), kv_mask)
        xn = nn.LayerNorm(name="ln_media")(x)
        for i in range(self.num_layers):
            q = nn.LayerNorm(name=f"ln_q_{i}")(lat)
            # Flamingo: keys/values are the media *and* the latents themselves.
            kv = jnp.concatenate([xn, q], axis=1)
            lat = lat + nn.MultiHeadDotProductAttention(self.num_heads, dropout_rate=self.dropout,
                                                        name=f"xattn_{i}")(q, kv, mask=att,
                                                                           deterministic=deterministic)
            lat = lat + _FFN(self.hidden, dropout=self.dropout, name=f"ffn_{i}")(lat, deterministic)
        out = nn.Dense(self.out_dim, name="proj_out")(nn.LayerNorm(name="ln_out")(lat))
        return out, jnp.ones((b, self.num_latents), jnp.int32)


class PooledResampler(nn.Module):
    """UEM-style [inferred]: masked mean of the history -> ``Dense(h) -> GELU -> Dense(k*D)``:
    ``e [B, n, d_e] -> ([B, k, D], ones [B, k])``."""

    out_dim: int
    num_tokens: int = 8
    hidden: int = 128

    @nn.compact
    def __call__(self, e: Array, mask: Array, deterministic: bool = True):
        m = jnp.asarray(mask).astype(e.dtype)
        u = (e * m[..., None]).sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1.0)   # [B, d_e]
        x = nn.gelu(nn.Dense(self.hidden, name="fc1")(u))
        x = nn.Dense(self.num_tokens * self.out_dim, name="fc2")(x)
        b = e.shape[0]
        return x.reshape(b, self.num_tokens, self.out_dim), jnp.ones((b, self.num_tokens), jnp.int32)


RESAMPLERS = {"mlp": MLPResampler, "transformer": TransformerResampler,
              "perceiver": PerceiverResampler, "pooled": PooledResampler}


def make_resampler(kind: str, out_dim: int, *, hidden: int = 128, num_layers: int = 2, num_heads: int = 4,
                   num_tokens: int = 8, dropout: float = 0.0) -> nn.Module:
    """The resampler ``kind`` (:data:`RESAMPLERS`) projecting to ``out_dim``; ``num_tokens`` is
    ``k`` for the Perceiver (its latents) and the pooled baseline (MLP/Transformer have ``k = n``)."""
    if kind not in RESAMPLERS:
        raise ValueError(f"resampler must be one of {', '.join(RESAMPLERS)}, got {kind!r}")
    if kind == "mlp":
        return MLPResampler(out_dim, hidden)
    if kind == "transformer":
        return TransformerResampler(out_dim, hidden, num_layers, num_heads, dropout=dropout)
    if kind == "perceiver":
        return PerceiverResampler(out_dim, num_tokens, hidden, num_layers, num_heads, dropout=dropout)
    return PooledResampler(out_dim, num_tokens, hidden)
