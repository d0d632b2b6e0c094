"""BERT-family text encoder (BERT, RoBERTa, MiniLM) in flax.linen, loading HF checkpoints.

Papers:
  * Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
    Understanding", NAACL 2019, §3 (architecture: post-LN Transformer encoder of Vaswani et al.
    2017 §3.1–3.3, learned absolute positions, token types, tanh pooler on [CLS]).
  * Liu et al., "RoBERTa", 2019, §4 (same architecture; positions start at ``padding_idx + 1``).
  * Wang et al., "MiniLM", NeurIPS 2020 (a distilled BERT; same architecture, smaller sizes).
  * IISAN (Fu et al., SIGIR 2024), spec ``iisan.md`` §1.1–1.2: the frozen text backbone is
    ``bert-base-uncased``; the side networks read the [CLS] vector of every entry of
    ``hidden_states`` (index 0 = embedding output, index i = output of block i, as HF).
    §1.12: the Houlsby-adapter and LoRA baselines are built into this module through the PEFT
    fields of :class:`BertConfig` (see below).

Parameter layout (``params`` collection; '/' = nesting)::

    embeddings/word_embeddings/embedding        [V, D]
    embeddings/position_embeddings/embedding    [P, D]
    embeddings/token_type_embeddings/embedding  [T, D]
    embeddings/layer_norm/{scale, bias}         [D]
    layer_{i}/{query, key, value, attn_out}     LoRADense: kernel [D, D], bias [D] (+ lora_a, lora_b)
    layer_{i}/attn_norm/{scale, bias}           post-attention LayerNorm
    layer_{i}/ffn_in   kernel [D, F]            layer_{i}/ffn_out  kernel [F, D]
    layer_{i}/ffn_norm/{scale, bias}            post-FFN LayerNorm
    layer_{i}/adapter_attn, adapter_ffn         HoulsbyAdapter (only when adapter_size > 0)
    pooler/{kernel, bias}                       only when use_pooler

Projection names usable in ``lora_targets``: ``query key value attn_out ffn_in ffn_out``
(:data:`jaxrec.backbones.layers.ENCODER_PROJECTIONS`, the same names as in
:mod:`jaxrec.backbones.vit`). The shared pieces (LoRA-capable projections, attention, adapters,
config checks) are in :mod:`jaxrec.backbones.layers`.
"""
from __future__ import annotations

import dataclasses
import re
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

