"""Shared pieces of the four sequential state encoders: config, padding, reading the state.

The encoders reimplement the state networks of the RL recommender papers (Xin et al.,
SQN/SAC, SIGIR 2020; SNQN/SA2C, WSDM 2022; PRL, SIGIR 2022 — specs/rl.md §2) and the
SASRec user encoders of IISAN (Fu et al., SIGIR 2024 — specs/iisan.md §1.8) and PCRec
(Sun et al., SIGIR 2022 — specs/intent_pcrec.md §2.5).

Padding conventions (both must work, rl.md §1.4 and iisan.md §1.13):

- ``padding='right'``: items are ``0..N-1``, the pad id is ``N`` and sits *after* the
  history (the RL papers). ``lengths`` counts real items, except that an empty history has
  ``length = 1`` (the papers' rule, so that position ``len-1`` is a valid read index). The
  state is read at position ``len-1`` (GRU: the hidden state after ``len`` steps).
- ``padding='left'``: items are shifted by one (``1..N``), the pad id is ``0`` and sits
  *before* the history (IISAN, PCRec). The last real item is always at position ``L-1``,
  which is where the state is read.

In both cases the item table has ``N + 1`` rows, the pad row included. It is trainable and
never zeroed (rl.md §2): Caser, NextItNet and SASRec multiply it away with the padding
mask, GRU4Rec with right padding consumes it when ``len = 1`` and the history is empty.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

PADDINGS = ("right", "left")
NORM_STYLES = ("reference", "post_ln")
POSITION_IDS = ("index", "from_first")

# SASRec FFN activations. 'gelu' is the exact erf form of BERT and RecBole
# (``x * 0.5 * (1 + erf(x / sqrt(2)))``); 'gelu_tanh' is the tanh approximation of GPT-2.
# jax.nn.gelu defaults to the approximation, so the flag is spelled out on both.
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}

# The TF1 reference (kang205 SASRec modules, reused by the SQN code) replaces masked
# attention logits by -2**32 + 1; IISAN adds -1e9. Either is "minus infinity" for softmax
# in float32, but the value is kept configurable so outputs can be compared bit for bit.
REFERENCE_MASK_VALUE = float(-(2 ** 32) + 1)
POST_LN_MASK_VALUE = -1e9


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of every sequential encoder (one dataclass for all four).

    Fields that belong to one encoder are ignored by the others. ``None`` means "the
    default of the chosen encoder or style", resolved by the ``resolved_*`` methods, so one
    config can be reused while switching encoders.

    Shared:
      embed_dim: item-embedding width D (64 in every RL paper).
      state_len: history window L (10). SASRec's position table and Caser's vertical
        filter have exactly this many rows.
      padding: 'right' (pad id N after the history) or 'left' (pad id 0 before it, items
        shifted by one). See the module docstring.
      pad_id: optional; when given it must equal the id implied by ``padding`` (the table
        has N + 1 rows, so the pad can only be N on the right or 0 on the left).
      dropout: dropout rate; None = the encoder's reference default (SASRec 0.1, Caser 0.0
        as in the SQN/SAC scripts — set 0.1 for SA2C — GRU4Rec/NextItNet 0.0).

    GRU4Rec:
      gru_hidden: hidden size (64; the state dimension).

    Caser:
      num_h_filters: horizontal filters per height (16).
      filter_heights: heights of the horizontal filters ((2, 3, 4)).
      num_v_filters: vertical filters (1), each L x 1 over time.

    NextItNet:
      dilations: per residual block ((1, 2, 1, 2, 1, 2)); a block's second conv uses 2d.
      kernel_size: causal conv width (3).

    SASRec:
      num_blocks, num_heads, ffn_dim: 1, 1, 64 in the RL papers; 2, 2, 256 in IISAN.
      ln_eps: LayerNorm epsilon (1e-8 in the TF reference, also used by NextItNet).
      norm_style: 'reference' = the SQN code's arrangement (Q from LN(x), K and V from x,
        residual LN(x), FFN on its LN'd input, mask, final LN); 'post_ln' = IISAN's
        post-LN transformer (input LN, Q/K/V/O without bias, Add&LN after each sublayer).
      scale_embedding: multiply item embeddings by sqrt(D) (off in the SQN code).
      causal: causal attention mask (on).
      attention_mask_value: logit given to masked keys; None = -2**32+1 ('reference') or
        -1e9 ('post_ln').
      attn_bias, attn_out_proj, input_ln, final_ln: None = the style's choice ('reference':
        biased Q/K/V, no output projection, no input LN, final LN; 'post_ln': bias-free,
        output projection, input LN, no final LN). PCRec's SASRec is 'post_ln' with
        attn_bias=True, attn_out_proj=False, input_ln=False, ln_eps=1e-5.
      activation: FFN non-linearity, one of ``ACTIVATIONS``: 'relu' (the SASRec paper, SQN,
        IISAN), 'gelu' (exact erf GELU, RecBole/BERT) or 'gelu_tanh' (tanh approximation).
      attn_dropout: rate on the attention weights; None = ``dropout``. RecBole keeps it
        apart from the hidden rate (``attn_dropout_prob`` vs ``hidden_dropout_prob``).
      ffn_internal_dropout: dropout inside the FFN, after the activation and after the
        output Dense (the TF reference's two conv1d layers). 'post_ln' also drops the FFN
        sublayer's output before its residual, so with this on the output Dense is dropped
        twice; RecBole's FeedForward has only that sublayer dropout (set False).
      init_std: None = the style's initialisers (items N(0, 0.01); 'reference': positions
        N(0, 0.01), Glorot-uniform Dense; 'post_ln': Glorot-normal positions and Dense). A
        float = N(0, init_std) for the item table, the position table and every Dense
        kernel, biases 0 (BERT's and RecBole's ``initializer_range``, 0.02).
      ffn_conv: the FFN's two layers as kernel-1 Conv1d (``inner_cnn`` / ``readout_cnn``,
        kernels ``[1, D, F]``) instead of Dense (``inner`` / ``outer``). Numerically the
        same map; it gives PCRec's parameter layout (``SASRec/Modules.py`` ``feedforward``),
        whose transplanting treats the ``cnn`` tensors as their own layers. Off by default.
      position_ids: 'index' = position j of the array gets P[j] (kang205, SQN, IISAN: with
        left padding the newest item is always at P[L-1]); 'from_first' = the k-th real
        item, counting from 0 at the oldest one in the window, gets P[k] (RecBole, which
        pads on the right). Both agree when the window is full or padding is 'right'.

    YouTube-DNN (PCRec's ``YoutubeDNN.py``):
      mlp_layers: Dense(D) + ReLU layers applied to each item vector before pooling (1).
      mean_over_pads: average over all L positions, pads included, as the PCRec code's
        ``torch.mean(h, dim=1)`` does (a pad contributes ReLU(bias)); False = mean over
        the real items only.
    """

    embed_dim: int = 64
    state_len: int = 10
    padding: str = "right"
    pad_id: Optional[int] = None
    dropout: Optional[float] = None
    # GRU4Rec
    gru_hidden: int = 64
    # Caser
    num_h_filters: int = 16
    filter_heights: tuple = (2, 3, 4)
    num_v_filters: int = 1
    # NextItNet
    dilations: tuple = (1, 2, 1, 2, 1, 2)
    kernel_size: int = 3
    # SASRec
    num_blocks: int = 1
    num_heads: int = 1
    ffn_dim: int = 64
    ln_eps: float = 1e-8
    norm_style: str = "reference"
    scale_embedding: bool = False
    causal: bool = True
    attention_mask_value: Optional[float] = None
    attn_bias: Optional[bool] = None
    attn_out_proj: Optional[bool] = None
    input_ln: Optional[bool] = None
    final_ln: Optional[bool] = None
    activation: str = "relu"
    attn_dropout: Optional[float] = None
    ffn_internal_dropout: bool = True
    init_std: Optional[float] = None
    position_ids: str = "index"
    ffn_conv: bool = False
    # YouTube-DNN
    mlp_layers: int = 1
    mean_over_pads: bool = False

    def __post_init__(self):
        # Lists from YAML/ConfigDict become tuples so the config stays hashable (linen
        # module attributes and jit static arguments must be).
        for name in ("filter_heights", "dilations"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self):
        def fail(field, msg):
            raise ValueError(f"EncoderConfig.{field}: {msg}")

        if self.padding not in PADDINGS:
            fail("padding", f"expected one of {PADDINGS}, got {self.padding!r}")
        if self.norm_style not in NORM_STYLES:
            fail("norm_style", f"expected one of {NORM_STYLES}, got {self.norm_style!r}")
        for name in ("embed_dim", "state_len", "gru_hidden", "num_h_filters",
                     "num_v_filters", "kernel_size", "num_blocks", "num_heads", "ffn_dim"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                fail(name, f"expected a positive integer, got {value!r}")
        if self.activation not in ACTIVATIONS:
            fail("activation", f"expected one of {tuple(ACTIVATIONS)}, got "
                 f"{self.activation!r}")
        if self.position_ids not in POSITION_IDS:
            fail("position_ids", f"expected one of {POSITION_IDS}, got {self.position_ids!r}")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                fail(name, f"expected a rate in [0, 1), got {value!r}")
        if self.init_std is not None and not self.init_std > 0:
            fail("init_std", f"expected a positive standard deviation, got {self.init_std!r}")
        if not self.filter_heights or any(h <= 0 or h > self.state_len
                                           for h in self.filter_heights):
            fail("filter_heights", f"each height must be in [1, state_len={self.state_len}],"
                 f" got {self.filter_heights!r}")
        if not self.dilations or any(d <= 0 for d in self.dilations):
            fail("dilations", f"expected positive integers, got {self.dilations!r}")
        if self.embed_dim % self.num_heads:
            fail("num_heads", f"embed_dim={self.embed_dim} is not divisible by "
                 f"num_heads={self.num_heads}")
        if not isinstance(self.mlp_layers, (int, np.integer)) or self.mlp_layers < 0:
            fail("mlp_layers", f"expected a non-negative integer, got {self.mlp_layers!r}")
        if self.ln_eps <= 0:
            fail("ln_eps", f"expected a positive epsilon, got {self.ln_eps!r}")

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, d: Any) -> "EncoderConfig":
        """Builds a config from a dict or an ``ml_collections.ConfigDict``.

        Unknown keys raise a ValueError naming them (a typo must not be silently ignored).
        """
        if hasattr(d, "to_dict"):
            d = d.to_dict()
        if not isinstance(d, Mapping):
            raise TypeError(f"EncoderConfig.from_dict expects a mapping or ConfigDict, "
                            f"got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"EncoderConfig: unknown field(s) {unknown}; "
                             f"known fields are {sorted(known)}")
        return cls(**dict(d))

    def to_dict(self) -> dict:
        """Plain-dict view (tuples kept), e.g. for logging or a ConfigDict."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "EncoderConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- resolution
    def resolved_pad_id(self, num_items: int) -> int:
        """The pad id: ``num_items`` for right padding, ``0`` for left padding."""
        implied = num_items if self.padding == "right" else 0
        if self.pad_id is not None and self.pad_id != implied:
            raise ValueError(
                f"EncoderConfig.pad_id={self.pad_id} does not match padding="
                f"{self.padding!r} with num_items={num_items}: the item table has "
                f"num_items + 1 rows, so the pad id must be {implied}")
        return implied

    def resolved_dropout(self, default: float) -> float:
        """``cfg.dropout`` if set, else the encoder's reference ``default``."""
        return float(default if self.dropout is None else self.dropout)

    def resolved_attn_dropout(self, default: float) -> float:
        """``cfg.attn_dropout`` if set, else the hidden rate ``resolved_dropout(default)``."""
        if self.attn_dropout is None:
            return self.resolved_dropout(default)
        return float(self.attn_dropout)

    def _style(self, value, reference, post_ln):
        if value is not None:
            return value
        return reference if self.norm_style == "reference" else post_ln

    def resolved_mask_value(self) -> float:
        """Logit for masked attention entries (-2**32+1 'reference', -1e9 'post_ln')."""
        return float(self._style(self.attention_mask_value, REFERENCE_MASK_VALUE,
                                 POST_LN_MASK_VALUE))

    def resolved_attn_bias(self) -> bool:
        """Biases on the attention projections (True 'reference', False 'post_ln')."""
        return bool(self._style(self.attn_bias, True, False))

    def resolved_attn_out_proj(self) -> bool:
        """Output projection after attention (False 'reference', True 'post_ln')."""
        return bool(self._style(self.attn_out_proj, False, True))

    def resolved_input_ln(self) -> bool:
        """LN on item + position embeddings (False 'reference', True 'post_ln')."""
        return bool(self._style(self.input_ln, False, True))

    def resolved_final_ln(self) -> bool:
        """LN after the last block (True 'reference', False 'post_ln')."""
        return bool(self._style(self.final_ln, True, False))


