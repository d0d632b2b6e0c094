"""Soft prompts: blocks of embeddings placed before a decoder's token embeddings.

Shared by PERSOMA (resampled history tokens before the instruction; Hebert et al. 2024, spec
``llm.md`` §1) and GazeReward's GazeConcat (``<eye/> f(g_1..g_m) </eye>`` before the text;
Lopez-Cardona et al., ICLR 2025, §3 and spec §2.2). Every function works on
``(embeds [B, n, D], mask [B, n])`` pairs and returns the same, so the result goes straight into
``LlamaModel(...)(inputs_embeds=..., attention_mask=...)``.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp

Array = Any

__all__ = ["concat_blocks", "wrap_block", "left_align"]


def concat_blocks(blocks: Sequence[tuple[Array, Array | None]]) -> tuple[Array, Array]:
    """Concatenates embedding blocks along time, with their masks.

    Args:
      blocks: ``(embeds [B, n_i, D], mask [B, n_i] or None)``; a None mask means all real
        (e.g. a fixed number of soft tokens). A ``[n_i, D]`` block (one learned prompt shared
        by every row) is broadcast over the batch.

    Returns:
      ``(embeds [B, sum n_i, D], mask [B, sum n_i] int32)``.

    Raises:
      ValueError: no blocks, or blocks that disagree on ``B`` or ``D``, or a mis-shaped mask.
    """
    if not blocks:
        raise ValueError("concat_blocks: no blocks")
    batch = max(e.shape[0] for e, _ in blocks if e.ndim == 3) if any(e.ndim == 3 for e, _ in blocks) else 1
    embs, masks = [], []
    d = blocks[0][0].shape[-1]
    for i, (e, m) in enumerate(blocks):
        if e.ndim == 2:
            e = jnp.broadcast_to(e[None], (batch,) + e.shape)
        if e.ndim != 3 or e.shape[0] != batch or e.shape[-1] != d:
            raise ValueError(f"concat_blocks: block {i} has shape {e.shape}, expected [{batch}, n, {d}]")
        if m is None:
            m = jnp.ones(e.shape[:2], jnp.int32)
        elif m.shape != e.shape[:2]:
            raise ValueError(f"concat_blocks: mask {i} has shape {m.shape}, expected {e.shape[:2]}")
        embs.append(e)
        masks.append(jnp.asarray(m).astype(jnp.int32))
    return jnp.concatenate(embs, axis=1), jnp.concatenate(masks, axis=1)


def wrap_block(open_embed: Array, block: Array, block_mask: Array | None, close_embed: Array) -> tuple[Array, Array]:
    """``[open, block_1..block_m, close]``, e.g. GazeConcat's ``<eye/> f(g) </eye>``.

    Args:
      open_embed, close_embed: ``[D]`` embeddings of the delimiter tokens.
      block: ``[B, m, D]``.
      block_mask: ``[B, m]`` or None (all real).

    Returns:
      ``(embeds [B, m + 2, D], mask [B, m + 2])`` with the delimiters always real.
    """
    b = block.shape[0]
    d = block.shape[-1]
    o = jnp.broadcast_to(open_embed.reshape(1, 1, d), (b, 1, d)).astype(block.dtype)
    c = jnp.broadcast_to(close_embed.reshape(1, 1, d), (b, 1, d)).astype(block.dtype)
    return concat_blocks([(o, None), (block, block_mask), (c, None)])


def left_align(embeds: Array, mask: Array) -> tuple[Array, Array]:
    """Moves every row's padding to the front, keeping the real entries in order.

    A prefix followed by right-padded text has padding in the middle; decoding with a KV cache
    (:func:`jaxrec.backbones.generation.generate`) needs it on the left. The decoder's default
    positions count real tokens only, so the outputs at real tokens are unchanged.

    Args:
      embeds: ``[B, T, D]``; mask: ``[B, T]``.

    Returns:
      ``(embeds [B, T, D], mask [B, T])`` permuted per row.
    """
    m = jnp.asarray(mask).astype(jnp.int32)
    # Stable sort on the mask: padding (0) first, real tokens (1) after, each group in order.
    order = jnp.argsort(m, axis=1, stable=True)
    return jnp.take_along_axis(embeds, order[..., None], axis=1), jnp.take_along_axis(m, order, axis=1)
