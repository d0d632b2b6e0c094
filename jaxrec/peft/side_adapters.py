"""Decoupled side networks over frozen towers: IISAN and IISAN-Versa item towers.

Papers:
  * Fu et al., "IISAN: Efficiently Adapting Multimodal Representation for Sequential
    Recommendation with Decoupled PEFT", SIGIR 2024, §3 (Fig. 2): intra- and inter-modal side
    adapted networks (SANs) built from side adapter blocks (SANBs) with learnable gates, fed
    by the hidden states of frozen text and image backbones (spec ``iisan.md`` §1.2–1.7).
  * Fu et al., "Efficient and Effective Adaptation of Multimodal Foundation Models in
    Sequential Recommendation" (IISAN-Versa), arXiv 2411.02992, §3: group layer-dropping
    (GLD), dimension transformation layers (DTL), towers of unequal width and depth (spec
    §2.4–2.6).

The released code's semantics, which the figure does not show (spec §1.16):

* only the first-token ([CLS]) vector of each tapped layer enters a side network, so a
  tower input is ``[N, K, D]`` (one row per item, one column per tap);
* a SANB is ``x + W_up act(W_down x + b_down) + b_up`` (768 -> 64 -> 768, ReLU, N(0, 0.01^2)
  weights, zero biases), i.e. :class:`~jaxrec.peft.adapters.HoulsbyAdapter`;
* each SANB has one scalar gate ``g = sigmoid(theta / 0.1)``, theta initialised to 0 (g = 0.5);
* intra-modal update (convex): ``s_k = SANB_k(g_k H[k] + (1 - g_k) s_{k-1})``, ``s_{-1} = 0``;
* inter-modal update (additive): ``m_k = SANB_k(m_{k-1} + g_k V[k] + (1 - g_k) T[k])``,
  ``m_{-1} = 0``; it never reads the intra states;
* heads ``Lin(768->768) -> Lin(768->64)`` per branch (IISAN) or ``Lin(D->64) -> Lin(64->64)``
  for text/image and ``Lin(Dmin->Dmin) -> Lin(Dmin->64)`` for the inter branch (Versa), then
  ``concat[image, text, inter] -> Linear(192 -> 64)``.

Versa additions: per-tap DTLs ``Linear(D_wide -> D_narrow)`` (untied) on the wider tower's
taps on their way into the inter network; with unequal tap counts the longer tower's extra
leading SANBs run intra-only and the inter network (``min(n_t, n_v)`` blocks) is aligned with
the *last* taps of each tower (spec §2.5). :func:`gld_blocks` gives the tap index tables.

Parameter layout (``'/'`` = nesting; ``k`` counts the tower's taps from 0)::

    text_side/sanb_{k}/{down,up}/{kernel,bias}   text_side/gate_{k}/theta   (same for image_side)
    inter_side/sanb_{k}/..., inter_side/gate_{k}/theta, inter_side/dtl_{k}/{kernel,bias}
    text_proj, text_head, image_proj, image_head, inter_proj, inter_head, fusion
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.peft.adapters import HoulsbyAdapter

Array = Any

MODALITIES = ("all", "intra", "inter", "text")
HEAD_STYLES = ("iisan", "versa")
# Initialisation of the heads, wide projections and fusion (spec §1.7 fixes only the image
# head: Xavier-normal, bias 0; the rest is not pinned down [inferred]):
#   "iisan"  — Xavier-normal on the d-wide heads (and Versa's d-wide projections), flax's
#              default (LeCun-normal) on the D-wide projections and the fusion, biases 0;
#   "xavier" — Xavier-normal on every one of them, biases 0;
#   "torch"  — PyTorch's nn.Linear default everywhere (what an un-reinitialised layer of the
#              released code holds): kernel and bias U(+-1/sqrt(fan_in)).
HEAD_INITS = ("iisan", "xavier", "torch")


def _torch_linear_init(fan_in: int):
    """PyTorch ``nn.Linear.reset_parameters``: kaiming_uniform(a=sqrt(5)) on the weight, i.e.
    U(+-1/sqrt(fan_in)) (variance 1/(3 fan_in)), and U(+-1/sqrt(fan_in)) on the bias."""
    bound = 1.0 / math.sqrt(fan_in)
    uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
    return uniform, uniform


def head_dense(init: str, features: int, fan_in: int, dtype: Any, name: str, xavier: bool) -> nn.Dense:
    """A head / projection / fusion ``nn.Dense`` under the ``init`` style of :data:`HEAD_INITS`.

    ``xavier`` says whether the ``"iisan"`` style uses Xavier-normal for this layer (the
    d-wide heads) or keeps flax's default (the D-wide projections and the fusion).
    """
    if init == "torch":
        kernel, bias = _torch_linear_init(fan_in)
        return nn.Dense(features, dtype=dtype, kernel_init=kernel, bias_init=bias, name=name)
    if init == "xavier" or (init == "iisan" and xavier):
        return nn.Dense(features, dtype=dtype, kernel_init=nn.initializers.xavier_normal(), name=name)
    return nn.Dense(features, dtype=dtype, name=name)

# The released scripts' block lists (0-based block numbers; spec §2.4). The hidden-state
# index is block + 1, and hidden state 0 (the embedding output) is always tapped in front.
GLD_SCRIPT_BLOCKS = {
    12: (1, 3, 5, 7, 9, 11),
    24: (3, 7, 11, 15, 19, 23),
    28: (2, 7, 12, 17, 22, 27),
    32: (1, 7, 13, 19, 25, 31),
    48: (2, 11, 20, 29, 38, 47),
    56: (5, 15, 25, 35, 45, 55),
    80: (4, 19, 34, 49, 64, 79),
}


def gld_blocks(num_layers: int, num_groups: int = 6, stride: Optional[int] = None) -> tuple[int, ...]:
    """Group layer-dropping: the 0-based blocks whose outputs are tapped (IISAN-Versa §3, spec §2.4).

    The ``num_layers`` blocks are cut into ``num_groups`` consecutive groups of ``stride``
    blocks, counted back from the last block, and the top block of each group is tapped:
    ``L-1, L-1-s, ..., L-1-(G-1)s`` in increasing order.

    Args:
      num_layers: depth L of the tower.
      num_groups: G, the number of taps besides the embedding output (6 in every script).
      stride: s; None = the released scripts' choice for that depth when there is one
        (:data:`GLD_SCRIPT_BLOCKS`; e.g. 15 for L = 80), else ``ceil(L / G)``.

    Returns:
      G increasing 0-based block numbers, the last one ``L - 1``.

    Raises:
      ValueError: when the groups do not fit (``(G - 1) * s > L - 1``) or arguments are not positive.
    """
    if num_layers <= 0 or num_groups <= 0:
        raise ValueError(f"gld_blocks: num_layers ({num_layers}) and num_groups ({num_groups}) must be > 0")
    if stride is None:
        if num_groups == 6 and num_layers in GLD_SCRIPT_BLOCKS:
            return GLD_SCRIPT_BLOCKS[num_layers]
        stride = math.ceil(num_layers / num_groups)
    if stride <= 0:
        raise ValueError(f"gld_blocks: stride must be > 0, got {stride}")
    first = num_layers - 1 - (num_groups - 1) * stride
    if first < 0:
        raise ValueError(f"gld_blocks: {num_groups} groups of stride {stride} do not fit in "
                         f"{num_layers} layers")
    return tuple(first + i * stride for i in range(num_groups))


def tap_indices(num_layers: int, num_groups: int = 6, stride: Optional[int] = None,
                include_embedding: bool = True) -> tuple[int, ...]:
    """Indices into HF-style ``hidden_states`` (0 = embedding output, i = block i's output).

    ``tap_indices(12) == (0, 2, 4, 6, 8, 10, 12)``: IISAN's LayerDrop default (spec §1.2).
    """
    taps = tuple(b + 1 for b in gld_blocks(num_layers, num_groups, stride))
    return ((0,) + taps) if include_embedding else taps


class ScalarGate(nn.Module):
    """A learnable scalar gate ``sigmoid(theta / temperature)``, theta initialised to 0 (g = 0.5).

    ``__call__() -> []`` float32 scalar (spec §1.4: temperature 0.1).
    """

    temperature: float = 0.1

    @nn.compact
    def __call__(self) -> Array:
        theta = self.param("theta", nn.initializers.zeros, ())
        return jax.nn.sigmoid(theta / self.temperature)


@dataclasses.dataclass(frozen=True)
class SideConfig:
    """Shape of an IISAN / IISAN-Versa item tower.

    Attributes:
      text_taps, image_taps: number of taps per tower (7 = embedding + 6 GLD taps).
      text_dim, image_dim: tower widths D_t, D_v.
      text_bottleneck, image_bottleneck: SANB inner widths of the intra networks (64).
      inter_bottleneck: SANB inner width of the inter network (64) [inferred for Versa's
        unequal bottlenecks].
      embed_dim: item embedding width d (64).
      activation: SANB non-linearity ("relu" in every script; "gelu" optional).
      temperature: gate temperature (0.1).
      modality: "all" (image, text, inter -> 192 -> d), "intra" (128 -> d), "inter" (d -> d),
        "text" (the text side network alone, d -> d: items without images, e.g. ML-100K).
      heads: "iisan" (Lin(D->D) -> Lin(D->d) per branch, spec §1.7) or "versa" (spec §2.6).
      dtype: computation dtype of the side network (parameters stay float32).
      head_init: initialisation of the heads, projections and fusion (:data:`HEAD_INITS`).
    """

    text_taps: int = 7
    image_taps: int = 7
    text_dim: int = 768
    image_dim: int = 768
    text_bottleneck: int = 64
    image_bottleneck: int = 64
    inter_bottleneck: int = 64
    embed_dim: int = 64
    activation: str = "relu"
    temperature: float = 0.1
    modality: str = "all"
    heads: str = "iisan"
    dtype: str = "float32"
    head_init: str = "iisan"

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"SideConfig.modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.heads not in HEAD_STYLES:
            raise ValueError(f"SideConfig.heads must be one of {HEAD_STYLES}, got {self.heads!r}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"SideConfig.head_init must be one of {HEAD_INITS}, got {self.head_init!r}")
        for name in ("text_taps", "image_taps", "text_dim", "image_dim", "text_bottleneck",
                     "image_bottleneck", "inter_bottleneck", "embed_dim"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"SideConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.heads == "iisan" and self.text_dim != self.image_dim and self.modality in ("all", "inter"):
            raise ValueError("SideConfig: IISAN heads need equal tower widths for the inter branch; "
                             "use heads='versa' (with DTLs) for text_dim != image_dim")

    @property
    def inter_taps(self) -> int:
        """min(n_t, n_v): blocks of the inter network (aligned with the last taps)."""
        return min(self.text_taps, self.image_taps)

    @property
    def inter_dim(self) -> int:
        """Width of the inter network, min(D_t, D_v) (the wider tower goes through DTLs)."""
        return min(self.text_dim, self.image_dim)


class _GatedChain(nn.Module):
    """K gated SANBs (``sanb_k`` and ``gate_k``); subclasses define the recurrence."""

    num_taps: int
    bottleneck: int
    activation: str = "relu"
    temperature: float = 0.1
    dtype: Any = jnp.float32

    def gate(self, k: int) -> Array:
        return ScalarGate(self.temperature, name=f"gate_{k}")().astype(self.dtype)

    def sanb(self, k: int, x: Array) -> Array:
        return HoulsbyAdapter(self.bottleneck, self.activation, dtype=self.dtype, name=f"sanb_{k}")(x)


class IntraSideNetwork(_GatedChain):
    """One modality's gated chain of SANBs (spec §1.5): ``taps [N, K, D] -> s_{K-1} [N, D]``."""

    @nn.compact
    def __call__(self, taps: Array) -> Array:
        if taps.ndim != 3 or taps.shape[1] != self.num_taps:
            raise ValueError(f"{self.name}: taps must be [N, K={self.num_taps}, D], got {taps.shape}")
        taps = taps.astype(self.dtype)
        s = jnp.zeros_like(taps[:, 0])
        for k in range(self.num_taps):
            g = self.gate(k)
            # Convex blend of the backbone tap and the previous side state.
            s = self.sanb(k, g * taps[:, k] + (1 - g) * s)
        return s


class InterSideNetwork(_GatedChain):
    """The inter-modal gated chain (spec §1.6, §2.5): ``(text [N, K, Dt], image [N, K, Dv]) -> [N, Dmin]``.

    ``m_k = SANB_k(m_{k-1} + g_k V[k] + (1 - g_k) T[k])``, after a per-tap DTL on whichever
    tower is wider (none when the widths agree).
    """

    @nn.compact
    def __call__(self, text: Array, image: Array) -> Array:
        k_t, k_v = text.shape[1], image.shape[1]
        if k_t != self.num_taps or k_v != self.num_taps:
            raise ValueError(f"{self.name}: both tap stacks must have K={self.num_taps} taps, "
                             f"got text {text.shape} and image {image.shape}")
        d_t, d_v = text.shape[-1], image.shape[-1]
        text, image = text.astype(self.dtype), image.astype(self.dtype)
        m = jnp.zeros(text.shape[:1] + (min(d_t, d_v),), self.dtype)
        for k in range(self.num_taps):
            t, v = text[:, k], image[:, k]
            # Dimension transformation layers (Versa §3): untied, one per tap, on the wider tower.
            if d_t > d_v:
                t = nn.Dense(d_v, dtype=self.dtype, name=f"dtl_{k}")(t)
            elif d_v > d_t:
                v = nn.Dense(d_t, dtype=self.dtype, name=f"dtl_{k}")(v)
            g = self.gate(k)
            m = self.sanb(k, m + g * v + (1 - g) * t)
        return m


class IISANItemTower(nn.Module):
    """Side networks, heads and fusion: ``(text_taps [N, Kt, Dt], image_taps [N, Kv, Dv]) -> [N, d]``.

    ``image_taps`` is None exactly when ``cfg.modality == 'text'``.

    With ``cfg.heads == 'iisan'`` and 7 + 7 taps of width 768 this is the released IISAN
    item tower (spec §1.5–1.7); Versa options in :class:`SideConfig`.
    """

    cfg: SideConfig

    @nn.compact
    def __call__(self, text_taps: Array, image_taps: Optional[Array] = None) -> Array:
        cfg = self.cfg
        dt = jnp.dtype(cfg.dtype)
        if (image_taps is None) != (cfg.modality == "text"):
            raise ValueError(f"IISANItemTower: image_taps must be given unless modality='text' "
                             f"(modality={cfg.modality!r})")
        checks = [("text_taps", text_taps, cfg.text_taps, cfg.text_dim)]
        if image_taps is not None:
            checks.append(("image_taps", image_taps, cfg.image_taps, cfg.image_dim))
        for name, taps, k, d in checks:
            if taps.ndim != 3 or taps.shape[1:] != (k, d):
                raise ValueError(f"IISANItemTower: {name} must be [N, {k}, {d}], got {taps.shape}")
        # Xavier-normal for the d-wide heads (the ViT classifier replacement, spec §1.7);
        # the wide projections keep the default [inferred] (cfg.head_init: other choices).
        # Dense infers its input width; fan_in is only read by the 'torch' style.
        head = lambda n, name, fan_in: head_dense(cfg.head_init, n, fan_in, dt, name, True)
        wide = lambda n, name, fan_in: head_dense(cfg.head_init, n, fan_in, dt, name, False)
        e = cfg.embed_dim
        parts = []
        if cfg.modality == "text":
            s_txt = IntraSideNetwork(cfg.text_taps, cfg.text_bottleneck, cfg.activation,
                                     cfg.temperature, dt, name="text_side")(text_taps)
            proj = (wide(cfg.text_dim, "text_proj", cfg.text_dim) if cfg.heads == "iisan"
                    else head(e, "text_proj", cfg.text_dim))
            parts.append(head(e, "text_head", proj.features)(proj(s_txt)))
        if cfg.modality in ("all", "intra"):
            s_img = IntraSideNetwork(cfg.image_taps, cfg.image_bottleneck, cfg.activation,
                                     cfg.temperature, dt, name="image_side")(image_taps)
            s_txt = IntraSideNetwork(cfg.text_taps, cfg.text_bottleneck, cfg.activation,
                                     cfg.temperature, dt, name="text_side")(text_taps)
            if cfg.heads == "iisan":
                e_img = head(e, "image_head", cfg.image_dim)(wide(cfg.image_dim, "image_proj", cfg.image_dim)(s_img))
                e_txt = head(e, "text_head", cfg.text_dim)(wide(cfg.text_dim, "text_proj", cfg.text_dim)(s_txt))
            else:
                e_img = head(e, "image_head", e)(head(e, "image_proj", cfg.image_dim)(s_img))
                e_txt = head(e, "text_head", e)(head(e, "text_proj", cfg.text_dim)(s_txt))
            parts += [e_img, e_txt]
        if cfg.modality in ("all", "inter"):
            n = cfg.inter_taps
            m = InterSideNetwork(n, cfg.inter_bottleneck, cfg.activation, cfg.temperature, dt,
                                 name="inter_side")(text_taps[:, -n:], image_taps[:, -n:])
            e_mm = head(e, "inter_head", cfg.inter_dim)(wide(cfg.inter_dim, "inter_proj", cfg.inter_dim)(m))
            parts.append(e_mm)
        # concat[image, text, inter] -> Linear(192 -> d), no activation (spec §1.7).
        fused = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
        return wide(e, "fusion", fused.shape[-1])(fused).astype(jnp.float32)


class BackboneHeadTower(nn.Module):
    """The baselines' item tower (spec §1.12: FFT, Adapter, LoRA, BitFit).

    ``(text_cls [N, Dt], image_cls [N, Dv]) -> [N, d]``: image ``GELU(Lin(final-LN [CLS]))``,
    text ``GELU(Lin(last-layer [CLS]))``, ``concat -> Linear(2d -> d)``.
    """

    embed_dim: int = 64

    @nn.compact
    def __call__(self, text_cls: Array, image_cls: Array) -> Array:
        gelu = lambda x: nn.gelu(x, approximate=False)
        e_img = gelu(nn.Dense(self.embed_dim, kernel_init=nn.initializers.xavier_normal(),
                              name="image_head")(image_cls))
        e_txt = gelu(nn.Dense(self.embed_dim, name="text_head")(text_cls))
        return nn.Dense(self.embed_dim, name="fusion")(jnp.concatenate([e_img, e_txt], -1)).astype(jnp.float32)


def gate_values(params: Any, temperature: float = 0.1) -> dict[str, list[float]]:
    """The gates ``sigmoid(theta / T)`` of a tower's parameters, per side network, in tap order.

    Args:
      params: the tower's parameter dict (with ``text_side`` / ``image_side`` / ``inter_side``).
    Returns:
      ``{'text_side': [g_0, ...], ...}`` for the networks present.
    """
    out = {}
    for net in ("text_side", "image_side", "inter_side"):
        if net not in params:
            continue
        gates = sorted((int(k.split("_")[1]), v["theta"]) for k, v in params[net].items()
                       if k.startswith("gate_"))
        out[net] = [float(jax.nn.sigmoid(jnp.asarray(t) / temperature)) for _, t in gates]
    return out


def select_taps(hidden_states: Sequence[Array], indices: Sequence[int], pool: str = "cls",
                mask: Optional[Array] = None) -> Array:
    """``[N, K, D]`` taps from HF-style hidden states.

    Args:
      hidden_states: L + 1 arrays ``[N, T, D]``.
      indices: which entries (e.g. :func:`tap_indices`).
      pool: ``"cls"`` (first token; BERT / ViT, spec §1.2), ``"mean"`` (mean over the tokens
        with ``mask`` = 1; Versa's LLM towers with padding excluded) or ``"mean_all"`` (mean
        over every position, padding included — the released code's quirk, spec §2.3).
      mask: ``[N, T]`` 1 for real tokens (``"mean"`` only).

    Returns:
      ``[N, K, D]`` in the hidden states' dtype.
    """
    n_hidden = len(hidden_states)
    bad = [i for i in indices if not 0 <= i < n_hidden]
    if bad:
        raise ValueError(f"select_taps: tap indices {bad} outside the {n_hidden} hidden states")
    picked = [hidden_states[i] for i in indices]
    if pool == "cls":
        return jnp.stack([h[:, 0] for h in picked], axis=1)
    if pool == "mean_all":
        return jnp.stack([h.mean(axis=1) for h in picked], axis=1)
    if pool == "mean":
        if mask is None:
            raise ValueError("select_taps: pool='mean' needs the attention mask [N, T]")
        w = mask.astype(jnp.float32)[..., None]
        denom = jnp.maximum(w.sum(axis=1), 1.0)
        return jnp.stack([((h.astype(jnp.float32) * w).sum(axis=1) / denom).astype(h.dtype)
                          for h in picked], axis=1)
    raise ValueError(f"select_taps: pool must be 'cls', 'mean' or 'mean_all', got {pool!r}")
