"""Pieces shared by the recommender methods: the encoder-plus-heads network, losses and
the optimizer built from the config.

The network is the arrangement of the SQN/SA2C code (rl.md §3): a sequential encoder
(GRU4Rec, Caser, NextItNet or SASRec) maps the state to a vector, and separate dense heads
map it to N item scores (the pad id is excluded). Heads use Xavier weights and zero bias,
the TF ``fully_connected`` defaults [inferred from TF defaults].
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxrec.encoders import make_encoder


# config.model keys that configure the heads, not the encoder.
HEAD_KEYS = ("encoder", "tie_head", "head_bias")
# How the heads use LEA's precomputed LLM-environment state (``config.lea.state``).
LE_STATES = ("none", "concat", "replace")


def encoder_config(config) -> dict:
    """The encoder fields: ``config.model`` (minus the encoder name and head options)
    plus the padding and state length of ``config.data``, which the data side builds the
    inputs with — one source, so the two can never disagree."""
    d = {k: (tuple(v) if isinstance(v, list) else v)
         for k, v in config.model.to_dict().items() if k not in HEAD_KEYS}
    for k in ("padding", "state_len"):
        if k in d:
            raise ValueError(f"config.model.{k} is not a model setting: set config.data.{k}")
    d.update(padding=config.data.get("padding", "right"),
             state_len=int(config.data.state_len))
    return d


class RecNet(nn.Module):
    """Encoder + named dense heads over the N items.

    Attributes:
      num_items: N (scores exclude the pad id).
      encoder_name: key of :data:`jaxrec.encoders.ENCODERS`.
      encoder_items: (key, value) pairs of encoder settings (a tuple, so the module hashes).
      heads: names of the heads, e.g. ('s',) or ('q', 's').
      tie_head: head 's' scores ``h · E[item]`` against the encoder's item embeddings
        (``[N, D]``, pad excluded) instead of its own dense layer — the output layer of
        SASRec-style libraries (e.g. RecBole). Needs ``state_dim == embed_dim``.
      head_bias: with ``tie_head``, add a learned per-item bias (off in RecBole).
      le_state: LEA's plug point 1 (rl.md §8, [inferred]): ``'none'`` (the heads read the
        encoder state), ``'concat'`` (they read ``[h ; s^e]``, the encoder state and the
        precomputed LLM-environment state) or ``'replace'`` (they read ``s^e`` alone).
    """

    num_items: int
    encoder_name: str
    encoder_items: tuple
    heads: tuple = ("s",)
    tie_head: bool = False
    head_bias: bool = False
    le_state: str = "none"

    def setup(self):
        self.encoder = make_encoder(self.encoder_name, dict(self.encoder_items),
                                    num_items=self.num_items)
        self.head_layers = {h: nn.Dense(self.num_items, name=f"head_{h}",
                                        kernel_init=nn.initializers.xavier_uniform())
                            for h in self.heads if not (self.tie_head and h == "s")}
        if self.tie_head and self.head_bias:
            self.tied_bias = self.param("tied_bias", nn.initializers.zeros, (self.num_items,))

    def _head(self, name: str, h):
        """h [..., D] -> [..., N] scores of one head."""
        if self.tie_head and name == "s":
            table = self.encoder.item_embeddings()
            if h.shape[-1] != table.shape[-1]:
                raise ValueError(
                    f"config.model.tie_head=True needs the {self.encoder_name} state "
                    f"({h.shape[-1]}-d) to match the item embeddings ({table.shape[-1]}-d); "
                    f"use an encoder whose state is embed_dim wide or tie_head=False")
            scores = h @ table.T
            return scores + self.tied_bias if self.head_bias else scores
        return self.head_layers[name](h)

    def __call__(self, items, lengths, train: bool = False, le=None) -> dict:
        """items [B, L] int32, lengths [B] -> {head: [B, N]}; ``le`` [B, De] is the LLM
        environment's state of the same rows, read when ``le_state`` is not 'none'."""
        h = self.encoder(items, lengths, train=train)
        if self.le_state != "none":
            if le is None:
                raise ValueError(f"config.lea.state={self.le_state!r} needs the LE state "
                                 f"'le_state' in every batch (data kind 'lea')")
            le = jnp.asarray(le, h.dtype)
            h = jnp.concatenate([h, le], -1) if self.le_state == "concat" else le
        return {name: self._head(name, h) for name in self.heads}

    def per_position(self, items, lengths, head: str = "s", train: bool = False):
        """items [B, L] -> [B, L, N] scores at every position (causal encoders only)."""
        seq = self.encoder.sequence(items, lengths, train=train)
        return self._head(head, seq)


