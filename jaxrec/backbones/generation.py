"""Greedy and top-k decoding for :class:`jaxrec.backbones.llama.LlamaModel` with a KV cache.

Used by PERSOMA's generation evaluator (Hebert et al., arXiv 2408.00960: the decoder generates
the genre string after a soft prompt) and by anything else that decodes from the Llama-family decoder.
The prompt may be token ids or ``inputs_embeds`` (soft prompts, :mod:`jaxrec.peft.soft_prompt`),
and must be **left-padded** so that every row's next token goes to the same cache slot.

One jitted function per (model, number of new tokens, sampling settings), built once by
:func:`make_generate` and reused: the prompt is written into the cache in one prefill call, then
a ``lax.scan`` feeds one token at a time. :func:`generate_uncached` is the reference (the whole
sequence re-run at every step), and the tests check both give the same tokens.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.backbones.llama import LlamaModel, init_cache

Array = Any

__all__ = ["sample_logits", "make_generate", "generate", "generate_uncached", "check_left_padded"]


def sample_logits(logits: Array, rng: Array, top_k: int = 0, temperature: float = 1.0) -> Array:
    """Next tokens from ``logits [B, V]``: greedy (``top_k == 0``) or top-k sampling.

    Top-k keeps the ``k`` largest logits, divides them by ``temperature`` and samples one.

    Returns:
      ``[B]`` int32 token ids.
    """
    if top_k <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    vals, idx = jax.lax.top_k(logits.astype(jnp.float32), top_k)
    choice = jax.random.categorical(rng, vals / temperature, axis=-1)
    return jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


def check_left_padded(mask: Array) -> None:
    """Raises ValueError when a concrete ``[B, P]`` prompt mask is not left-padded.

    Generation writes every row's new tokens to the same slots, after the last prompt slot, so
    each row's last prompt slot must be real and padding may only precede the real tokens.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"prompt mask must be [B, P], got shape {m.shape}")
    bad = np.nonzero(np.any(np.diff(m.astype(np.int32), axis=1) < 0, axis=1) | (m[:, -1] == 0))[0]
    if bad.size:
        raise ValueError(
            f"prompt rows {bad.tolist()} are not left-padded (padding must precede the real tokens; "
            "use jaxrec.peft.soft_prompt.left_align)"
        )


def _embed_prompt(model: LlamaModel, params, prompt: Array) -> Array:
    """``[B, P]`` ids -> ``[B, P, D]`` embeddings; embeddings pass through."""
    if jnp.issubdtype(prompt.dtype, jnp.integer):
        return model.apply(params, prompt, method=LlamaModel.embed)
    return prompt


@functools.lru_cache(maxsize=None)
def make_generate(model: LlamaModel, max_new_tokens: int, top_k: int = 0, temperature: float = 1.0,
                  eos_id: int | None = None):
    """A jitted ``fn(params, prompt, prompt_mask, rng) -> tokens [B, N]`` (built once per settings).

    Args:
      model: the decoder (hashable: its config is a frozen dataclass).
      max_new_tokens: ``N``.
      top_k: 0 = greedy, else top-k sampling with ``temperature``.
      eos_id: once a row emits it, the row's later tokens are ``eos_id`` too.

    The returned function takes ``params`` (the ``{'params': ...}`` variables), ``prompt``
    ``[B, P]`` ids or ``[B, P, D]`` embeddings, a left-padded ``prompt_mask [B, P]`` and a key
    (split into ``N`` step keys, step ``i`` using key ``i``, as :func:`generate_uncached` does).
    """
    n = int(max_new_tokens)
    if n <= 0:
        raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")

    def fn(params, prompt, prompt_mask, rng):
        emb = _embed_prompt(model, params, prompt)
        b, p = emb.shape[:2]
        key_mask = jnp.concatenate([prompt_mask.astype(jnp.int32), jnp.ones((b, n), jnp.int32)], axis=1)
        rngs = jax.random.split(rng, n)
        out = model.apply(params, inputs_embeds=emb, attention_mask=key_mask,
                          cache=init_cache(model.config, b, p + n))
        tok = sample_logits(out.logits[:, -1], rngs[0], top_k, temperature)
        done = jnp.zeros((b,), bool) if eos_id is None else tok == eos_id

        def step(carry, r):
            cache, tok, done = carry
            e = model.apply(params, tok[:, None], method=LlamaModel.embed)
            o = model.apply(params, inputs_embeds=e, attention_mask=key_mask, cache=cache)
            nxt = sample_logits(o.logits[:, -1], r, top_k, temperature)
            if eos_id is not None:
                nxt = jnp.where(done, eos_id, nxt)
                done = done | (nxt == eos_id)
            return (o.cache, nxt, done), nxt

        _, rest = jax.lax.scan(step, (out.cache, tok, done), rngs[1:])
        return jnp.concatenate([tok[:, None], rest.T], axis=1)

    return jax.jit(fn)


def generate(model: LlamaModel, params, prompt: Array, prompt_mask: Array, rng: Array | None = None, *,
             max_new_tokens: int, top_k: int = 0, temperature: float = 1.0,
             eos_id: int | None = None) -> Array:
    """Decodes ``N`` tokens after a left-padded prompt with a KV cache.

    Args:
      model, params: the decoder and its ``{'params': ...}`` variables.
      prompt: ``[B, P]`` token ids or ``[B, P, D]`` embeddings.
      prompt_mask: ``[B, P]`` left-padded (checked when concrete).
      rng: key for top-k sampling (unused by greedy; default ``key(0)``).

    Returns:
      ``[B, N]`` int32 tokens.
    """
    if not isinstance(prompt_mask, jax.core.Tracer):
        check_left_padded(prompt_mask)
    rng = jax.random.key(0) if rng is None else rng
    return make_generate(model, max_new_tokens, top_k, temperature, eos_id)(
        params, jnp.asarray(prompt), jnp.asarray(prompt_mask), rng)


def generate_uncached(model: LlamaModel, params, prompt: Array, prompt_mask: Array, rng: Array | None = None, *,
                      max_new_tokens: int, top_k: int = 0, temperature: float = 1.0,
                      eos_id: int | None = None) -> Array:
    """Reference decoding without a cache: the whole sequence is re-run for every new token.

    Same arguments, key schedule and result as :func:`generate`; ``O(N)`` forward passes of
    growing length, for tests.
    """
    rng = jax.random.key(0) if rng is None else rng
    rngs = jax.random.split(rng, max_new_tokens)
    emb = _embed_prompt(model, params, jnp.asarray(prompt))
    mask = jnp.asarray(prompt_mask).astype(jnp.int32)
    b = emb.shape[0]
    done = jnp.zeros((b,), bool)
    toks = []
    for i in range(max_new_tokens):
        out = model.apply(params, inputs_embeds=emb, attention_mask=mask)
        tok = sample_logits(out.logits[:, -1], rngs[i], top_k, temperature)
        if eos_id is not None:
            tok = jnp.where(done, eos_id, tok)
            done = done | (tok == eos_id)
        toks.append(tok)
        emb = jnp.concatenate([emb, model.apply(params, tok[:, None], method=LlamaModel.embed)], axis=1)
        mask = jnp.concatenate([mask, jnp.ones((b, 1), jnp.int32)], axis=1)
    return jnp.stack(toks, axis=1)
