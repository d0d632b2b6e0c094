"""A decoder LLM that a method keeps frozen: loaded, checked against its tokenizer, stored in
a chosen dtype; and the tokenizer's special ids.

PERSOMA (Hebert et al., arXiv 2408.00960) and LEA (Wang et al., SIGIR 2024, arXiv 2403.16948)
put a frozen LLM under trainable pieces (soft prompts, item tokens, LoRA). The decoder is the
one :func:`jaxrec.backbones.decoder_lm.get_decoder` gives for a ``config.decoder`` section: a
jaxrec-pretrained tiny Llama, or a Hugging Face Llama / Mistral / Gemma directory (weights
through :func:`jaxrec.backbones.llama.load_llama`, text through the directory's own tokenizer).

Special ids are never assumed: a Llama-3 tokenizer has ``<|begin_of_text|>`` = 128000 and no
pad token, Gemma's has pad 0, eos 1, bos 2, jaxrec's own tokenizer pad 0, bos 1, eos 2.
:func:`special_ids` reads them from the tokenizer; a tokenizer without a pad token pads with
its eos id (every padded slot is under a zero mask, so any id would do, and eos is always in
the vocabulary).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.backbones import decoder_lm

DTYPES = ("float32", "bfloat16", "float16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
__all__ = ["SpecialIds", "special_ids", "check_vocabulary", "load", "cast_params", "DTYPES"]


class SpecialIds(NamedTuple):
    """The tokenizer's ``bos``, ``eos`` and ``pad`` ids (``pad`` = ``eos`` when it has none)."""

    bos: int
    eos: int
    pad: int


def _source(dec) -> str:
    return str(dec.info.get("source", "")) if dec is not None and getattr(dec, "info", None) else ""


def tokenizer_file(directory: str) -> str:
    """The file of ``directory`` that holds its tokenizer's vocabulary (for error messages)."""
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return os.path.join(directory, "tokenizer.json")


def special_ids(tokenizer, source: str = "") -> SpecialIds:
    """``SpecialIds(bos, eos, pad)`` of a decoder tokenizer (``bos_id``, ``eos_id``, ``pad_id``).

    Raises:
      ValueError: the tokenizer has no bos or no eos token (a prompt needs its start token and
        generation its stop token), naming ``source``.
    """
    bos, eos, pad = (getattr(tokenizer, f"{k}_id", None) for k in ("bos", "eos", "pad"))
    for name, v in (("beginning-of-sequence (bos)", bos), ("end-of-sequence (eos)", eos)):
        if v is None:
            raise ValueError(f"{source or 'decoder tokenizer'}: the tokenizer has no {name} token")
    return SpecialIds(int(bos), int(eos), int(eos if pad is None else pad))


def check_vocabulary(dec: decoder_lm.DecoderLM) -> None:
    """Raises ValueError when the tokenizer's ids do not fit the decoder's embedding table
    (``vocab_size`` of its config), naming the tokenizer file and config.json."""
    v, n = int(dec.config.vocab_size), int(dec.tokenizer.vocab_size)
    src = _source(dec)
    ids = special_ids(dec.tokenizer, src)
    if n > v or max(ids) >= v:
        where = tokenizer_file(src) if src and os.path.isdir(src) else (src or "decoder tokenizer")
        raise ValueError(f"{where}: the tokenizer has {n} ids (bos {ids.bos}, eos {ids.eos}, pad {ids.pad}) "
                         f"but the decoder's vocab_size is {v} (config.json of {src or 'the decoder'}): "
                         f"the tokenizer does not belong to this model")


def cast_params(params: dict, dtype: str) -> dict:
    """Every floating leaf of ``params`` as ``dtype`` (one of :data:`DTYPES`)."""
    if dtype not in DTYPES:
        raise ValueError(f"config.decoder.frozen_dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    dt = jnp.dtype(dtype)

    def cast(x):
        if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == dt:
            return x
        return jnp.asarray(x, dt) if isinstance(x, jax.Array) else np.asarray(x).astype(dt)

    return jax.tree.map(cast, params)


def load(section, texts: Sequence[str]) -> decoder_lm.DecoderLM:
    """The decoder of a ``config.decoder`` section, checked (:func:`check_vocabulary`) and with
    its weights stored as ``section.frozen_dtype`` (default float32; the LLM methods' configs
    set bfloat16: halves the memory of a frozen 1B–8B model, while every matmul still runs in
    the model's computation dtype).

    Args:
      section: ``config.decoder`` (:func:`jaxrec.backbones.decoder_lm.default_section` +
        ``frozen_dtype``); ``checkpoint`` names a Hugging Face directory or a saved decoder.
      texts: the corpus to pretrain on when ``checkpoint`` is empty (cached).
    """
    dec = decoder_lm.get_decoder(section, texts)
    check_vocabulary(dec)
    dtype = str(section.get("frozen_dtype", "float32") or "float32")
    return decoder_lm.DecoderLM(dec.config, cast_params(dec.params, dtype), dec.tokenizer, dec.info)
