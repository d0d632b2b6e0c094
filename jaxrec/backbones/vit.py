"""Vision Transformer image encoder in flax.linen, loading HF checkpoints.

Papers:
  * Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, §3.1 / Eq. 1–4: patches of
    P x P pixels linearly embedded, a learned [CLS] token prepended, learned 1-D position
    embeddings added; pre-LN Transformer blocks; a final LayerNorm on the output (Eq. 4).
  * IISAN (Fu et al., SIGIR 2024), spec ``iisan.md`` §1.1–1.2: the frozen image backbone is
    ``google/vit-base-patch16-224``; the side networks read the [CLS] vector of every entry of
    ``hidden_states`` (HF convention: index 0 = embedding output, index i = output of block i,
    *before* the final LayerNorm). §1.12: the FFT baseline uses the [CLS] of the final-LN output,
    which is ``last_hidden_state[:, 0]`` here. IISAN-Versa (arXiv 2411.02992) §2.2 also uses
    ViT-tiny (192 wide) and ViT-huge/14 (1280 wide, 32 layers): see :meth:`ViTConfig.preset`.

Images are NHWC (``[B, H, W, C]``), the layout HF's Flax ViT module uses internally (its
``FlaxViTModel.__call__`` transposes NCHW inputs to NHWC before the module).

Parameter layout (``params``; '/' = nesting)::

    embeddings/cls_token                 [1, 1, D]
    embeddings/position_embeddings       [1, 1 + N, D]   (N = (image_size / patch_size)^2)
    embeddings/patch_embed/{kernel [p, p, C, D], bias [D]}
    layer_{i}/attn_norm                  LayerNorm before attention (HF layernorm_before)
    layer_{i}/{query, key, value, attn_out, ffn_in, ffn_out}   LoRADense
    layer_{i}/ffn_norm                   LayerNorm before the MLP (HF layernorm_after)
    layer_{i}/adapter_attn, adapter_ffn  HoulsbyAdapter (only when adapter_size > 0)
    final_norm/{scale, bias}
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jaxrec.backbones import hf
from jaxrec.backbones.layers import (
    ACTIVATIONS,
    PEFT_KEEP_PATTERNS,
    EncoderConfigChecks,
    houlsby,
    multi_head_attention,
    projection,
)

Array = Any

# Sizes of the public checkpoints named in the IISAN / IISAN-Versa code (spec §1.1, §2.2).
_PRESETS = {
    # WinKawaks/vit-tiny-patch16-224
    "tiny": dict(patch_size=16, hidden_size=192, num_layers=12, num_heads=3, intermediate_size=768),
    # google/vit-base-patch16-224
    "base": dict(patch_size=16, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    # google/vit-huge-patch14-224-in21k
    "huge": dict(patch_size=14, hidden_size=1280, num_layers=32, num_heads=16, intermediate_size=5120),
}


@dataclasses.dataclass(frozen=True)
class ViTConfig(EncoderConfigChecks):
    """Architecture of a ViT encoder plus its PEFT options.

    Attributes:
      image_size: input height = width (pixels); must be a multiple of ``patch_size``.
      patch_size: p (16 for ViT-B/16, 14 for ViT-H/14).
      num_channels: C.
      hidden_size (D), num_layers (L), num_heads (H), intermediate_size (F), layer_norm_eps,
      hidden_act, qkv_bias: as in HF ``ViTConfig``.
      hidden_dropout, attention_dropout: dropout rates (active when ``deterministic=False``).
      dtype: computation dtype ("float32" or "bfloat16"); parameters always stay float32.
      lora_rank, lora_alpha, lora_targets, lora_dropout, adapter_size, adapter_activation:
        shared PEFT fields, as in :class:`jaxrec.backbones.bert.BertConfig`.
      remat: recompute each block's activations in the backward pass (as in ``BertConfig``).
    """

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    dtype: str = "float32"
    lora_rank: int = 0
    lora_alpha: float = 1.0
    lora_targets: tuple[str, ...] = ("query", "value")
    lora_dropout: float = 0.0
    adapter_size: int = 0
    adapter_activation: str = "relu"
    remat: bool = False

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViTConfig.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        self.check_common()

    @property
    def num_patches(self) -> int:
        """N = (image_size / patch_size)^2; the sequence length is 1 + N."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def preset(cls, name: str, **overrides) -> "ViTConfig":
        """``tiny`` (192/12, p16), ``base`` (ViT-B/16: 768/12), ``huge`` (ViT-H/14: 1280/32)."""
        if name not in _PRESETS:
            raise ValueError(f"unknown ViT preset {name!r}; valid: {sorted(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "ViTConfig":
        """ViT-tiny/16 (192 wide, 12 layers; WinKawaks/vit-tiny-patch16-224)."""
        return cls.preset("tiny", **overrides)

    @classmethod
    def base(cls, **overrides) -> "ViTConfig":
        """ViT-B/16 (768 wide, 12 layers; google/vit-base-patch16-224)."""
        return cls.preset("base", **overrides)

    @classmethod
    def huge(cls, **overrides) -> "ViTConfig":
        """ViT-H/14 (1280 wide, 32 layers; google/vit-huge-patch14-224-in21k)."""
        return cls.preset("huge", **overrides)

    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any], **overrides) -> "ViTConfig":
        """Builds a config from a HF ViT ``config.json`` dict; ``overrides`` set any field."""
        model_type = hf_config.get("model_type", "vit")
        if model_type != "vit":
            raise ValueError(f"config.json model_type {model_type!r} is not 'vit'")
        fields = cls.encoder_fields_from_hf(hf_config, dropout=0.0)
        fields.update(
            image_size=hf_config.get("image_size", 224),
            patch_size=hf_config.get("patch_size", 16),
            num_channels=hf_config.get("num_channels", 3),
            qkv_bias=hf_config.get("qkv_bias", True),
        )
        fields.update(overrides)
        return cls(**fields)


