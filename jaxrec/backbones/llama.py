"""Llama-family decoder-only transformers (Llama 2/3/3.1/3.2, Mistral, Gemma, Gemma-2, Qwen2) in flax.linen.

Papers:
  * Touvron et al., "LLaMA: Open and Efficient Foundation Language Models", arXiv 2302.13971,
    §2.2 (pre-normalisation with RMSNorm, SwiGLU FFN, rotary position embeddings); grouped-query
    attention as in Llama 2 (Touvron et al., arXiv 2307.09288, §2.2) and Ainslie et al., GQA,
    EMNLP 2023.
  * Llama Team, "The Llama 3 Herd of Models", arXiv 2407.21783 (RoPE base 500000); the
    frequency-dependent RoPE scaling released with the Llama 3.1 weights
    (``rope_scaling.rope_type = "llama3"``, :func:`rope_inv_freq`); Chen et al., "Extending
    Context Window of Large Language Models via Positional Interpolation", arXiv 2306.15595
    (``"linear"``).
  * Jiang et al., "Mistral 7B", arXiv 2310.06825, §2 (sliding-window attention).
  * Gemma Team, "Gemma: Open Models Based on Gemini Research and Technology",
    arXiv 2403.08295, §2 (GeGLU with tanh-GELU, head_dim independent of the width, embeddings
    scaled by sqrt(width), RMSNorm scale stored as an offset from 1, tied embeddings).
  * Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size",
    arXiv 2408.00118, §2 (local sliding-window and global attention on alternating layers,
    attention and final logit soft-capping, pre- and post-norm around each sublayer,
    ``query_pre_attn_scalar``).
  * Yang et al., "Qwen2 Technical Report", arXiv 2407.10671, §2 (GQA, QKV bias); the Hugging
    Face Qwen2 configuration adds optional sliding-window attention on the upper layers.

Used in jaxrec as the frozen / LoRA-tuned decoder of PERSOMA (Hebert et al., arXiv 2408.00960)
and GazeReward (Lopez-Cardona et al., ICLR 2025, reward models on Llama-3-8B / Mistral-7B), as
LEA's LLM, and as IISAN-Versa's LLM text encoder (Fu et al., arXiv 2411.02992: LLaMA-2/3,
Gemma and Mistral towers read through ``hidden_states``).

Checkpoints are Hugging Face PyTorch-layout safetensors (``model.layers.0.self_attn.q_proj.weight``
...), read without torch through :mod:`jaxrec.backbones.hf` by :func:`load_llama`. The
numerical references in tests are transformers 4.57.6's ``FlaxLlamaForCausalLM`` /
``FlaxMistralForCausalLM`` / ``FlaxGemmaForCausalLM`` and, for what transformers has no Flax
class for (Gemma-2, Qwen2, RoPE scaling, tied Llama heads), a float64 NumPy forward pass.

Loading big models (:func:`load_llama`'s keyword arguments beyond the config overrides):

* ``weights_dtype`` — dtype of the leaves read from the checkpoint (``jnp.bfloat16`` halves the
  memory of a frozen 7-8B model); each tensor is converted as it is read and put on the device
  before the next one, and the parameter template comes from ``jax.eval_shape`` (the pretrained
  weights are never randomly initialised), so the host holds about one tensor at a time.
* ``frozen`` — the pretrained weights will not be trained: ``weights_dtype`` defaults to
  bfloat16. PEFT leaves (LoRA factors, Houlsby adapters) are always initialised in the config's
  ``param_dtype`` (float32). Without either argument everything is float32, as before.
* :func:`abstract_params` gives the parameter tree as ``jax.ShapeDtypeStruct`` leaves from a
  config alone (to compile a 7-8B step without weights); :func:`init_params` random weights in
  the same dtypes.
* LoRA (``lora_rank``), bfloat16 compute (``dtype``), bf16 storage (``weights_dtype``) and
  per-layer rematerialisation (``remat``) compose: ``LoRADense`` casts the bf16 kernel and the
  float32 factors to the compute dtype, so the LoRA gradients come back in float32.

Conventions and where they differ from the HF Flax reference (all documented, all tested):

* **Position ids.** HF Flax's *forward pass* defaults to ``arange(T)`` whatever the mask, so a
  left-padded sequence gets shifted positions; its *generation* path
  (``prepare_inputs_for_generation``) uses ``cumsum(attention_mask) - 1``. We default to the
  generation rule, clipped at 0 (:func:`position_ids_from_mask`): real tokens are numbered
  0, 1, ... from the first real token whatever the padding side, so a left-padded sequence
  produces the same outputs at its real tokens as the unpadded one. The clip only changes
  positions of left-padding tokens, which no real token attends to.
* **Fully masked rows.** Like HF, masked scores are set to the float32 minimum, so a query with
  no visible key (a left-padding token) attends uniformly; outputs at padding positions are
  meaningless but finite and equal to HF's.
* **Sliding window** (Mistral; Gemma-2 and Qwen2 on the layers ``layer_types`` names): key
  ``j`` is visible from query ``i`` iff ``i - W < j <= i``, i.e. ``W`` tokens including the
  current one — the convention of HF PyTorch (``masking_utils.sliding_window_overlay``) and
  flash-attention. HF *Flax* Mistral keeps ``W + 1`` tokens (``triu(k=-W)``), and with
  ``sliding_window=None`` it keeps only the diagonal (a bug); our ``None`` means no window.
* **rope_theta** is honoured (Llama 3 uses 500000); HF Flax hard-codes 10000.
* **tie_word_embeddings** is honoured for every variant; HF Flax Llama/Mistral ignore it.
* **RMSNorm** is computed in float32 and cast to the compute dtype after the scale, as HF
  PyTorch Gemma does (HF Llama casts before the scale); identical in float32.

KV cache: ``LlamaModel(...)(..., cache=KVCache)`` writes the rotated keys/values of the ``T``
new tokens into per-layer ``[B, S, K, hd]`` buffers at ``cache.index`` and attends over all
``S`` slots (``attention_mask`` is then the ``[B, S]`` mask of every slot, future ones
included). The cache is an explicit pytree argument and result, not a mutable flax collection,
so a generation loop is a plain ``lax.scan`` (:mod:`jaxrec.backbones.generation`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.backbones import hf
from jaxrec.backbones.layers import (
    ACTIVATIONS,
    PEFT_KEEP_PATTERNS,
    check_peft_fields,
    grouped_attention,
    houlsby,
    projection,
)
from jaxrec.peft.lora import LoRADense

Array = Any

__all__ = [
    "LlamaConfig",
    "LlamaModel",
    "LlamaOutput",
    "KVCache",
    "init_cache",
    "load_llama",
    "abstract_params",
    "init_params",
    "rope_inv_freq",
    "hf_param_mapping",
    "llama_param_mapping",
    "position_ids_from_mask",
    "PROJECTIONS",
]

# Names of every projection that can carry LoRA (HF names, so LoRA target lists of PEFT
# configs written for HF models carry over unchanged).
ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
PROJECTIONS = ATTN_PROJECTIONS + MLP_PROJECTIONS

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "gemma", "gemma2", "qwen2")
ROPE_SCALING_TYPES = ("linear", "llama3")
LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama-family decoder (defaults: a tiny Llama).

    Attributes:
      vocab_size: ``V``.
      hidden_size: model width ``D``.
      intermediate_size: FFN width ``F`` (gated: gate and up are ``D -> F``).
      num_layers: number of decoder layers ``L``.
      num_heads: query heads ``H``.
      num_kv_heads: key/value heads ``K`` (GQA; ``H % K == 0``). ``None`` means ``H``.
      head_dim: per-head width ``hd``; ``None`` means ``D // H``. Gemma has ``H * hd != D``.
      rms_norm_eps: RMSNorm epsilon.
      rope_theta: RoPE base.
      max_position_embeddings: longest sequence the checkpoint was trained for; inputs longer
        than this raise (RoPE itself has no table limit).
      tie_word_embeddings: logits use the transposed token embedding instead of ``lm_head``.
      attention_bias: q/k/v/o projections have biases (Llama ``attention_bias``).
      mlp_bias: gate/up/down projections have biases (Llama ``mlp_bias``).
      norm_offset: RMSNorm scales by ``1 + weight`` with ``weight`` initialised to 0 (Gemma).
      embed_scale: token embeddings are multiplied by ``sqrt(D)`` (Gemma).
      hidden_act: HF activation name of the gated FFN: ``"silu"`` (Llama/Mistral) or
        ``"gelu_pytorch_tanh"`` (Gemma); ``"gelu"`` is exact GELU.
      sliding_window: window ``W`` (each query sees its last ``W`` tokens including itself) of
        the layers that use one (see ``layer_types``); ``None`` disables it everywhere.
      layer_types: per layer ``"full_attention"`` or ``"sliding_attention"`` (HF's
        ``layer_types``: Gemma-2 alternates, starting with a sliding layer; Qwen2 slides from
        ``max_window_layers`` on); ``None``: every layer uses ``sliding_window`` (Mistral).
      rope_scaling_type: ``None`` (plain RoPE), ``"linear"`` (every frequency divided by
        ``rope_scaling_factor``) or ``"llama3"`` (Llama 3.1/3.2: long wavelengths divided by
        the factor, short ones kept, a smooth blend between; see :func:`rope_inv_freq`).
      rope_scaling_factor: the scaling factor (``rope_scaling.factor``).
      rope_low_freq_factor / rope_high_freq_factor: ``llama3``'s band limits: wavelengths above
        ``original / low`` are scaled, below ``original / high`` kept.
      rope_original_max_position_embeddings: ``llama3``'s pre-extension context length.
      o_proj_bias: whether ``o_proj`` has a bias; ``None`` follows ``attention_bias`` (Qwen2:
        q/k/v biases, no ``o_proj`` bias).
      query_pre_attn_scalar: attention scores are scaled by ``query_pre_attn_scalar ** -0.5``
        (Gemma-2); ``None``: ``head_dim ** -0.5``.
      attn_logit_softcapping: scores become ``c * tanh(scores / c)`` before masking (Gemma-2).
      final_logit_softcapping: logits become ``c * tanh(logits / c)`` (Gemma-2).
      sandwich_norm: Gemma-2's extra norms: ``post_attention_layernorm`` on the attention output
        and ``post_feedforward_layernorm`` on the FFN output before each residual add, with
        ``pre_feedforward_layernorm`` before the FFN (a Llama block's ``post_attention_layernorm``
        is its pre-FFN norm).
      attention_dropout: dropout on attention probabilities (active when not deterministic).
      initializer_range: std of the normal init of all matrices (random init only).
      with_lm_head: build the vocabulary projection; False drops it (and its ``V x D``
        parameters) for encoder-style use, and ``logits`` is then None.
      remat: rematerialise each decoder layer in the backward pass (``nn.remat``), trading
        compute for activation memory.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); softmax and RMSNorm run in float32.
      param_dtype: parameter dtype.
      lora_rank: LoRA rank on the projections named in ``lora_targets`` (0: no LoRA).
      lora_alpha: LoRA alpha (update scaled by ``alpha / rank``).
      lora_targets: which projections get LoRA, from :data:`PROJECTIONS`.
      lora_dropout: dropout on the LoRA branch input.
      adapter_size: Houlsby adapter bottleneck (0: none); adapters ``adapter_attn`` (after
        ``o_proj``) and ``adapter_ffn`` (after ``down_proj``), before each residual add.
      adapter_activation: ``"relu"`` or ``"gelu"``.
      model_type: ``"llama"``, ``"mistral"``, ``"gemma"``, ``"gemma2"`` or ``"qwen2"``
        (informational after parsing).
    """

    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    norm_offset: bool = False
    embed_scale: bool = False
    hidden_act: str = "silu"
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    rope_scaling_type: str | None = None
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int | None = None
    o_proj_bias: bool | None = None
    query_pre_attn_scalar: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    sandwich_norm: bool = False
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    with_lm_head: bool = True
    remat: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    lora_rank: int = 0
    lora_alpha: float = 1.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_dropout: float = 0.0
    adapter_size: int = 0
    adapter_activation: str = "relu"
    model_type: str = "llama"

    def __post_init__(self):
        # Frozen dataclass: fill the derived defaults through object.__setattr__.
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"LlamaConfig.hidden_size ({self.hidden_size}) is not divisible by num_heads "
                    f"({self.num_heads}); set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        # PEFT fields before tuple(): a string lora_targets is reported as such, not as letters.
        check_peft_fields(self, PROJECTIONS)
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"LlamaConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads}) for grouped-query attention"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"LlamaConfig.hidden_act {self.hidden_act!r} is not supported; use one of "
                f"{sorted(ACTIVATIONS)}"
            )
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"LlamaConfig.sliding_window must be None or > 0, got {self.sliding_window}")
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if bad or len(self.layer_types) != self.num_layers:
                raise ValueError(
                    f"LlamaConfig.layer_types must list one of {list(LAYER_TYPES)} per layer "
                    f"({self.num_layers}), got {list(self.layer_types)}"
                )
        if self.rope_scaling_type not in (None,) + ROPE_SCALING_TYPES:
            raise ValueError(
                f"LlamaConfig.rope_scaling_type {self.rope_scaling_type!r} is not supported; use None or one "
                f"of {list(ROPE_SCALING_TYPES)}"
            )
        if self.rope_scaling_type is not None and not self.rope_scaling_factor > 0:
            raise ValueError(f"LlamaConfig.rope_scaling_factor must be > 0, got {self.rope_scaling_factor}")
        if self.rope_scaling_type == "llama3":
            if not (self.rope_original_max_position_embeddings or 0) > 0:
                raise ValueError("LlamaConfig.rope_original_max_position_embeddings must be > 0 for llama3 RoPE "
                                 f"scaling, got {self.rope_original_max_position_embeddings}")
            if not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
                raise ValueError(
                    "llama3 RoPE scaling needs 0 < rope_low_freq_factor < rope_high_freq_factor, got "
                    f"{self.rope_low_freq_factor} and {self.rope_high_freq_factor}"
                )
        for name in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"LlamaConfig.{name} must be None or > 0, got {v}")

    @property
    def compute_dtype(self):
        """The computation dtype as a ``jnp.dtype`` (what :mod:`jaxrec.backbones.layers` reads)."""
        return jnp.dtype(self.dtype)

    @property
    def num_kv_groups(self) -> int:
        """Query heads per key/value head, ``H // K``."""
        return self.num_heads // self.num_kv_heads

    @property
    def attention_scale(self) -> float:
        """The factor on ``q . k``: ``query_pre_attn_scalar ** -0.5`` or ``head_dim ** -0.5``."""
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def out_bias(self) -> bool:
        """Whether ``o_proj`` has a bias."""
        return self.attention_bias if self.o_proj_bias is None else bool(self.o_proj_bias)

    def layer_window(self, i: int) -> int | None:
        """The sliding window of layer ``i`` (None: full causal attention)."""
        if self.layer_types is not None and self.layer_types[i] == "full_attention":
            return None
        return self.sliding_window

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], **overrides: Any) -> "LlamaConfig":
        """Builds a config from a Hugging Face ``config.json`` dict.

        Recognises ``model_type`` ``llama`` (Llama 2, 3, 3.1, 3.2), ``mistral``, ``gemma``,
        ``gemma2`` and ``qwen2`` and applies each family's defaults for absent keys the way
        transformers' config classes do:

        * Gemma / Gemma-2: tied embeddings, ``head_dim`` 256, tanh-GELU unless
          ``hidden_activation`` says otherwise (``hidden_act`` is ignored, as transformers
          does), ``1 + w`` RMSNorm, ``sqrt(D)`` embedding scale.
        * Gemma-2 also: ``query_pre_attn_scalar`` 256, attention / final logit soft-capping 50 / 30
          (a JSON ``null`` disables one), the sandwich norms, ``sliding_window`` 4096 on the
          layers ``layer_types`` names (default: even layers slide, odd layers are global).
        * Mistral: ``sliding_window`` (4096 when absent, ``null`` disables it) on every layer.
        * Qwen2: q/k/v biases without an ``o_proj`` bias; a window only with
          ``use_sliding_window``, then on layers ``>= max_window_layers`` unless ``layer_types``
          lists them.
        * ``rope_scaling``: absent / ``default``, ``linear`` (``factor``) or ``llama3``
          (``factor``, ``low_freq_factor``, ``high_freq_factor``,
          ``original_max_position_embeddings``); other types are refused.

        Args:
          config: the parsed ``config.json``.
          **overrides: any :class:`LlamaConfig` field (dtype, PEFT fields, ``with_lm_head``...).

        Raises:
          ValueError: unknown ``model_type``, missing required keys (all named), an unsupported
            or incomplete ``rope_scaling``, or an override that is not a field.
        """
        model_type = config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"config.json model_type {model_type!r} is not a Llama-family decoder; "
                f"supported: {list(SUPPORTED_MODEL_TYPES)}"
            )
        required = ("num_attention_heads", "hidden_size", "vocab_size", "intermediate_size", "num_hidden_layers")
        absent = [k for k in required if config.get(k) is None]
        if absent:
            raise ValueError(f"{model_type} config.json lacks required field(s) {absent}")

        def opt(key: str, default: Any) -> Any:
            # An absent key takes the family default; an explicit null stays None (disables).
            return config[key] if key in config else default

        num_heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        num_layers = int(config["num_hidden_layers"])
        gemma = model_type in ("gemma", "gemma2")
        head_dim = config.get("head_dim")
        if head_dim is None:
            head_dim = 256 if gemma and "head_dim" not in config else hidden // num_heads
        if gemma:
            # transformers forces tanh-GELU for Gemma unless hidden_activation is set (PR 29402).
            act = config.get("hidden_activation") or "gelu_pytorch_tanh"
        else:
            act = config.get("hidden_act", "silu")

        window, layer_types = None, None
        if model_type == "mistral":
            window = opt("sliding_window", 4096)
        elif model_type == "gemma2":
            window = opt("sliding_window", 4096)
            layer_types = config.get("layer_types") or [
                "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
        elif model_type == "qwen2":
            window = opt("sliding_window", 4096) if config.get("use_sliding_window", False) else None
            first_sliding = int(opt("max_window_layers", 28))
            layer_types = config.get("layer_types") or [
                "sliding_attention" if window is not None and i >= first_sliding else "full_attention"
                for i in range(num_layers)]
        kwargs = dict(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta", 10000.0)),
            max_position_embeddings=int(config.get("max_position_embeddings")
                                        or _DEFAULT_MAX_POSITIONS[model_type]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", gemma)),
            attention_bias=model_type == "qwen2" or bool(config.get("attention_bias", False)),
            o_proj_bias=False if model_type == "qwen2" else None,
            mlp_bias=bool(config.get("mlp_bias", False)),
            norm_offset=gemma,
            embed_scale=gemma,
            hidden_act=act,
            sliding_window=None if window is None else int(window),
            layer_types=None if layer_types is None else tuple(layer_types),
            attention_dropout=float(config.get("attention_dropout", 0.0) or 0.0),
            initializer_range=float(config.get("initializer_range", 0.02)),
            model_type=model_type,
            **_rope_scaling_fields(config.get("rope_scaling")),
        )
        if model_type == "gemma2":
            kwargs.update(
                query_pre_attn_scalar=opt("query_pre_attn_scalar", 256),
                attn_logit_softcapping=opt("attn_logit_softcapping", 50.0),
                final_logit_softcapping=opt("final_logit_softcapping", 30.0),
                sandwich_norm=True,
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise ValueError(f"LlamaConfig has no fields {bad}; valid fields: {sorted(fields)}")
        kwargs.update(overrides)
        return cls(**kwargs)


# transformers' defaults of max_position_embeddings per model_type (used when config.json has none).
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "gemma": 8192, "gemma2": 8192, "qwen2": 32768}

# The rope_scaling keys each supported type needs.
_ROPE_SCALING_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _rope_scaling_fields(rope_scaling: Any) -> dict:
    """:class:`LlamaConfig` fields from ``config.json``'s ``rope_scaling`` (None: plain RoPE).

    Raises:
      ValueError: naming config.json's ``rope_scaling`` field, for a type other than
        ``default`` / ``linear`` / ``llama3`` or a missing key of a supported type.
    """
    if rope_scaling is None:
        return {}
    if not isinstance(rope_scaling, Mapping):
        raise ValueError(f"config.json field 'rope_scaling' must be an object or null, got {rope_scaling!r}")
    # transformers accepts the legacy key "type" for "rope_type".
    kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if kind in (None, "default"):
        return {}
    if kind not in _ROPE_SCALING_KEYS:
        raise ValueError(
            f"config.json field 'rope_scaling' has rope_type {kind!r}, which is not supported "
            f"(supported: default, {', '.join(_ROPE_SCALING_KEYS)}); got rope_scaling={rope_scaling!r}"
        )
    absent = [k for k in _ROPE_SCALING_KEYS[kind] if rope_scaling.get(k) is None]
    if absent:
        raise ValueError(
            f"config.json field 'rope_scaling' of rope_type {kind!r} lacks {absent}; got rope_scaling={rope_scaling!r}"
        )
    out = dict(rope_scaling_type=kind, rope_scaling_factor=float(rope_scaling["factor"]))
    if kind == "llama3":
        out.update(
            rope_low_freq_factor=float(rope_scaling["low_freq_factor"]),
            rope_high_freq_factor=float(rope_scaling["high_freq_factor"]),
            rope_original_max_position_embeddings=int(rope_scaling["original_max_position_embeddings"]),
        )
    return out


def position_ids_from_mask(attention_mask: Array) -> Array:
    """RoPE positions counting real tokens only.

    Args:
      attention_mask: ``[B, T]``, 1 for real tokens (left or right padding).

    Returns:
      ``[B, T]`` int32: ``max(cumsum(mask) - 1, 0)``. Real tokens get 0, 1, 2, ... from the
      first real token; this is HF's generation rule (``prepare_inputs_for_generation``) with
      the ``-1`` of left-padding tokens clipped to 0 (those tokens are invisible to real ones).
    """
    m = jnp.asarray(attention_mask).astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0)


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
    """RoPE inverse frequencies ``[hd / 2]`` (float64, on the host) with the config's scaling.

    Plain: ``theta ** (-2i / hd)``. ``linear``: divided by ``factor``. ``llama3`` (the rule
    Meta published with Llama 3.1): with ``L = rope_original_max_position_embeddings`` and a
    frequency's wavelength ``w = 2 pi / f``, frequencies with ``w < L / high_freq_factor`` are
    kept, those with ``w > L / low_freq_factor`` are divided by ``factor``, and in between
    ``f' = (1 - s) f / factor + s f`` with ``s = (L / w - low) / (high - low)``, which runs from
    the scaled frequency at the low-frequency edge to the unscaled one at the high edge.
    """
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    if cfg.rope_scaling_type is None:
        return inv_freq
    factor = cfg.rope_scaling_factor
    if cfg.rope_scaling_type == "linear":
        return inv_freq / factor
    low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    context = float(cfg.rope_original_max_position_embeddings)
    wavelength = 2.0 * np.pi / inv_freq
    s = (context / wavelength - low) / (high - low)
    blended = (1.0 - s) * inv_freq / factor + s * inv_freq
    return np.where(wavelength < context / high, inv_freq,
                    np.where(wavelength > context / low, inv_freq / factor, blended))


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray) -> Array:
    """Rotary position embedding in HF's "rotate-half" layout.

    Dimension ``i < hd/2`` pairs with ``i + hd/2`` and rotates by ``pos * inv_freq[i]``;
    HF checkpoints store q/k weights permuted for exactly this layout.

    Args:
      x: ``[B, T, N, hd]`` queries or keys.
      positions: ``[B, T]`` integer positions.
      inv_freq: ``[hd / 2]`` host array from :func:`rope_inv_freq`.

    Returns:
      ``[B, T, N, hd]`` in ``x.dtype`` (the rotation itself runs in float32).
    """
    hd = x.shape[-1]
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : hd // 2], x32[..., hd // 2:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def softcap(x: Array, cap: float | None) -> Array:
    """``cap * tanh(x / cap)`` in float32, cast back to ``x.dtype`` (identity for ``cap=None``)."""
    if cap is None:
        return x
    return (cap * jnp.tanh(x.astype(jnp.float32) / cap)).astype(x.dtype)


