"""Transformer pieces shared by the BERT, ViT and Llama-family backbones.

Papers:
  * Vaswani et al., "Attention Is All You Need", NeurIPS 2017, §3.2 (scaled dot-product and
    multi-head attention), with grouped-query attention (Ainslie et al., GQA, EMNLP 2023) as
    the general case: H query heads share K key/value heads, H = K * G.
  * Hu et al., "LoRA", ICLR 2022, §4.1, and Houlsby et al., "Parameter-Efficient Transfer
    Learning for NLP", ICML 2019, §2.1: the PEFT baselines of IISAN (Fu et al., SIGIR 2024;
    spec ``iisan.md`` §1.12) and the LoRA regime of PERSOMA / GazeReward (``llm.md`` §1.3),
    built into every backbone through the same config fields.

What lives here, and what each backbone keeps for itself:

* :data:`ACTIVATIONS` — HF ``hidden_act`` names -> functions (all three backbones).
* :func:`projection` — a dense layer that carries LoRA iff the config targets its name.
* :func:`houlsby` — a Houlsby adapter after a sublayer output when ``adapter_size > 0``.
* :func:`grouped_attention` / :func:`multi_head_attention` — the masked softmax attention core
  (Llama adds RoPE and its causal/sliding-window mask around it; BERT and ViT call the
  ``[B, T, D]`` form).
* :data:`ENCODER_PROJECTIONS` — the projection names of a BERT / ViT block (LoRA targets).
* :func:`check_peft_fields`, :func:`normalize_dtype`, :class:`EncoderConfigChecks` — config
  validation (the mixin serves the encoder configs BERT and ViT; Llama's config has GQA /
  head_dim rules of its own and calls only :func:`check_peft_fields`).
* :data:`PEFT_KEEP_PATTERNS` — the parameter paths that no pretrained checkpoint holds, which
  every loader keeps from a fresh ``init``.

The PEFT fields every backbone config has (read by :func:`projection` and :func:`houlsby`):
``lora_rank``, ``lora_alpha``, ``lora_targets``, ``lora_dropout``, ``adapter_size``,
``adapter_activation``, plus ``compute_dtype`` (a ``jnp.dtype``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.peft.adapters import HoulsbyAdapter
from jaxrec.peft.lora import LoRADense

Array = Any

# HF `hidden_act` strings -> functions. "gelu" is the exact erf form (torch.nn.functional.gelu);
# the tanh approximation goes by several HF names, so the distinction matters for parity.
ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": jnp.tanh,
}

# Names of every dense projection of an encoder block (BERT, ViT); LoRA can target any of them.
# (Llama keeps HF's own names, q_proj ... down_proj, in jaxrec.backbones.llama.PROJECTIONS.)
ENCODER_PROJECTIONS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")

# Fresh (not pretrained) parameters that loaders keep from `init` instead of reading them:
# LoRADense's low-rank factors and the two Houlsby adapters of a block. All three backbones
# use these exact names (BERT/ViT `layer_i/query/lora_a`, `layer_i/adapter_attn/down/kernel`;
# Llama `layers_i/self_attn/q_proj/lora_a`, `layers_i/adapter_ffn/up/bias`), so anything
# else that a checkpoint lacks is still reported as missing.
PEFT_KEEP_PATTERNS = (r"(^|/)lora_[ab]$", r"(^|/)adapter_(attn|ffn)(/|$)")

_DTYPES = ("float32", "bfloat16", "float16")


def normalize_dtype(dtype: Any, field: str = "dtype") -> str:
    """Returns the canonical name ("float32", "bfloat16", "float16") of a dtype-like value."""
    try:
        name = jnp.dtype(dtype).name
    except TypeError as e:
        raise ValueError(f"{field}: {dtype!r} is not a dtype; use one of {_DTYPES}") from e
    if name not in _DTYPES:
        raise ValueError(f"{field}: {name!r} is not supported; use one of {_DTYPES}")
    return name


def check_peft_fields(cfg: Any, valid_targets: Sequence[str]) -> None:
    """Validates the shared PEFT fields (lora_rank, adapter_size, lora_targets) of any config."""
    name = type(cfg).__name__
    if cfg.lora_rank < 0:
        raise ValueError(f"{name}.lora_rank must be >= 0, got {cfg.lora_rank}")
    if cfg.adapter_size < 0:
        raise ValueError(f"{name}.adapter_size must be >= 0, got {cfg.adapter_size}")
    if isinstance(cfg.lora_targets, str):
        raise ValueError(f"{name}.lora_targets must be a tuple of names, got the string {cfg.lora_targets!r}")
    bad = [t for t in cfg.lora_targets if t not in valid_targets]
    if bad:
        raise ValueError(f"{name}.lora_targets has unknown projection names {bad}; valid: {list(valid_targets)}")


class EncoderConfigChecks:
    """Validation, derived values and ``config.json`` fields shared by the encoder configs (BERT, ViT).

    The host class is a frozen dataclass with ``dtype``, ``hidden_size``, ``num_heads``,
    ``hidden_act`` and the PEFT fields (``lora_*``, ``adapter_size``).
    """

    def check_common(self) -> None:
        """Normalises ``dtype`` / ``lora_targets`` and checks the shared fields."""
        name = type(self).__name__
        # PEFT fields first: a string `lora_targets` must be named as such, before tuple()
        # would split it into single letters.
        check_peft_fields(self, ENCODER_PROJECTIONS)
        object.__setattr__(self, "dtype", normalize_dtype(self.dtype, f"{name}.dtype"))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"{name}.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"{name}.hidden_act {self.hidden_act!r} unknown; valid: {sorted(ACTIVATIONS)}")

    @property
    def compute_dtype(self):
        """The computation dtype as a ``jnp.dtype`` (activations; parameters stay float32)."""
        return jnp.dtype(self.dtype)

    @staticmethod
    def encoder_fields_from_hf(hf_config: Mapping[str, Any], dropout: float, required: Sequence[str] = ()) -> dict:
        """The fields BERT and ViT read alike from a HF ``config.json`` dict, under our names.

        Args:
          hf_config: the parsed ``config.json``.
          dropout: default of ``hidden_dropout_prob`` / ``attention_probs_dropout_prob`` when
            absent (BERT 0.1, ViT 0.0, as transformers' config classes).
          required: further keys that must be present (e.g. ``vocab_size``).

        Returns:
          ``{hidden_size, num_layers, num_heads, intermediate_size, layer_norm_eps, hidden_act,
          hidden_dropout, attention_dropout}``.

        Raises:
          ValueError: naming every required key that ``config.json`` lacks.
        """
        keys = tuple(required) + ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        absent = [k for k in keys if k not in hf_config]
        if absent:
            raise ValueError(f"config.json lacks fields {absent}")
        return dict(
            hidden_size=hf_config["hidden_size"],
            num_layers=hf_config["num_hidden_layers"],
            num_heads=hf_config["num_attention_heads"],
            intermediate_size=hf_config["intermediate_size"],
            layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
            hidden_act=hf_config.get("hidden_act", "gelu"),
            hidden_dropout=hf_config.get("hidden_dropout_prob", dropout),
            attention_dropout=hf_config.get("attention_probs_dropout_prob", dropout),
        )


def projection(
    cfg: Any, name: str, features: int, *, use_bias: bool = True,
    init_std: float = 0.02, param_dtype: Any = jnp.float32,
) -> LoRADense:
    """A dense projection named ``name``, with LoRA rank ``cfg.lora_rank`` iff ``name`` is targeted.

    Call it inside a compact ``__call__``; the result maps ``[..., in] -> [..., features]``
    (``LoRADense(x, deterministic)``). Untargeted projections are plain dense layers with the
    same parameter names as ``nn.Dense``, so checkpoints load into them unchanged.
    """
    targeted = name in cfg.lora_targets
    return LoRADense(
        features=features,
        use_bias=use_bias,
        rank=cfg.lora_rank if targeted else 0,
        alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout if targeted else 0.0,
        dtype=cfg.compute_dtype,
        param_dtype=param_dtype,
        kernel_init=nn.initializers.normal(init_std),
        name=name,
    )


def houlsby(cfg: Any, name: str, x: Array, param_dtype: Any = jnp.float32) -> Array:
    """``x [..., D]`` through a Houlsby adapter named ``name`` when ``cfg.adapter_size > 0``, else ``x``.

    Called on a sublayer's output after its output projection and before the residual add
    (Houlsby et al. 2019 §2.1, Fig. 2; IISAN spec §1.12), inside a compact ``__call__``; the
    names used are ``adapter_attn`` and ``adapter_ffn`` (see :data:`PEFT_KEEP_PATTERNS`).
    """
    if cfg.adapter_size <= 0:
        return x
    return HoulsbyAdapter(cfg.adapter_size, cfg.adapter_activation, dtype=cfg.compute_dtype,
                          param_dtype=param_dtype, name=name)(x)


def grouped_attention(
    q: Array, k: Array, v: Array, keep: Array | None,
    dropout: nn.Dropout | None = None, deterministic: bool = True,
) -> Array:
    """Scaled dot-product attention with K key/value heads shared by G query heads each.

    Query head ``n = kv_head * G + group``, the order in which HF's ``repeat(key, G, axis=2)``
    pairs them, without materialising repeated keys/values.

    Args:
      q: ``[B, T, K, G, hd]`` queries.
      k, v: ``[B, S, K, hd]`` keys and values.
      keep: bool, broadcastable to ``[B, T, S]`` (``[B, 1, S]`` for a padding mask,
        ``[B, T, S]`` for causal / sliding-window masks); True = query may see key. None: all.
      dropout: applied to the attention probabilities when ``deterministic`` is False.

    Returns:
      ``[B, T, K, G, hd]`` in v's dtype.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    # Logits and softmax in float32 even for bf16 activations: the row max-subtraction and the
    # exp-sum lose most of their precision in bf16's 8-bit mantissa.
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    if keep is not None:
        # finfo.min rather than -inf: a query with no visible key (a fully padded row) then
        # attends uniformly, exactly as HF's additive finfo.min bias does, instead of giving NaN.
        scores = jnp.where(keep[:, None, None].astype(bool), scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if dropout is not None:
        probs = dropout(probs, deterministic=deterministic)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v)


def multi_head_attention(
    q: Array, k: Array, v: Array, mask: Array | None, num_heads: int,
    dropout: nn.Dropout | None = None, deterministic: bool = True,
) -> Array:
    """Multi-head attention on projected ``[B, T, D]`` inputs (Vaswani et al. 2017, §3.2.2).

    Args:
      q, k, v: ``[B, T, D]`` projected queries/keys/values (D = H * Dh).
      mask: ``[B, T]`` with 1 for real key tokens and 0 for padding, or None.
      num_heads: H.
      dropout: applied to the attention probabilities when ``deterministic`` is False.

    Returns:
      ``[B, T, D]`` in v's dtype.
    """
    b, t, d = q.shape
    dh = d // num_heads
    keep = None if mask is None else mask[:, None, :]
    out = grouped_attention(
        q.reshape(b, t, num_heads, 1, dh),
        k.reshape(b, k.shape[1], num_heads, dh),
        v.reshape(b, v.shape[1], num_heads, dh),
        keep, dropout, deterministic,
    )
    return out.reshape(b, t, d)