def make_net(config, num_items: int, heads=("s",)) -> RecNet:
    """The RecNet of ``config.model`` over ``num_items`` items (the task's N)."""
    m = config.model
    lea = config.get("lea") or {}
    le_state = str(lea.get("state", "none"))
    if le_state not in LE_STATES:
        raise ValueError(f"config.lea.state must be one of {', '.join(LE_STATES)}, "
                         f"got {le_state!r}")
    return RecNet(num_items=int(num_items), encoder_name=m.encoder,
                  encoder_items=tuple(sorted(encoder_config(config).items())),
                  heads=tuple(heads), tie_head=bool(m.get("tie_head", False)),
                  head_bias=bool(m.get("head_bias", False)), le_state=le_state)


def make_optimizer(optim, params=None) -> optax.GradientTransformation:
    """Adam (TF1 defaults in the papers) with optional global-norm clipping and weight decay.

    ``optim`` fields: lr, b1 (0.9), b2 (0.999), eps (1e-8), weight_decay (0), clip_norm (0),
    and optionally ``trainable`` / ``frozen``: regexes over '/'-joined parameter paths.
    When ``trainable`` is set, every other leaf is frozen by the optimizer
    (:func:`jaxrec.peft.freeze.masked_optimizer`: zero updates and no optimizer state).
    """
    lr = float(optim.lr)
    if float(optim.get("weight_decay", 0.0)) > 0:
        tx = optax.adamw(lr, b1=optim.get("b1", 0.9), b2=optim.get("b2", 0.999),
                         eps=optim.get("eps", 1e-8), weight_decay=optim.weight_decay)
    else:
        tx = optax.adam(lr, b1=optim.get("b1", 0.9), b2=optim.get("b2", 0.999),
                        eps=optim.get("eps", 1e-8))
    if float(optim.get("clip_norm", 0.0)) > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(optim.clip_norm)), tx)
    trainable = tuple(optim.get("trainable", ()) or ())
    if trainable:
        if params is None:
            raise ValueError("config.optim.trainable is set but no parameters were given")
        from jaxrec.peft import freeze
        tx = freeze.masked_optimizer(tx, params, trainable,
                                     tuple(optim.get("frozen", ()) or ()))
    return tx


def gradient_step(state, loss_fn, batch, rng):
    """One optimizer step of a single-network method.

    ``state`` has ``params``, ``opt_state``, ``step`` and a static ``tx``;
    ``loss_fn(params, state, batch, rng) -> (loss, metrics)``. Returns (state, metrics).
    """
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, state, batch, rng)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def cross_entropy(logits, labels, weights=None):
    """Softmax cross-entropy per row. logits [..., N], labels [...] int (−1 = ignore).

    Returns:
      (mean loss over rows with label >= 0 (weighted if ``weights`` [...] given), count).
    """
    valid = labels >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    w = valid.astype(ce.dtype) if weights is None else valid * weights
    n = jnp.maximum(valid.sum(), 1)
    return (ce * w).sum() / n, n


def take_action(values, actions):
    """values [B, N], actions [B] -> [B] values of the chosen actions."""
    return jnp.take_along_axis(values, actions[:, None], axis=1)[:, 0]


def stack_trees(*trees: Any) -> Any:
    """Stacks pytrees of one structure on a new leading axis: ``[k, ...]`` per leaf."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def tree_index(tree: Any, i) -> Any:
    """Member ``i`` (int or traced scalar) of a stacked pytree: ``[k, ...] -> [...]``."""
    return jax.tree.map(lambda x: x[i], tree)


def tree_set(tree: Any, i, member: Any) -> Any:
    """A stacked pytree with member ``i`` replaced (an in-place update under donation)."""
    return jax.tree.map(lambda x, m: x.at[i].set(m), tree, member)