def capped_grouped_attention(q: Array, k: Array, v: Array, keep: Array, scale: float, cap: float,
                             dropout: nn.Dropout | None = None, deterministic: bool = True) -> Array:
    """:func:`jaxrec.backbones.layers.grouped_attention` with Gemma-2's soft-capped scores.

    Scores ``q . k * scale`` become ``cap * tanh(scores / cap)`` before masking and softmax
    (Gemma Team, "Gemma 2", arXiv 2408.00118, §2). Shapes as ``grouped_attention``: ``q
    [B, T, K, G, hd]``, ``k, v [B, S, K, hd]``, ``keep`` broadcastable to ``[B, T, S]``;
    returns ``[B, T, K, G, hd]``.
    """
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    scores = softcap(scores, cap)
    scores = jnp.where(keep[:, None, None].astype(bool), scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if dropout is not None:
        probs = dropout(probs, deterministic=deterministic)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v)


def cached_attention_mask(key_mask: Array, index: Array, t: int, sliding_window: int | None) -> Array:
    """Which cache slots each of ``t`` new queries (at slots ``index .. index+t-1``) may see.

    Args:
      key_mask: ``[B, S]``, 1 = the slot holds (or will hold) a real token.
      index: scalar int, the slot of the first new token.
      t: number of new tokens.
      sliding_window: ``W`` or None.

    Returns:
      ``[B, t, S]`` bool: the rows ``index .. index+t-1`` of :func:`attention_mask_matrix`.
    """
    s = key_mask.shape[-1]
    i = index + jnp.arange(t)[:, None]
    j = jnp.arange(s)[None, :]
    allowed = j <= i
    if sliding_window is not None:
        allowed = allowed & (i - j < sliding_window)
    return allowed[None] & (key_mask[:, None, :] > 0)