@flax.struct.dataclass
class ViTOutput:
    """Outputs of :class:`ViTEncoder` (a pytree).

    Attributes:
      last_hidden_state: ``[B, 1 + N, D]``, the last block's output after the final LayerNorm
        (index 0 along axis 1 is [CLS]).
      hidden_states: tuple of ``L + 1`` arrays ``[B, 1 + N, D]``: the embedding output and each
        block's output, all before the final LayerNorm (HF convention).
    """

    last_hidden_state: Array
    hidden_states: tuple[Array, ...]


class ViTEmbeddings(nn.Module):
    """Patch embedding + [CLS] + learned positions (ViT Eq. 1).

    ``__call__(pixel_values [B, H, W, C], deterministic) -> [B, 1 + N, D]``.
    """

    config: ViTConfig

    @nn.compact
    def __call__(self, pixel_values: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        dt = cfg.compute_dtype
        b, d = pixel_values.shape[0], cfg.hidden_size
        init = nn.initializers.truncated_normal(0.02)
        # A stride-p, p x p convolution is exactly "cut into patches, apply one shared linear
        # map" (ViT Eq. 1), and matches the checkpoints' Conv2d weight.
        patches = nn.Conv(
            d, kernel_size=(cfg.patch_size, cfg.patch_size), strides=(cfg.patch_size, cfg.patch_size),
            padding="VALID", dtype=dt, kernel_init=init, name="patch_embed",
        )(pixel_values)
        cls_token = self.param("cls_token", init, (1, 1, d))
        pos = self.param("position_embeddings", init, (1, 1 + cfg.num_patches, d))
        x = patches.reshape(b, cfg.num_patches, d)
        x = jnp.concatenate([jnp.broadcast_to(cls_token.astype(dt), (b, 1, d)), x], axis=1)
        x = x + pos.astype(dt)
        return nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


class ViTLayer(nn.Module):
    """Pre-LN block (ViT Eq. 2–3) with optional Houlsby adapters.

    ``__call__(x [B, S, D], deterministic) -> [B, S, D]``:
    ``h = x + adapter_attn(attn_out(MHA(LN(x))))``; ``y = h + adapter_ffn(ffn_out(act(ffn_in(LN(h)))))``.
    The adapters sit after the output projections, before the residual add (IISAN spec §1.12).
    """

    config: ViTConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        dt = cfg.compute_dtype
        d = cfg.hidden_size
        y = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dt, name="attn_norm")(x)
        q = projection(cfg, "query", d, use_bias=cfg.qkv_bias)(y, deterministic=deterministic)
        k = projection(cfg, "key", d, use_bias=cfg.qkv_bias)(y, deterministic=deterministic)
        v = projection(cfg, "value", d, use_bias=cfg.qkv_bias)(y, deterministic=deterministic)
        a = multi_head_attention(q, k, v, None, cfg.num_heads, nn.Dropout(cfg.attention_dropout), deterministic)
        a = houlsby(cfg, "adapter_attn", projection(cfg, "attn_out", d)(a, deterministic=deterministic))
        h = x + nn.Dropout(cfg.hidden_dropout)(a, deterministic=deterministic)

        y = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dt, name="ffn_norm")(h)
        f = projection(cfg, "ffn_in", cfg.intermediate_size)(y, deterministic=deterministic)
        f = ACTIVATIONS[cfg.hidden_act](f)
        f = houlsby(cfg, "adapter_ffn", projection(cfg, "ffn_out", d)(f, deterministic=deterministic))
        return h + nn.Dropout(cfg.hidden_dropout)(f, deterministic=deterministic)