# ------------------------------------------------------------------ input handling
def _is_concrete(x) -> bool:
    """True for arrays whose values can be read now (not under jit/eval_shape tracing)."""
    return isinstance(x, (np.ndarray, jax.Array)) and not isinstance(x, jax.core.Tracer)


def check_items(items, lengths, num_items: int, cfg: EncoderConfig, encoder: str,
                exact_len: bool = False, max_len: Optional[int] = None) -> None:
    """Validates ``items [B, L]`` and ``lengths [B]``; raises naming the tensor.

    Shape and dtype are checked always (they are static under jit); value ranges only
    when the arrays are concrete, since a traced value cannot raise.
    """
    items_shape = getattr(items, "shape", None)
    if items_shape is None or len(items_shape) != 2:
        raise ValueError(f"{encoder}: items must have shape [B, L], got {items_shape}")
    if not jnp.issubdtype(items.dtype, jnp.integer):
        raise TypeError(f"{encoder}: items must be integer ids, got dtype {items.dtype}")
    B, L = items_shape
    if exact_len and L != cfg.state_len:
        raise ValueError(f"{encoder}: items has length L={L} but the config's state_len is "
                         f"{cfg.state_len} (the layer sizes depend on it)")
    if max_len is not None and L > max_len:
        raise ValueError(f"{encoder}: items has length L={L} > state_len={max_len} "
                         f"(the position table has {max_len} rows)")
    if lengths is not None:
        if getattr(lengths, "shape", None) != (B,):
            raise ValueError(f"{encoder}: lengths must have shape [B]=({B},), got "
                             f"{getattr(lengths, 'shape', None)}")
        if not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise TypeError(f"{encoder}: lengths must be integers, got {lengths.dtype}")
    if _is_concrete(items):
        a = np.asarray(items)
        if a.size and (a.min() < 0 or a.max() > num_items):
            raise ValueError(f"{encoder}: items ids must be in [0, num_items={num_items}] "
                             f"(pad included), got range [{a.min()}, {a.max()}]")
    if lengths is not None and _is_concrete(lengths):
        n = np.asarray(lengths)
        if n.size and (n.min() < 0 or n.max() > L):
            raise ValueError(f"{encoder}: lengths must be in [0, L={L}], got range "
                             f"[{n.min()}, {n.max()}]")