def attention_mask_matrix(attention_mask: Array, sliding_window: int | None) -> Array:
    """Which keys each query may attend to.

    Args:
      attention_mask: ``[B, T]``, 1 = real token.
      sliding_window: ``W`` or None.

    Returns:
      ``[B, T, T]`` bool, ``[b, i, j]`` True iff key ``j`` is a real token, ``j <= i`` (causal,
      by sequence index as HF does) and, with a window, ``i - j < W``.
    """
    t = attention_mask.shape[-1]
    i = jnp.arange(t)[:, None]
    j = jnp.arange(t)[None, :]
    allowed = j <= i
    if sliding_window is not None:
        allowed = allowed & (i - j < sliding_window)
    return allowed[None] & (attention_mask[:, None, :] > 0)


class RMSNorm(nn.Module):
    """Root-mean-square LayerNorm (Zhang & Sennrich 2019), Llama/Gemma flavours.

    ``y = x / sqrt(mean(x^2) + eps) * s`` with ``s = weight`` (Llama, init 1) or
    ``s = 1 + weight`` (Gemma, init 0). Statistics in float32.
    """

    eps: float
    offset: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``x [..., D] -> [..., D]`` in ``dtype``."""
        init = nn.initializers.zeros_init() if self.offset else nn.initializers.ones_init()
        weight = self.param("weight", init, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale = weight.astype(jnp.float32)
        scale = 1.0 + scale if self.offset else scale
        return (y * scale).astype(self.dtype)


def _dense(cfg: LlamaConfig, features: int, name: str, use_bias: bool) -> LoRADense:
    """A projection that carries LoRA iff its name is in ``cfg.lora_targets``."""
    return projection(cfg, name, features, use_bias=use_bias, init_std=cfg.initializer_range,
                      param_dtype=cfg.param_dtype)


class LlamaAttention(nn.Module):
    """Causal grouped-query self-attention with RoPE (and an optional sliding window)."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: Array, allowed: Array, positions: Array, deterministic: bool = True,
                 kv: tuple[Array, Array] | None = None, cache_index: Array | None = None):
        """Self-attention over a sequence.

        Args:
          x: ``[B, T, D]`` normalised hidden states.
          allowed: ``[B, T, T]`` bool from :func:`attention_mask_matrix`, or ``[B, T, S]`` from
            :func:`cached_attention_mask` with a cache.
          positions: ``[B, T]`` RoPE positions.
          deterministic: disables attention and LoRA dropout.
          kv: optional ``(keys, values)`` cache, each ``[B, S, K, hd]``; the new rotated keys and
            values are written at slot ``cache_index`` and attention runs over all ``S`` slots.
          cache_index: scalar int slot of the first of the ``T`` tokens (with ``kv``).

        Returns:
          ``[B, T, D]`` (after ``o_proj``); with ``kv``, ``(out, (keys, values))`` updated.
        """
        cfg = self.config
        b, t, _ = x.shape
        h, k, g, hd = cfg.num_heads, cfg.num_kv_heads, cfg.num_kv_groups, cfg.head_dim
        bias = cfg.attention_bias
        q = _dense(cfg, h * hd, "q_proj", bias)(x, deterministic).reshape(b, t, h, hd)
        key = _dense(cfg, k * hd, "k_proj", bias)(x, deterministic).reshape(b, t, k, hd)
        val = _dense(cfg, k * hd, "v_proj", bias)(x, deterministic).reshape(b, t, k, hd)
        inv_freq = rope_inv_freq(cfg)
        q = apply_rope(q, positions, inv_freq)
        key = apply_rope(key, positions, inv_freq)
        if kv is not None:
            zero = jnp.zeros((), jnp.int32)
            start = (zero, jnp.asarray(cache_index, jnp.int32), zero, zero)
            key = jax.lax.dynamic_update_slice(kv[0], key.astype(kv[0].dtype), start)
            val = jax.lax.dynamic_update_slice(kv[1], val.astype(kv[1].dtype), start)
        # GQA without materialising repeated K/V: query head n = kv_head * G + group.
        q = q.reshape(b, t, k, g, hd)
        dropout = nn.Dropout(cfg.attention_dropout)
        if cfg.attn_logit_softcapping is not None:
            out = capped_grouped_attention(q, key, val, allowed, cfg.attention_scale, cfg.attn_logit_softcapping,
                                           dropout, deterministic)
        else:
            if cfg.query_pre_attn_scalar is not None:
                # grouped_attention scales by hd ** -0.5; fold the rest of the wanted scale into q.
                q = (q.astype(jnp.float32) * (cfg.attention_scale * math.sqrt(hd))).astype(q.dtype)
            out = grouped_attention(q, key, val, allowed, dropout, deterministic)
        out = out.reshape(b, t, h * hd)
        out = _dense(cfg, cfg.hidden_size, "o_proj", cfg.out_bias)(out, deterministic)
        return out if kv is None else (out, (key, val))