@dataclasses.dataclass(frozen=True)
class BertConfig(EncoderConfigChecks):
    """Architecture of a BERT-family encoder plus its PEFT options.

    Attributes:
      vocab_size, hidden_size (D), num_layers (L), num_heads (H), intermediate_size (F),
      max_position_embeddings (P), type_vocab_size (T), layer_norm_eps, hidden_act: as in HF.
      position_offset: first position id of a real token. 0 for BERT; RoBERTa uses
        ``pad_token_id + 1`` and gives padding tokens position ``pad_token_id`` (HF's
        ``create_position_ids_from_input_ids``), which this module reproduces when > 0.
      pad_token_id: the padding id (only used for RoBERTa-style positions).
      hidden_dropout, attention_dropout: dropout rates (active when ``deterministic=False``).
      use_pooler: build the tanh pooler on [CLS] (BERT's NSP head input). IISAN never uses it
        (spec §1.12: "everything except the BERT pooler" trains), so it is off by default and a
        checkpoint's pooler tensors are then skipped.
      dtype: computation dtype ("float32" or "bfloat16"); parameters always stay float32.
      lora_rank, lora_alpha, lora_targets: LoRA on the projections named in ``lora_targets``.
      lora_dropout: dropout on the LoRA branch input.
      adapter_size: Houlsby bottleneck width (0 = no adapters); adapter_activation "relu"/"gelu".
      remat: recompute each block's activations in the backward pass (``nn.remat`` per
        layer) instead of keeping them: less training memory for one more forward.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_offset: int = 0
    pad_token_id: int = 0
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    use_pooler: bool = False
    dtype: str = "float32"
    lora_rank: int = 0
    lora_alpha: float = 1.0
    lora_targets: tuple[str, ...] = ("query", "value")
    lora_dropout: float = 0.0
    adapter_size: int = 0
    adapter_activation: str = "relu"
    remat: bool = False

    def __post_init__(self):
        self.check_common()
        if self.position_offset < 0:
            raise ValueError(f"BertConfig.position_offset must be >= 0, got {self.position_offset}")

    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any], **overrides) -> "BertConfig":
        """Builds a config from a HF ``config.json`` dict (model_type bert / roberta).

        MiniLM checkpoints declare ``model_type: "bert"``. ``overrides`` set any field
        (dtype, PEFT options, ``use_pooler``, ...).
        """
        model_type = hf_config.get("model_type", "bert")
        if model_type not in ("bert", "roberta", "xlm-roberta", "camembert"):
            raise ValueError(f"config.json model_type {model_type!r} is not a BERT-family encoder")
        pos_type = hf_config.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(f"config.json position_embedding_type {pos_type!r} is not supported (only 'absolute')")
        fields = cls.encoder_fields_from_hf(hf_config, dropout=0.1, required=("vocab_size",))
        pad = int(hf_config.get("pad_token_id") or 0)
        roberta_like = model_type != "bert"
        fields.update(
            vocab_size=hf_config["vocab_size"],
            max_position_embeddings=hf_config.get("max_position_embeddings", 512),
            type_vocab_size=hf_config.get("type_vocab_size", 2),
            position_offset=pad + 1 if roberta_like else 0,
            pad_token_id=pad,
        )
        fields.update(overrides)
        return cls(**fields)


@flax.struct.dataclass
class BertOutput:
    """Outputs of :class:`BertEncoder` (a pytree, so it can leave ``jax.jit``).

    Attributes:
      last_hidden_state: ``[B, T, D]`` output of the last block.
      pooled: ``[B, D]`` tanh pooler on [CLS], or None when ``use_pooler`` is off.
      hidden_states: tuple of ``L + 1`` arrays ``[B, T, D]``; index 0 is the embedding output
        and index i the output of block i (HF convention, IISAN spec §1.2).
    """

    last_hidden_state: Array
    pooled: Array | None
    hidden_states: tuple[Array, ...]


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout (BERT §3.2, Fig. 2).

    ``__call__(input_ids [B, T], token_type_ids [B, T], deterministic) -> [B, T, D]``.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        dt = cfg.compute_dtype
        init = nn.initializers.normal(0.02)
        t = input_ids.shape[1]
        if cfg.position_offset == 0:
            position_ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), input_ids.shape)
        else:
            # RoBERTa: real tokens count up from padding_idx + 1, padding tokens sit at
            # padding_idx (HF create_position_ids_from_input_ids); this also makes left padding work.
            real = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            position_ids = jnp.cumsum(real, axis=1) * real + (cfg.position_offset - 1)
        words = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init, dtype=dt, name="word_embeddings")
        positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, embedding_init=init, dtype=dt,
                             name="position_embeddings")
        types = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, embedding_init=init, dtype=dt,
                         name="token_type_embeddings")
        x = words(input_ids) + positions(position_ids) + types(token_type_ids)
        x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dt, name="layer_norm")(x)
        return nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


class BertLayer(nn.Module):
    """One post-LN encoder block (BERT §3 / Vaswani et al. §3.1), optional Houlsby adapters.

    ``__call__(x [B, T, D], mask [B, T], deterministic) -> [B, T, D]``:
    ``h = LN(x + adapter_attn(attn_out(MHA(x))))``; ``y = LN(h + adapter_ffn(ffn_out(act(ffn_in(h)))))``.
    The adapters sit after the output projections and before residual + LayerNorm (Houlsby
    et al. 2019 §2.1; IISAN spec §1.12). Dropout is applied to the adapted sublayer output
    (our choice [inferred]; it only matters in training).
    """

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, deterministic: bool = True) -> Array:
        cfg = self.config
        dt = cfg.compute_dtype
        d = cfg.hidden_size
        q = projection(cfg, "query", d)(x, deterministic=deterministic)
        k = projection(cfg, "key", d)(x, deterministic=deterministic)
        v = projection(cfg, "value", d)(x, deterministic=deterministic)
        a = multi_head_attention(q, k, v, mask, cfg.num_heads, nn.Dropout(cfg.attention_dropout), deterministic)
        a = houlsby(cfg, "adapter_attn", projection(cfg, "attn_out", d)(a, deterministic=deterministic))
        a = nn.Dropout(cfg.hidden_dropout)(a, deterministic=deterministic)
        h = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dt, name="attn_norm")(x + a)

        f = projection(cfg, "ffn_in", cfg.intermediate_size)(h, deterministic=deterministic)
        f = ACTIVATIONS[cfg.hidden_act](f)
        f = houlsby(cfg, "adapter_ffn", projection(cfg, "ffn_out", d)(f, deterministic=deterministic))
        f = nn.Dropout(cfg.hidden_dropout)(f, deterministic=deterministic)
        return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=dt, name="ffn_norm")(h + f)


class BertEncoder(nn.Module):
    """BERT-family encoder returning every hidden state (for IISAN's per-layer [CLS] taps)."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        deterministic: bool = True,
    ) -> BertOutput:
        """Encodes a batch of token sequences.

        Args:
          input_ids: ``[B, T]`` int token ids, ``T <= max_position_embeddings - position_offset``.
          attention_mask: ``[B, T]``, 1 for real tokens, 0 for padding (None: all real).
          token_type_ids: ``[B, T]`` segment ids (None: all 0).
          deterministic: False enables dropout (needs a ``'dropout'`` rng).

        Returns:
          :class:`BertOutput` with ``last_hidden_state [B, T, D]``, ``pooled [B, D]`` or None,
          ``hidden_states`` (L + 1) x ``[B, T, D]``; arrays in the config's compute dtype.
        """
        cfg = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {input_ids.shape}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
        t = input_ids.shape[1]
        if t + cfg.position_offset > cfg.max_position_embeddings:
            raise ValueError(
                f"input_ids has length {t}, but the model has max_position_embeddings="
                f"{cfg.max_position_embeddings} (position_offset {cfg.position_offset})"
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        elif token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids shape {token_type_ids.shape} != input_ids shape {input_ids.shape}")

        x = BertEmbeddings(cfg, name="embeddings")(input_ids, token_type_ids, deterministic)
        hidden_states = [x]
        # static_argnums counts self: (self, x, mask, deterministic).
        layer = nn.remat(BertLayer, static_argnums=(3,)) if cfg.remat else BertLayer
        for i in range(cfg.num_layers):
            x = layer(cfg, name=f"layer_{i}")(x, attention_mask, deterministic)
            hidden_states.append(x)
        pooled = None
        if cfg.use_pooler:
            dense = nn.Dense(cfg.hidden_size, dtype=cfg.compute_dtype, kernel_init=nn.initializers.normal(0.02),
                             name="pooler")
            pooled = jnp.tanh(dense(x[:, 0]))
        return BertOutput(last_hidden_state=x, pooled=pooled, hidden_states=tuple(hidden_states))


# --------------------------------------------------------------------------------------------
# Hugging Face checkpoints
# --------------------------------------------------------------------------------------------

# Tensors a BERT checkpoint may carry that the encoder does not use: task heads of
# BertForPreTraining / ...ForSequenceClassification / RobertaForMaskedLM, and buffers.
BERT_IGNORABLE = (
    r"(^|\.)position_ids$",
    r"(^|\.)token_type_ids$",
    r"^cls\.",
    r"^lm_head\.",
    r"^classifier\.",
    r"^qa_outputs\.",
)


def bert_param_mapping(config: BertConfig, tensor_names: Sequence[str]) -> tuple[dict, tuple[str, ...]]:
    """Maps every pretrained :class:`BertEncoder` parameter to its HF tensor name.

    Handles the layouts found on the hub: bare ``BertModel`` names (MiniLM), a ``bert.`` /
    ``roberta.`` prefix (``BertForPreTraining``, ``RobertaForMaskedLM``), and the legacy
    ``LayerNorm.gamma/beta`` names of old BERT conversions (``bert-base-uncased``).

    Returns:
      ``(mapping, ignorable)`` for :func:`jaxrec.backbones.hf.assign_params`.
    """
    names = set(tensor_names)
    p = hf.find_prefix(names, "embeddings.word_embeddings.weight", ("bert.", "roberta.", "model."))
    legacy = f"{p}embeddings.LayerNorm.gamma" in names
    ln_names = ("gamma", "beta") if legacy else ("weight", "bias")
    dense = hf.dense_entries

    def ln(ours: tuple, theirs: str):
        return hf.layer_norm_entries(ours, theirs, ln_names)

    m: dict = {}
    e = ("embeddings",)
    for ours, theirs in (("word_embeddings", "word_embeddings"), ("position_embeddings", "position_embeddings"),
                         ("token_type_embeddings", "token_type_embeddings")):
        m[e + (ours, "embedding")] = (f"{p}embeddings.{theirs}.weight", None)
    m.update(ln(e + ("layer_norm",), f"{p}embeddings.LayerNorm"))
    for i in range(config.num_layers):
        ours, theirs = (f"layer_{i}",), f"{p}encoder.layer.{i}"
        for name in ("query", "key", "value"):
            m.update(dense(ours + (name,), f"{theirs}.attention.self.{name}"))
        m.update(dense(ours + ("attn_out",), f"{theirs}.attention.output.dense"))
        m.update(ln(ours + ("attn_norm",), f"{theirs}.attention.output.LayerNorm"))
        m.update(dense(ours + ("ffn_in",), f"{theirs}.intermediate.dense"))
        m.update(dense(ours + ("ffn_out",), f"{theirs}.output.dense"))
        m.update(ln(ours + ("ffn_norm",), f"{theirs}.output.LayerNorm"))
    ignorable = BERT_IGNORABLE
    if config.use_pooler:
        m.update(dense(("pooler",), f"{p}pooler.dense"))
    else:
        ignorable = ignorable + (rf"^{re.escape(p)}pooler\.",)
    return m, ignorable


def example_inputs(config: BertConfig, seq_len: int = 8) -> tuple[Array, Array]:
    """``(input_ids [1, T], attention_mask [1, T])`` zeros/ones that ``BertEncoder.init`` traces."""
    ids = jnp.zeros((1, min(seq_len, config.max_position_embeddings - config.position_offset)), jnp.int32)
    return ids, jnp.ones_like(ids)


def init_params(config: BertConfig, rng: jax.Array | None = None, seq_len: int = 8, abstract: bool = False):
    """Initial parameters of :class:`BertEncoder` (``jax.eval_shape`` when ``abstract``)."""
    return hf.template_params(BertEncoder(config), example_inputs(config, seq_len), rng, concrete=not abstract)


def load_bert(
    ckpt_dir: str, dtype: Any = "float32", rng: jax.Array | None = None, **overrides
) -> hf.LoadedBackbone:
    """Loads a BERT / RoBERTa / MiniLM Hugging Face checkpoint (config.json + safetensors).

    Args:
      ckpt_dir: directory with ``config.json`` and ``model.safetensors`` (or shards + index).
      dtype: computation dtype of the returned config; parameters are float32 regardless.
      rng: initialises PEFT parameters (LoRA ``lora_a``, adapters) that no checkpoint holds;
        defaults to ``jax.random.key(0)``. Unused without PEFT.
      **overrides: any :class:`BertConfig` field (``lora_rank=8``, ``adapter_size=64``,
        ``use_pooler=True``, dropout rates, ...).

    Returns:
      :class:`jaxrec.backbones.hf.LoadedBackbone` ``(config, params)`` — the same shape as
      ``load_vit`` / ``load_llama``, so ``config, params = load_bert(...)``; ``params`` is the
      ``'params'`` collection for ``BertEncoder(config).apply({'params': params}, ...)``, as
      device arrays. Only the PEFT leaves (:data:`~jaxrec.backbones.layers.PEFT_KEEP_PATTERNS`)
      are initialised; the pretrained ones are never randomly initialised.

    Raises:
      CheckpointError: unreadable files, or a checkpoint that does not fit (one message that
        lists every missing, unexpected and mis-shaped tensor).
    """
    config = BertConfig.from_hf(hf.read_config(ckpt_dir), dtype=dtype, **overrides)
    return hf.load_backbone(ckpt_dir, config, BertEncoder(config), example_inputs(config), bert_param_mapping,
                            keep=PEFT_KEEP_PATTERNS, rng=rng)