def valid_mask(items: jax.Array, pad_id: int) -> jax.Array:
    """``[B, L]`` bool: True where the id is a real item (the reference's ``ids != pad``)."""
    return items != pad_id


def resolve_lengths(items: jax.Array, lengths: Optional[jax.Array], pad_id: int,
                    padding: str) -> jax.Array:
    """``[B]`` int32 lengths; derived from the pad mask when ``lengths`` is None.

    Right padding follows the papers' rule of length 1 for an empty history; left
    padding counts real items (0 for an empty history).
    """
    if lengths is not None:
        return lengths.astype(jnp.int32)
    count = jnp.sum(valid_mask(items, pad_id), axis=1).astype(jnp.int32)
    return jnp.maximum(count, 1) if padding == "right" else count


def read_index(lengths: jax.Array, L: int, padding: str) -> jax.Array:
    """``[B]`` position whose output is the state: ``len-1`` (right) or ``L-1`` (left).

    ``len-1`` is clipped into ``[0, L-1]`` so a length of 0 cannot wrap around to the end.
    """
    if padding == "left":
        return jnp.full(lengths.shape, L - 1, jnp.int32)
    return jnp.clip(lengths - 1, 0, L - 1).astype(jnp.int32)


def gather_positions(seq: jax.Array, index: jax.Array) -> jax.Array:
    """``seq [B, L, D]``, ``index [B]`` -> ``[B, D]`` (the reference's ``extract_axis_1``)."""
    return jnp.take_along_axis(seq, index[:, None, None], axis=1)[:, 0, :]