class LlamaMLP(nn.Module):
    """Gated FFN ``down(act(gate(x)) * up(x))`` (SwiGLU for Llama/Mistral, GeGLU for Gemma)."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        """``x [B, T, D] -> [B, T, D]``."""
        cfg = self.config
        f, bias = cfg.intermediate_size, cfg.mlp_bias
        gate = _dense(cfg, f, "gate_proj", bias)(x, deterministic)
        up = _dense(cfg, f, "up_proj", bias)(x, deterministic)
        return _dense(cfg, cfg.hidden_size, "down_proj", bias)(
            ACTIVATIONS[cfg.hidden_act](gate) * up, deterministic
        )


class LlamaDecoderLayer(nn.Module):
    """Pre-norm decoder layer: ``x + attn(norm(x))`` then ``h + mlp(norm(h))``.

    With ``sandwich_norm`` (Gemma-2) the sublayer outputs are normalised too:
    ``x + post_attention_layernorm(attn(input_layernorm(x)))`` then
    ``h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))``.

    With ``adapter_size > 0``, Houlsby adapters ``adapter_attn`` / ``adapter_ffn`` wrap the
    attention output (after ``o_proj``) and the FFN output (after ``down_proj``) before each
    residual add (Houlsby et al. 2019, Fig. 2, placed as in IISAN's Adapter baseline,
    Fu et al., SIGIR 2024; a pre-norm block has no post-residual LayerNorm; with sandwich norms the
    adapter comes after the sublayer's output norm, right before the add).
    """

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: Array, allowed: Array, positions: Array, deterministic: bool = True,
                 kv: tuple[Array, Array] | None = None, cache_index: Array | None = None):
        """``x [B, T, D]`` -> ``[B, T, D]``; ``allowed [B, T, T]``, ``positions [B, T]``.

        With ``kv`` (see :class:`LlamaAttention`) returns ``(out, kv)`` updated.
        """
        cfg = self.config

        def norm(name):
            return RMSNorm(cfg.rms_norm_eps, cfg.norm_offset, cfg.dtype, cfg.param_dtype, name=name)

        a = LlamaAttention(cfg, name="self_attn")(norm("input_layernorm")(x), allowed, positions,
                                                  deterministic, kv, cache_index)
        if kv is not None:
            a, kv = a
        if cfg.sandwich_norm:
            a = norm("post_attention_layernorm")(a)
        x = x + houlsby(cfg, "adapter_attn", a, cfg.param_dtype)
        pre_ffn = "pre_feedforward_layernorm" if cfg.sandwich_norm else "post_attention_layernorm"
        m = LlamaMLP(cfg, name="mlp")(norm(pre_ffn)(x), deterministic)
        if cfg.sandwich_norm:
            m = norm("post_feedforward_layernorm")(m)
        out = x + houlsby(cfg, "adapter_ffn", m, cfg.param_dtype)
        return out if kv is None else (out, kv)


@flax.struct.dataclass
class KVCache:
    """Per-layer key/value buffers for incremental decoding (a pytree).

    Attributes:
      keys, values: tuples of ``L`` arrays ``[B, S, K, hd]`` (keys already rotated by RoPE).
      index: scalar int32, the slot the next token is written to.
    """

    keys: tuple[Array, ...]
    values: tuple[Array, ...]
    index: Array


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    """An empty :class:`KVCache` of ``max_len`` slots (``[B, S, K, hd]`` zeros per layer, index 0)."""
    dtype = cfg.dtype if dtype is None else dtype
    shape = (batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return KVCache(zeros, tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
                   jnp.zeros((), jnp.int32))


@flax.struct.dataclass
class LlamaOutput:
    """What :class:`LlamaModel` returns (iterable as ``(logits, last_hidden, hidden_states)``).

    A pytree (``flax.struct``), so it can leave ``jax.jit``.

    Attributes:
      logits: ``[B, T, V]`` or None (``return_logits=False`` or ``with_lm_head=False``).
      last_hidden: ``[B, T, D]`` after the final RMSNorm.
      hidden_states: tuple of ``L + 1`` arrays ``[B, T, D]`` as in HF: the (scaled) embeddings,
        the outputs of layers 1..L-1, and finally ``last_hidden`` (the normed output of layer L).
    """

    logits: Array | None
    last_hidden: Array
    hidden_states: tuple[Array, ...]
    # The updated KV cache when one was passed (not part of the 3-tuple iteration).
    cache: KVCache | None = None

    def __iter__(self):
        return iter((self.logits, self.last_hidden, self.hidden_states))


class LlamaModel(nn.Module):
    """Llama / Mistral / Gemma / Gemma-2 / Qwen2 decoder with an optional LM head.

    Parameter tree (HF names, so :func:`hf_param_mapping` is mechanical)::

      embed_tokens/embedding [V, D]
      layers_{i}/input_layernorm/weight [D]
      layers_{i}/self_attn/{q,k,v,o}_proj/{kernel, bias?, lora_a?, lora_b?}
      layers_{i}/post_attention_layernorm/weight [D]
      layers_{i}/{pre,post}_feedforward_layernorm/weight [D]             (sandwich_norm)
      layers_{i}/mlp/{gate,up,down}_proj/{kernel, ...}
      layers_{i}/adapter_{attn,ffn}/{down,up}/{kernel,bias}   (adapter_size > 0)
      norm/weight [D]
      lm_head/kernel [D, V]                                     (untied, with_lm_head)
    """

    config: LlamaConfig

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size,
            embedding_init=nn.initializers.normal(cfg.initializer_range),
            dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        )
        # self is argnum 0 for nn.remat, so `deterministic` (a Python bool) is argnum 4.
        layer_cls = nn.remat(LlamaDecoderLayer, static_argnums=(4,)) if cfg.remat else LlamaDecoderLayer
        self.layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.norm = RMSNorm(cfg.rms_norm_eps, cfg.norm_offset, cfg.dtype, cfg.param_dtype)
        if cfg.with_lm_head and not cfg.tie_word_embeddings:
            self.lm_head = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                kernel_init=nn.initializers.normal(cfg.initializer_range),
            )

    def embed(self, input_ids: Array) -> Array:
        """Token-embedding lookup without Gemma's ``sqrt(D)`` scale.

        Use it to build ``inputs_embeds`` (e.g. soft prompts concatenated with embedded text):
        ``__call__`` applies the scale to ``inputs_embeds`` too, as HF does.

        Args:
          input_ids: ``[B, T]`` int.

        Returns:
          ``[B, T, D]`` in the compute dtype.
        """
        return self.embed_tokens(input_ids)

    def __call__(
        self,
        input_ids: Array | None = None,
        attention_mask: Array | None = None,
        position_ids: Array | None = None,
        deterministic: bool = True,
        *,
        inputs_embeds: Array | None = None,
        return_logits: bool = True,
        cache: KVCache | None = None,
    ) -> LlamaOutput:
        """Runs the decoder.

        Args:
          input_ids: ``[B, T]`` int token ids (exactly one of ``input_ids`` / ``inputs_embeds``).
          attention_mask: ``[B, T]``, 1 = real token, 0 = padding (left or right); default all 1.
          position_ids: ``[B, T]`` RoPE positions; default :func:`position_ids_from_mask`.
          deterministic: disables dropout (attention and LoRA); False needs a ``'dropout'`` rng.
          inputs_embeds: ``[B, T, D]`` embeddings instead of ids (soft prompts).
          return_logits: compute ``[B, T, V]`` logits (skip for encoder-style use).
          cache: a :class:`KVCache` of ``S`` slots: the ``T`` tokens are written at slots
            ``cache.index ..`` and attend to every earlier slot; ``attention_mask`` is then the
            ``[B, S]`` mask of all slots, and ``position_ids`` default to the slots' entries of
            :func:`position_ids_from_mask` over it.

        Returns:
          :class:`LlamaOutput` ``(logits [B, T, V] | None, last_hidden [B, T, D],
          hidden_states: L + 1 x [B, T, D])``, with ``.cache`` advanced by ``T`` when given.

        Raises:
          ValueError: both or neither of ``input_ids``/``inputs_embeds``, mis-shaped
            ``attention_mask``/``position_ids``/``inputs_embeds``, or T beyond
            ``max_position_embeddings``.
        """
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LlamaModel: pass exactly one of input_ids [B, T] and inputs_embeds [B, T, D]")
        if input_ids is not None:
            if input_ids.ndim != 2:
                raise ValueError(f"LlamaModel: input_ids must be [B, T], got shape {input_ids.shape}")
            x = self.embed_tokens(input_ids)
        else:
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != cfg.hidden_size:
                raise ValueError(
                    f"LlamaModel: inputs_embeds must be [B, T, {cfg.hidden_size}], got shape {inputs_embeds.shape}"
                )
            x = inputs_embeds.astype(cfg.dtype)
        b, t = x.shape[:2]
        if cache is not None:
            return self._cached(x, attention_mask, position_ids, deterministic, return_logits, cache)
        if t > cfg.max_position_embeddings:
            raise ValueError(
                f"LlamaModel: sequence length {t} exceeds max_position_embeddings {cfg.max_position_embeddings}"
            )
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        elif attention_mask.shape != (b, t):
            raise ValueError(f"LlamaModel: attention_mask must be [B, T] = {(b, t)}, got {attention_mask.shape}")
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        elif position_ids.shape != (b, t):
            raise ValueError(f"LlamaModel: position_ids must be [B, T] = {(b, t)}, got {position_ids.shape}")
        if cfg.embed_scale:
            # The normaliser is rounded to the compute dtype first, as HF PyTorch Gemma does.
            x = x * jnp.asarray(math.sqrt(cfg.hidden_size), dtype=x.dtype)

        masks = {w: attention_mask_matrix(attention_mask, w) for w in self._windows()}
        hidden_states = []
        for i, layer in enumerate(self.layers):
            hidden_states.append(x)
            x = layer(x, masks[cfg.layer_window(i)], position_ids, deterministic)
        x = self.norm(x)
        hidden_states.append(x)

        return LlamaOutput(self._logits(x, return_logits), x, tuple(hidden_states))

    def _windows(self) -> set:
        """The distinct sliding windows of the layers (None: full causal attention)."""
        return {self.config.layer_window(i) for i in range(self.config.num_layers)}

    def _logits(self, x: Array, return_logits: bool) -> Array | None:
        cfg = self.config
        # Always trace the head during init so the parameter tree is complete.
        if cfg.with_lm_head and (return_logits or self.is_initializing()):
            logits = self.embed_tokens.attend(x) if cfg.tie_word_embeddings else self.lm_head(x)
            return softcap(logits, cfg.final_logit_softcapping)
        return None

    def _cached(self, x, key_mask, position_ids, deterministic, return_logits, cache: KVCache) -> LlamaOutput:
        """The forward pass of :meth:`__call__` through a :class:`KVCache` (``x [B, T, D]`` embedded)."""
        cfg = self.config
        b, t = x.shape[:2]
        s = cache.keys[0].shape[1]
        if len(cache.keys) != cfg.num_layers:
            raise ValueError(f"LlamaModel: cache has {len(cache.keys)} layers, model has {cfg.num_layers}")
        if s > cfg.max_position_embeddings:
            raise ValueError(
                f"LlamaModel: cache length {s} exceeds max_position_embeddings {cfg.max_position_embeddings}"
            )
        if key_mask is None:
            key_mask = jnp.ones((b, s), jnp.int32)
        elif key_mask.shape != (b, s):
            raise ValueError(
                f"LlamaModel: with a cache, attention_mask must cover all cache slots [B, S] = {(b, s)}, "
                f"got {key_mask.shape}"
            )
        if position_ids is None:
            position_ids = jax.lax.dynamic_slice_in_dim(position_ids_from_mask(key_mask), cache.index, t, axis=1)
        elif position_ids.shape != (b, t):
            raise ValueError(f"LlamaModel: position_ids must be [B, T] = {(b, t)}, got {position_ids.shape}")
        if cfg.embed_scale:
            x = x * jnp.asarray(math.sqrt(cfg.hidden_size), dtype=x.dtype)
        masks = {w: cached_attention_mask(key_mask, cache.index, t, w) for w in self._windows()}
        hidden_states, keys, values = [], [], []
        for i, layer in enumerate(self.layers):
            hidden_states.append(x)
            x, (k, v) = layer(x, masks[cfg.layer_window(i)], position_ids, deterministic,
                              (cache.keys[i], cache.values[i]), cache.index)
            keys.append(k)
            values.append(v)
        x = self.norm(x)
        hidden_states.append(x)
        new_cache = KVCache(tuple(keys), tuple(values), cache.index + t)
        return LlamaOutput(self._logits(x, return_logits), x, tuple(hidden_states), new_cache)


# --------------------------------------------------------------------------------------------
# Loading Hugging Face checkpoints
# --------------------------------------------------------------------------------------------


def hf_param_mapping(cfg: LlamaConfig, prefix: str = "model.") -> dict[tuple[str, ...], tuple[str, Any]]:
    """Our parameter paths -> (HF tensor name, layout transform) for a Llama-family model.

    Args:
      cfg: the model config (decides biases, head and tying).
      prefix: ``"model."`` for ``*ForCausalLM`` checkpoints, ``""`` for bare ``*Model`` ones.

    Returns:
      ``{path tuple: (tensor name, transform or None)}`` for :func:`hf.assign_params`. LoRA and
      adapter parameters are absent: they come from the template (``keep``).
    """
    m: dict[tuple[str, ...], tuple[str, Any]] = {
        ("embed_tokens", "embedding"): (f"{prefix}embed_tokens.weight", None),
        ("norm", "weight"): (f"{prefix}norm.weight", None),
    }
    norms = ("input_layernorm", "post_attention_layernorm")
    if cfg.sandwich_norm:
        norms += ("pre_feedforward_layernorm", "post_feedforward_layernorm")
    biases = {p: cfg.attention_bias for p in ATTN_PROJECTIONS} | {p: cfg.mlp_bias for p in MLP_PROJECTIONS}
    biases["o_proj"] = cfg.out_bias
    for i in range(cfg.num_layers):
        ours, theirs = f"layers_{i}", f"{prefix}layers.{i}"
        for norm in norms:
            m[(ours, norm, "weight")] = (f"{theirs}.{norm}.weight", None)
        for block, names in (("self_attn", ATTN_PROJECTIONS), ("mlp", MLP_PROJECTIONS)):
            for p in names:
                m.update(hf.dense_entries((ours, block, p), f"{theirs}.{block}.{p}", biases[p]))
    if cfg.with_lm_head and not cfg.tie_word_embeddings:
        m.update(hf.dense_entries(("lm_head",), "lm_head", bias=False))
    return m


def llama_param_mapping(cfg: LlamaConfig, tensor_names: Sequence[str]) -> tuple[dict, tuple[str, ...]]:
    """:func:`hf_param_mapping` for the checkpoint at hand, plus the tensors it may leave unused.

    The ``model.`` prefix is detected from ``tensor_names``. Ignorable: legacy
    ``rotary_emb.inv_freq`` buffers, and ``lm_head.weight`` when the head is tied or dropped.

    Returns:
      ``(mapping, ignorable)`` for :func:`jaxrec.backbones.hf.assign_params`.
    """
    prefix = hf.find_prefix(tensor_names, "embed_tokens.weight", ("model.",))
    ignorable = (r"rotary_emb\.inv_freq$",)
    if not cfg.with_lm_head or cfg.tie_word_embeddings:
        ignorable += (r"^lm_head\.weight$",)
    return hf_param_mapping(cfg, prefix), ignorable


def example_inputs(cfg: LlamaConfig) -> tuple:
    """Inputs for ``LlamaModel(cfg).init`` (shapes only matter): ``([1, 1] int32 ids,)``."""
    return (jnp.zeros((1, 1), jnp.int32),)


def abstract_params(cfg: LlamaConfig, weights_dtype: Any = None) -> dict:
    """The ``'params'`` tree of ``LlamaModel(cfg)`` as ``jax.ShapeDtypeStruct`` leaves, from the
    config alone (nothing allocated, nothing computed).

    For compiling a step of a 7-8B model without its weights
    (``jax.jit(step).lower(abstract_params(cfg, jnp.bfloat16), ...)``), or counting parameters.

    Args:
      cfg: the model config (``LlamaConfig.from_hf(json)`` for a hub model).
      weights_dtype: dtype of the pretrained leaves, as :func:`load_llama` would load them;
        None: ``cfg.param_dtype``. PEFT leaves (LoRA, adapters) keep ``cfg.param_dtype``.
    """
    return hf.with_weights_dtype(hf.template_params(LlamaModel(cfg), example_inputs(cfg), concrete=False),
                                 weights_dtype, PEFT_KEEP_PATTERNS)


def init_params(cfg: LlamaConfig, rng: jax.Array | None = None, weights_dtype: Any = None) -> dict:
    """Randomly initialised ``'params'`` (one jitted init), pretrained-style leaves in ``weights_dtype``.

    The same values as ``LlamaModel(cfg).init(rng, ...)['params']`` (cast), without a float32
    copy of the whole tree when ``weights_dtype`` is smaller: the cast happens inside the jit.
    """
    rng = jax.random.key(0) if rng is None else rng
    model = LlamaModel(cfg)

    def init(r):
        return hf.with_weights_dtype(model.init(r, *example_inputs(cfg))["params"], weights_dtype,
                                     PEFT_KEEP_PATTERNS)

    return jax.jit(init)(rng)


def load_llama(
    ckpt_dir: str,
    *,
    rng: jax.Array | None = None,
    weights_dtype: Any = None,
    frozen: bool = False,
    **overrides: Any,
) -> hf.LoadedBackbone:
    """Loads a Llama / Mistral / Gemma / Gemma-2 / Qwen2 Hugging Face checkpoint directory.

    Reads ``config.json`` (``model_type`` llama / mistral / gemma / gemma2 / qwen2, see
    :meth:`LlamaConfig.from_hf`) and PyTorch-layout safetensors (single file or sharded), with
    or without the ``model.`` prefix. ``lm_head.weight`` is expected iff the head is untied and
    ``with_lm_head``; a stored-but-tied ``lm_head.weight`` and legacy ``rotary_emb.inv_freq``
    buffers are ignored.

    Memory: the parameter template comes from ``jax.eval_shape`` (the pretrained weights are
    never randomly initialised), and each tensor is converted to ``weights_dtype`` and put on
    the device as it is read, so the host holds about one tensor at a time (plus the loaded
    parameters when the device is the CPU).

    Args:
      ckpt_dir: directory with ``config.json`` and ``model.safetensors`` (or an index + shards).
      rng: key for the PEFT parameters (LoRA ``lora_a``, adapters) that the checkpoint lacks;
        default ``jax.random.key(0)``.
      weights_dtype: dtype of the leaves read from the checkpoint (e.g. ``jnp.bfloat16``);
        None: ``jnp.bfloat16`` when ``frozen``, else the config's ``param_dtype`` (float32).
        PEFT leaves are always initialised in ``param_dtype`` (float32).
      frozen: the pretrained weights will not be trained (frozen tower, LoRA / adapters only):
        store them in bfloat16 unless ``weights_dtype`` says otherwise. Computation follows
        the ``dtype`` override (float32 by default), not the storage dtype.
      **overrides: :class:`LlamaConfig` fields, e.g. ``dtype=jnp.bfloat16, lora_rank=8, remat=True``.

    Returns:
      :class:`jaxrec.backbones.hf.LoadedBackbone` ``(config, params)`` — the same shape as
      ``load_bert`` / ``load_vit`` — with ``params`` the ``'params'`` collection (jax arrays),
      ready for ``LlamaModel(config).apply({'params': params}, ids, mask)``.

    Raises:
      hf.CheckpointError: a missing / unreadable file, a ``config.json`` without a required
        field or with an unsupported ``model_type`` / ``rope_scaling`` (the message names the
        directory and the field), or missing / unexpected / mis-shaped tensors, all listed at
        once.
      ValueError: an override that is not a :class:`LlamaConfig` field or is invalid.
    """
    hf_config = hf.read_config(ckpt_dir)
    try:
        # config.json alone first, so that its own problems are reported against the directory.
        LlamaConfig.from_hf(hf_config)
    except ValueError as e:
        raise hf.CheckpointError(f"checkpoint {str(ckpt_dir)!r}: {e}", ckpt_dir) from e
    cfg = LlamaConfig.from_hf(hf_config, **overrides)
    if weights_dtype is None and frozen:
        weights_dtype = jnp.bfloat16
    return hf.load_backbone(ckpt_dir, cfg, LlamaModel(cfg), example_inputs(cfg), llama_param_mapping,
                            keep=PEFT_KEEP_PATTERNS, rng=rng, weights_dtype=weights_dtype)
