"""Popularity baseline: rank items by how often they occur in the training data.

The SNQN/SA2C release ships ``pop.py`` as the non-personalised reference (rl.md Sources);
PCRec and IISAN compare against it implicitly. "Training" counts the target items of each
batch, so one pass over the training stream gives the exact training-set counts and the
method fits the same contract as every other.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct


@struct.dataclass
class State:
    step: jnp.ndarray
    counts: jnp.ndarray        # [N] float32 target counts seen so far


def _targets(batch):
    t = batch["targets"] if "targets" in batch else batch["action"]   # dense ids, -1 = none
    return t.reshape(-1)


def init(rng, task, config) -> State:
    del rng, config
    return State(step=jnp.zeros((), jnp.int32),
                 counts=jnp.zeros((task.num_items,), jnp.float32))


def train_step(state: State, batch, rng, consts=None):
    del rng, consts
    t = _targets(batch)
    valid = t >= 0
    counts = state.counts.at[jnp.where(valid, t, 0)].add(valid.astype(jnp.float32))
    return state.replace(step=state.step + 1, counts=counts), {
        "loss": jnp.zeros((), jnp.float32), "distinct_items": (counts > 0).sum()}


def predict(state: State, batch, consts=None):
    """[B, N]: the same popularity scores for every query."""
    del consts
    b = batch["state"].shape[0]
    return jnp.broadcast_to(state.counts[None, :], (b, state.counts.shape[0]))