class ViTEncoder(nn.Module):
    """ViT image encoder returning every hidden state (for IISAN's per-layer [CLS] taps)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, pixel_values: Array, deterministic: bool = True) -> ViTOutput:
        """Encodes a batch of preprocessed images.

        Args:
          pixel_values: ``[B, H, W, C]`` float, H = W = ``image_size``, already normalised
            (see :class:`jaxrec.backbones.preprocess.ImagePreprocessor`).
          deterministic: False enables dropout (needs a ``'dropout'`` rng).

        Returns:
          :class:`ViTOutput` with ``last_hidden_state [B, 1 + N, D]`` (after the final LN) and
          ``hidden_states`` (L + 1) x ``[B, 1 + N, D]``, in the config's compute dtype.
        """
        cfg = self.config
        dt = cfg.compute_dtype
        expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must be [B, H, W, C] = [B, {', '.join(map(str, expected))}] (NHWC), "
                f"got shape {pixel_values.shape}"
            )
        if not jnp.issubdtype(pixel_values.dtype, jnp.floating):
            raise ValueError(f"pixel_values must be float (normalised), got dtype {pixel_values.dtype}")
        x = ViTEmbeddings(cfg, name="embeddings")(pixel_values, deterministic)
        hidden_states = [x]
        layer = nn.remat(ViTLayer, static_argnums=(2,)) if cfg.remat else ViTLayer  # (self, x, det)
        for i in range(cfg.num_layers):
            x = layer(cfg, name=f"layer_{i}")(x, deterministic)
            hidden_states.append(x)
        last = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dt, name="final_norm")(x)
        return ViTOutput(last_hidden_state=last, hidden_states=tuple(hidden_states))


# --------------------------------------------------------------------------------------------
# Hugging Face checkpoints
# --------------------------------------------------------------------------------------------

# Tensors of ViTModel / ViTForImageClassification checkpoints that the encoder does not use:
# the classification head, the pooler (ViT-H in21k ships one; IISAN uses [CLS] instead), buffers.
VIT_IGNORABLE = (r"^classifier\.", r"(^|\.)pooler\.", r"(^|\.)position_ids$")


def vit_param_mapping(config: ViTConfig, tensor_names: Sequence[str]) -> tuple[dict, tuple[str, ...]]:
    """Maps every pretrained :class:`ViTEncoder` parameter to its HF tensor name.

    Handles bare ``ViTModel`` names and the ``vit.`` prefix of ``ViTForImageClassification``
    (``google/vit-base-patch16-224``, spec §1.1).

    Returns:
      ``(mapping, ignorable)`` for :func:`jaxrec.backbones.hf.assign_params`.
    """
    names = set(tensor_names)
    p = hf.find_prefix(names, "embeddings.cls_token", ("vit.",))
    ln, dense = hf.layer_norm_entries, hf.dense_entries

    e = ("embeddings",)
    m: dict = {
        e + ("cls_token",): (f"{p}embeddings.cls_token", None),
        e + ("position_embeddings",): (f"{p}embeddings.position_embeddings", None),
        e + ("patch_embed", "kernel"): (f"{p}embeddings.patch_embeddings.projection.weight", hf.conv_kernel),
        e + ("patch_embed", "bias"): (f"{p}embeddings.patch_embeddings.projection.bias", None),
    }
    for i in range(config.num_layers):
        ours, theirs = (f"layer_{i}",), f"{p}encoder.layer.{i}"
        m.update(ln(ours + ("attn_norm",), f"{theirs}.layernorm_before"))
        for name in ("query", "key", "value"):
            m.update(dense(ours + (name,), f"{theirs}.attention.attention.{name}", config.qkv_bias))
        m.update(dense(ours + ("attn_out",), f"{theirs}.attention.output.dense"))
        m.update(ln(ours + ("ffn_norm",), f"{theirs}.layernorm_after"))
        m.update(dense(ours + ("ffn_in",), f"{theirs}.intermediate.dense"))
        m.update(dense(ours + ("ffn_out",), f"{theirs}.output.dense"))
    m.update(ln(("final_norm",), f"{p}layernorm"))
    return m, VIT_IGNORABLE


def example_inputs(config: ViTConfig) -> tuple[Array]:
    """``(pixel_values [1, H, W, C],)`` zeros that ``ViTEncoder.init`` traces."""
    return (jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32),)


def init_params(config: ViTConfig, rng: jax.Array | None = None, abstract: bool = False):
    """Initial parameters of :class:`ViTEncoder` (``jax.eval_shape`` when ``abstract``)."""
    return hf.template_params(ViTEncoder(config), example_inputs(config), rng, concrete=not abstract)


def load_vit(
    ckpt_dir: str, dtype: Any = "float32", rng: jax.Array | None = None, **overrides
) -> hf.LoadedBackbone:
    """Loads a ViT Hugging Face checkpoint (config.json + safetensors).

    Args:
      ckpt_dir: directory with ``config.json`` and ``model.safetensors`` (or shards + index).
      dtype: computation dtype of the returned config; parameters are float32 regardless.
      rng: initialises PEFT parameters absent from the checkpoint (default ``jax.random.key(0)``).
      **overrides: any :class:`ViTConfig` field (``lora_rank=8``, ``adapter_size=64``, ...).

    Returns:
      :class:`jaxrec.backbones.hf.LoadedBackbone` ``(config, params)`` — the same shape as
      ``load_bert`` / ``load_llama`` — for ``ViTEncoder(config).apply({'params': params},
      pixel_values)``. Only the PEFT leaves are initialised, as in ``load_bert``.

    Raises:
      CheckpointError: unreadable files, or a checkpoint that does not fit (one message that
        lists every missing, unexpected and mis-shaped tensor).
    """
    config = ViTConfig.from_hf(hf.read_config(ckpt_dir), dtype=dtype, **overrides)
    return hf.load_backbone(ckpt_dir, config, ViTEncoder(config), example_inputs(config), vit_param_mapping,
                            keep=PEFT_KEEP_PATTERNS, rng=rng)
