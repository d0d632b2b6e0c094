"""A method whose loss becomes NaN from its 4th step on: exercises the trainer's guard."""

import jax.numpy as jnp

from jaxrec.methods import popularity


def init(rng, task, config):
    return popularity.init(rng, task, config)


def train_step(state, batch, rng, consts):
    state, m = popularity.train_step(state, batch, rng, consts)
    m["loss"] = jnp.where(state.step >= 4, jnp.nan, 1.0)
    return state, m


predict = popularity.predict
