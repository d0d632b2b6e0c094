"""Supervised next-item prediction: the base models of the SQN/SA2C papers and SASRec.

Papers: the "plain" GRU4Rec / Caser / NextItNet / SASRec rows of Xin et al., SIGIR 2020
(SQN) Tables 2–3 and WSDM 2022 (SA2C) Tables 2–3, trained with cross-entropy on the next
item from the last-10 state (rl.md §2, ``M.py`` in the released code).

On leave-one-out data (``config.data.kind='sequence'``) this is SASRec trained with a
full softmax cross-entropy over all items — not the original SASRec objective (Kang &
McAuley, ICDM 2018, §III-E, binary cross-entropy with one sampled negative per position)
but the "SASRec+CE" variant that Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is
BERT4Rec really better than SASRec?", RecSys 2023, §3, showed to be much stronger, and the
default of widely used libraries (RecBole's ``loss_type='CE'``). Two ways to build the
training examples (``config.data.loo_train``):

- ``'windows'``: CE at every position of per-user windows (as PCRec's SASRec code,
  intent_pcrec.md §2.5); the batch has ``targets [B, L]``;
- ``'prefixes'``: one example per prefix with CE at its last position (the data
  augmentation of RecBole-style sequential training); the batch has ``action [B]``.

``config.model.tie_head`` scores against the item embeddings instead of a separate
output layer (RecBole's arrangement).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import struct

from jaxrec.methods import common


@struct.dataclass
class State:
    step: jnp.ndarray
    params: Any
    opt_state: Any
    net: common.RecNet = struct.field(pytree_node=False)
    tx: Any = struct.field(pytree_node=False)


def init(rng, task, config) -> State:
    net = common.make_net(config, task.num_items, heads=("s",))
    ex = task.example_batch()
    params = net.init({"params": rng, "dropout": rng}, ex["state"], ex["len_state"],
                      train=False)
    tx = common.make_optimizer(config.optim, params)
    return State(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                 net=net, tx=tx)


def loss_fn(params, state: State, batch, rng):
    """Mean cross-entropy of the next item; returns (loss, metrics).

    ``targets [B, L]`` in the batch: CE at every position; else ``action [B]``: CE of the
    state read at the last position."""
    items, lengths = batch["state"], batch["len_state"]
    if "targets" in batch:
        logits = state.net.apply(params, items, lengths, train=True, rngs={"dropout": rng},
                                 method=common.RecNet.per_position)
        loss, _ = common.cross_entropy(logits, batch["targets"])
    else:
        logits = state.net.apply(params, items, lengths, train=True,
                                 rngs={"dropout": rng})["s"]
        loss, _ = common.cross_entropy(logits, batch["action"])
    return loss, {"loss": loss}


def train_step(state: State, batch, rng, consts=None):
    del consts
    return common.gradient_step(state, loss_fn, batch, rng)


def predict(state: State, batch, consts=None):
    """Scores [B, N] from the supervised head (dropout off)."""
    del consts
    items, lengths = batch["state"], batch["len_state"]
    return state.net.apply(state.params, items, lengths, train=False)["s"]
