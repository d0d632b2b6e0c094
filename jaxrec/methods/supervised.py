"""Supervised next-item prediction: the base models of the SQN/SA2C papers and SASRec.

Papers: the "plain" GRU4Rec / Caser / NextItNet / SASRec rows of Xin et al., SIGIR 2020
(SQN) Tables 2–3 and WSDM 2022 (SA2C) Tables 2–3, trained with cross-entropy on the next
item from the last-10 state (rl.md §2, ``M.py`` in the released code); and, with
``config.data.kind='sequence'``, SASRec's cross-entropy at every position (Kang & McAuley,
ICDM 2018; intent_pcrec.md §2.5) on leave-one-out data.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrec.methods import common


@struct.dataclass
class State:
    step: jnp.ndarray
    params: Any
    opt_state: Any
    net: common.RecNet = struct.field(pytree_node=False)
    tx: Any = struct.field(pytree_node=False)
    kind: str = struct.field(pytree_node=False)


def init(rng, example_batch, config) -> State:
    net = common.make_net(config, heads=("s",))
    items, lengths = example_batch["state"], example_batch["len_state"]
    params = net.init({"params": rng, "dropout": rng}, items, lengths, train=False)
    tx = common.make_optimizer(config.optim, params)
    return State(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                 net=net, tx=tx, kind=config.data.kind)


def loss_fn(params, state: State, batch, rng):
    """Mean cross-entropy of the next item; returns (loss, metrics)."""
    items, lengths = batch["state"], batch["len_state"]
    if state.kind == "sequence":    # CE at every position (SASRec paper)
        logits = state.net.apply(params, items, lengths, train=True, rngs={"dropout": rng},
                                 method=common.RecNet.per_position)
        loss, _ = common.cross_entropy(logits, batch["targets"])
    else:
        logits = state.net.apply(params, items, lengths, train=True,
                                 rngs={"dropout": rng})["s"]
        loss, _ = common.cross_entropy(logits, batch["action"])
    return loss, {"loss": loss}


def train_step(state: State, batch, rng):
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, state, batch, rng)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def predict(state: State, batch):
    """Scores [B, N] from the supervised head (dropout off)."""
    items, lengths = batch["state"], batch["len_state"]
    return state.net.apply(state.params, items, lengths, train=False)["s"]