def read_state(seq: jax.Array, items: jax.Array, lengths: Optional[jax.Array],
               pad_id: int, padding: str) -> jax.Array:
    """Per-position outputs ``[B, L, D]`` -> the state ``[B, D]`` where the papers read it."""
    lengths = resolve_lengths(items, lengths, pad_id, padding)
    return gather_positions(seq, read_index(lengths, seq.shape[1], padding))


class ItemEncoderBase(nn.Module):
    """Owns the item table (``num_items + 1`` rows, :meth:`item_init`, pad row trainable).

    Attributes:
      num_items: N, the number of real items.
      cfg: the :class:`EncoderConfig`.
    """

    num_items: int
    cfg: EncoderConfig = EncoderConfig()

    # Each encoder sets its reference dropout (used when cfg.dropout is None).
    default_dropout = 0.0
    name_for_errors = "encoder"

    def setup(self):
        if self.num_items <= 0:
            raise ValueError(f"{self.name_for_errors}: num_items must be positive, got "
                             f"{self.num_items}")
        self.item_embed = nn.Embed(self.num_items + 1, self.cfg.embed_dim,
                                   embedding_init=self.item_init(),
                                   name="item_embed")

    def item_init(self) -> nn.initializers.Initializer:
        """Initialiser of the item table: N(0, 0.01), the RL papers' (rl.md §2)."""
        return nn.initializers.normal(stddev=0.01)

    @property
    def pad_id(self) -> int:
        """The padding id implied by ``cfg.padding`` (N on the right, 0 on the left)."""
        return self.cfg.resolved_pad_id(self.num_items)

    @property
    def dropout_rate(self) -> float:
        """The dropout rate in effect (``cfg.dropout`` or the encoder's default)."""
        return self.cfg.resolved_dropout(self.default_dropout)

    def __call__(self, items: jax.Array, lengths: Optional[jax.Array] = None, *,
                 train: bool = False) -> jax.Array:
        """State ``[B, D]``: the output of :meth:`sequence` at position len-1 (right
        padding) or L-1 (left padding), where NextItNet and SASRec are read. Encoders with
        another read-out (GRU4Rec's h_len, Caser's pooled convolutions) override this.

        Args:
          items: ``[B, L]`` int ids; lengths: ``[B]`` int or None (derived from the pad
            mask); train: dropout switch.
        """
        seq = self.sequence(items, lengths, train=train)
        return read_state(seq, items, lengths, self.pad_id, self.cfg.padding)

    def embed(self, items: jax.Array) -> jax.Array:
        """Item-table lookup: ``items [...]`` int -> ``[..., D]`` (pad row included)."""
        return self.item_embed(items)

    def item_embeddings(self) -> jax.Array:
        """The real items' rows in item order, ``[N, D]`` (pad row dropped).

        Row ``i`` is item ``i`` for right padding (table rows ``0..N-1``) and item ``i``
        shifted to id ``i+1`` for left padding (table rows ``1..N``). Methods that tie
        their output layer to the input embeddings score against this.
        """
        table = self.item_embed.embedding
        return table[: self.num_items] if self.cfg.padding == "right" else table[1:]
