"""SASRec encoder in two arrangements: the SQN reference and IISAN's post-LN transformer.

Paper: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018 (§III-B/C
self-attention block, point-wise FFN, learned positions).

``norm_style='reference'`` — the state encoder of Xin et al. (SQN/SAC SIGIR 2020,
SNQN/SA2C WSDM 2022, PRL SIGIR 2022; specs/rl.md §2), i.e. the TF1 ``SASRec_*.py`` scripts
with kang205's ``modules.py``:
- x = dropout(E[items] + P) * mask; learned positions P ~ N(0, 0.01); **no** sqrt(D)
  scaling of the item embeddings.
- Per block: Q = Dense(LN(x)), K = Dense(x), V = Dense(x) (biased, Glorot-uniform, no
  output projection); logits / sqrt(D/heads); masked keys and the causal upper triangle get
  -2**32+1; softmax; padded query rows zeroed; dropout on the weights;
  h = A V + LN(x). FFN: f = LN(h); dropout(Dense(dropout(relu(Dense(f))))) + f; then
  · mask. A final LN (eps 1e-8) after the last block.
- The state is the output at position len-1.
- Deviation: the reference detects padded keys/queries by "the vector sums to 0"; here the
  pad mask comes from the ids. They agree on every pad position (which is exactly 0); the
  sum test can also fire by accident on a real position (e.g. an LN output whose entries
  sum to 0 at initialisation), which is not reproduced.

``norm_style='post_ln'`` — IISAN's user encoder (Fu et al., SIGIR 2024; specs/iisan.md
§1.8): x = dropout(LN(E[items]·mask + P)); per block: LN(x + dropout(O(attn(x)))) with
bias-free Q/K/V/O, then LN(h + dropout(FFN(h))) with a ReLU FFN of width ``ffn_dim``;
Xavier-normal init; causal + padding mask; left padding; the state is the last position.
At d = 64, 2 blocks, 2 heads, FFN 256 this has 100,224 parameters besides the item table —
exactly what IISAN's 4,113,877 total leaves after its adapters and heads. PCRec's SASRec
(specs/intent_pcrec.md §2.5) is 'post_ln' with biased Q/K/V, no output projection and no
input LN (see :class:`~jaxrec.encoders.common.EncoderConfig`).

In both styles padded query rows attend to nothing, so a pad position's output depends
only on its own input and ``sequence()`` is causal at every position.

RecBole's SASRec (Zhao et al., "RecBole", CIKM 2021; its ``SASRec`` model with
``loss_type='CE'`` and the BERT-style ``TransformerEncoder``) is the 'post_ln' arrangement
with the fields in :data:`RECBOLE_SASREC`: biased Q/K/V/O, exact-erf GELU, one dropout on
each sublayer's output (hidden rate) and a separate rate on the attention weights, LN eps
1e-12, N(0, 0.02) init for every Linear and Embedding weight with zero biases, and
positions counted from the oldest item (it pads on the right). Its padding handling differs
only where it cannot matter: it feeds E[0] + P at pad positions and adds -10000 to masked
logits instead of replacing them, and every pad key is masked for a real query.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxrec.encoders.common import (ACTIVATIONS, EncoderConfig, ItemEncoderBase,
                                    check_items, valid_mask)

# RecBole's SASRec defaults (recbole/properties/model/SASRec.yaml, overall.yaml and the
# dataset's MAX_ITEM_LIST_LENGTH) as EncoderConfig fields; with left-padded inputs from
# jaxrec.data.examples.leave_one_out. Use as ``EncoderConfig(**RECBOLE_SASREC)``.
RECBOLE_SASREC = dict(
    embed_dim=64, state_len=50, padding="left", norm_style="post_ln",
    num_blocks=2, num_heads=2, ffn_dim=256, activation="gelu",
    dropout=0.5, attn_dropout=0.5, ffn_internal_dropout=False,
    ln_eps=1e-12, init_std=0.02, attn_bias=True, attn_out_proj=True,
    input_ln=True, final_ln=False, position_ids="from_first",
    attention_mask_value=-10000.0,
)


def _dense_init(cfg: EncoderConfig):
    # TF1 dense/conv1d default to Glorot-uniform; IISAN's code uses Xavier-normal; BERT
    # and RecBole draw N(0, initializer_range).
    if cfg.init_std is not None:
        return nn.initializers.normal(stddev=cfg.init_std)
    if cfg.norm_style == "reference":
        return nn.initializers.glorot_uniform()
    return nn.initializers.glorot_normal()


class MultiHeadAttention(nn.Module):
    """Masked multi-head attention with separate query and key/value inputs.

    Attributes:
      dim: model width D (split into ``num_heads`` heads of D / num_heads).
      num_heads: number of heads.
      use_bias: biases on the Q/K/V (and O) projections.
      out_proj: apply an output projection O (IISAN) or not (SQN reference).
      dropout: rate on the attention weights.
      mask_value: logit that replaces masked entries.
      kernel_init: projection initialiser.
    """

    dim: int
    num_heads: int
    use_bias: bool
    out_proj: bool
    dropout: float
    mask_value: float
    kernel_init: nn.initializers.Initializer = nn.initializers.glorot_uniform()

    @nn.compact
    def __call__(self, queries: jax.Array, keys: jax.Array, mask: jax.Array,
                 query_valid: jax.Array, *, train: bool) -> jax.Array:
        """Attention output before any residual.

        Args:
          queries: ``[B, Lq, D]``; keys: ``[B, Lk, D]`` (also the values' input).
          mask: ``[B, Lq, Lk]`` bool, True = may attend.
          query_valid: ``[B, Lq]`` bool; rows with False get all-zero weights.
          train: enables dropout on the attention weights.
        Returns:
          ``[B, Lq, D]``.
        """
        H = self.num_heads
        dh = self.dim // H
        dense = lambda name: nn.Dense(self.dim, use_bias=self.use_bias,
                                      kernel_init=self.kernel_init, name=name)
        split = lambda t: t.reshape(t.shape[:2] + (H, dh))       # [B, L, H, dh]
        q = split(dense("query")(queries))
        k = split(dense("key")(keys))
        v = split(dense("value")(keys))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(dh))
        logits = jnp.where(mask[:, None], logits, self.mask_value)
        weights = jax.nn.softmax(logits, axis=-1)
        # Query masking (reference) — also keeps fully-masked pad rows from averaging
        # over future keys, so per-position outputs stay causal.
        weights = weights * query_valid[:, None, :, None]
        if self.dropout > 0:
            weights = nn.Dropout(self.dropout)(weights, deterministic=not train)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(queries.shape[:2] + (self.dim,))
        if self.out_proj:
            out = dense("out")(out)
        return out


class _FeedForward(nn.Module):
    """Point-wise FFN ``[B, L, D] -> [B, L, D]``: Dense(ffn_dim) -> activation -> Dense(D),
    with dropout after each layer (the reference's two kernel-1 conv1d layers; a rate of 0
    leaves both out). ``conv=True`` builds the two layers as kernel-1 convolutions over
    the positions (PCRec's ``inner_cnn`` / ``readout_cnn``, kernels ``[1, D, F]``): the same
    map, PCRec's parameter layout."""

    dim: int
    ffn_dim: int
    dropout: float
    kernel_init: nn.initializers.Initializer
    activation: str = "relu"
    conv: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        drop = (lambda t: nn.Dropout(self.dropout)(t, deterministic=not train)) \
            if self.dropout > 0 else (lambda t: t)
        act = ACTIVATIONS[self.activation]
        if self.conv:
            layer = lambda n, name: nn.Conv(n, (1,), kernel_init=self.kernel_init, name=name)
            names = ("inner_cnn", "readout_cnn")
        else:
            layer = lambda n, name: nn.Dense(n, kernel_init=self.kernel_init, name=name)
            names = ("inner", "outer")
        h = drop(act(layer(self.ffn_dim, names[0])(x)))
        return drop(layer(self.dim, names[1])(h))


class _Block(nn.Module):
    """One SASRec block in the configured ``norm_style``: ``[B, L, D] -> [B, L, D]``."""

    cfg: EncoderConfig
    dropout: float                  # hidden rate: sublayer outputs (and inside the FFN)
    attn_dropout: float             # on the attention weights

    @nn.compact
    def __call__(self, x, mask, query_valid, *, train):
        cfg = self.cfg
        init = _dense_init(cfg)
        ln = lambda name: nn.LayerNorm(epsilon=cfg.ln_eps, use_fast_variance=False, name=name)
        attn = MultiHeadAttention(cfg.embed_dim, cfg.num_heads, cfg.resolved_attn_bias(),
                                  cfg.resolved_attn_out_proj(), self.attn_dropout,
                                  cfg.resolved_mask_value(), init, name="attention")
        ffn = _FeedForward(cfg.embed_dim, cfg.ffn_dim,
                           self.dropout if cfg.ffn_internal_dropout else 0.0, init,
                           cfg.activation, cfg.ffn_conv, name="ffn")
        drop = (lambda t: nn.Dropout(self.dropout)(t, deterministic=not train)) \
            if self.dropout > 0 else (lambda t: t)
        if cfg.norm_style == "reference":
            q = ln("ln_attn")(x)
            h = attn(q, x, mask, query_valid, train=train) + q   # residual on LN(x)
            f = ln("ln_ffn")(h)
            return ffn(f, train=train) + f                        # residual on LN(h)
        h = ln("ln_attn")(x + drop(attn(x, x, mask, query_valid, train=train)))
        return ln("ln_ffn")(h + drop(ffn(h, train=train)))


class SASRec(ItemEncoderBase):
    """Self-attentive sequential encoder.

    ``SASRec(num_items, cfg)``; ``state_dim = cfg.embed_dim``. Besides the id-based
    ``__call__``/``sequence``, :meth:`sequence_from_embeddings` runs the transformer on
    item vectors produced elsewhere (IISAN's multimodal item tower).
    """

    default_dropout = 0.1
    name_for_errors = "sasrec"

    def setup(self):
        super().setup()
        cfg = self.cfg
        if cfg.init_std is not None:
            pos_init = nn.initializers.normal(stddev=cfg.init_std)
        elif cfg.norm_style == "reference":
            pos_init = nn.initializers.normal(stddev=0.01)
        else:
            pos_init = nn.initializers.glorot_normal()
        self.pos_embed = self.param("pos_embed", pos_init, (cfg.state_len, cfg.embed_dim))
        attn_rate = cfg.resolved_attn_dropout(self.default_dropout)
        self.blocks = [_Block(cfg, self.dropout_rate, attn_rate, name=f"block_{i}")
                       for i in range(cfg.num_blocks)]
        if cfg.resolved_input_ln():
            self.input_ln = nn.LayerNorm(epsilon=cfg.ln_eps, use_fast_variance=False)
        if cfg.resolved_final_ln():
            self.final_ln = nn.LayerNorm(epsilon=cfg.ln_eps, use_fast_variance=False)
        if self.dropout_rate > 0:
            self.input_dropout = nn.Dropout(self.dropout_rate)

    def item_init(self) -> nn.initializers.Initializer:
        """N(0, cfg.init_std) when set (RecBole), else the base N(0, 0.01)."""
        if self.cfg.init_std is not None:
            return nn.initializers.normal(stddev=self.cfg.init_std)
        return super().item_init()

    @property
    def state_dim(self) -> int:
        """Dimension of the state vector (embed_dim)."""
        return self.cfg.embed_dim

    def _positions(self, valid: jax.Array) -> jax.Array:
        """Position vectors for ``valid [B, L]``: ``[1, L, D]`` ('index') or ``[B, L, D]``
        ('from_first': rank of each real item from the oldest; a pad before the first
        item gets P[0], one after the last P[len-1], both masked away)."""
        L = valid.shape[1]
        if self.cfg.position_ids == "index":
            return self.pos_embed[:L][None]
        rank = jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1
        return self.pos_embed[jnp.maximum(rank, 0)]

    def sequence_from_embeddings(self, x: jax.Array, valid: jax.Array, *,
                                 train: bool = False) -> jax.Array:
        """Runs the blocks on given item vectors.

        Args:
          x: ``[B, L, D]`` item vectors (``L <= cfg.state_len``); pad rows are zeroed here.
          valid: ``[B, L]`` bool, True at real items.
          train: enables dropout.
        Returns:
          ``[B, L, D]`` per-position outputs (after the final LN in the reference style).
        """
        cfg = self.cfg
        if x.ndim != 3 or x.shape[-1] != cfg.embed_dim:
            raise ValueError(f"sasrec: x must have shape [B, L, D={cfg.embed_dim}], "
                             f"got {x.shape}")
        if valid.shape != x.shape[:2]:
            raise ValueError(f"sasrec: valid must have shape {x.shape[:2]}, got {valid.shape}")
        L = x.shape[1]
        if L > cfg.state_len:
            raise ValueError(f"sasrec: sequence length L={L} > state_len={cfg.state_len} "
                             f"(the position table has {cfg.state_len} rows)")
        valid_f = valid[..., None].astype(x.dtype)
        drop = (lambda t: self.input_dropout(t, deterministic=not train)) \
            if self.dropout_rate > 0 else (lambda t: t)
        if cfg.scale_embedding:
            x = x * jnp.sqrt(jnp.float32(cfg.embed_dim))
        pos = self._positions(valid)
        if cfg.norm_style == "reference":
            seq = drop(x + pos) * valid_f
        else:
            seq = x * valid_f + pos
            if cfg.resolved_input_ln():
                seq = self.input_ln(seq)
            seq = drop(seq)
        attend = valid[:, None, :]                               # keys: [B, 1, L]
        if cfg.causal:
            attend = attend & jnp.tril(jnp.ones((L, L), bool))[None]
        for block in self.blocks:
            seq = block(seq, attend, valid, train=train)
            if cfg.norm_style == "reference":
                seq = seq * valid_f
        if cfg.resolved_final_ln():
            seq = self.final_ln(seq)
        return seq

    def sequence(self, items: jax.Array, lengths: Optional[jax.Array] = None, *,
                 train: bool = False) -> jax.Array:
        """Per-position outputs ``[B, L, D]`` for item ids.

        This is what PRL cross-attends to (all L positions, final LN applied) and what
        next-item CE at every position trains on.

        Args:
          items: ``[B, L]`` int ids (pad included), ``L <= cfg.state_len``.
          lengths: unused (the mask comes from the ids); accepted for a uniform signature.
          train: enables dropout.
        """
        check_items(items, lengths, self.num_items, self.cfg, self.name_for_errors,
                    max_len=self.cfg.state_len)
        return self.sequence_from_embeddings(self.embed(items),
                                             valid_mask(items, self.pad_id), train=train)
