"""SNQN — Self-supervised Negative Q-learning for sequential recommendation.

Paper: X. Xin, A. Karatzoglou, I. Arapakis, J. M. Jose, "Supervised Advantage Actor-Critic
for Recommender Systems", WSDM 2022, §3.2 (negative sampling for the RL part). Reference
code: ``SNQN.py`` of the release mirrored in ``misikoff/AIPI-531-hw3`` (rl.md §5).

SQN (:mod:`jaxrec.methods.sqn`) plus k = ``config.rl.num_negatives`` (10) negative actions
per row, drawn uniformly from the N − 1 other items (:func:`double_q.sample_negatives`,
keyed from the step's key). A negative leaves the state unchanged, so its TD target
bootstraps from the current state s, with reward r_neg = ``config.rl.r_negative`` (0) and
no done-mask (:func:`double_q.negative_td`). Five forward passes per step: main on s
(differentiated), main and target on s′, main and target on s.

    L = mean_B( w · (L_q⁺ + Σ_{j=1..k} L_q⁻,j) + CE(φ_s(s), a) ),   w = ``config.rl.q_weight`` (1)

The ranking head is a switch (``config.rl.rank_head``): the RetailRocket script ranks with
φ_s, the RC15 script with the Q head (rl.md §5; METHOD_DEFAULTS sets 'q' on yoochoose).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import struct

from jaxrec.methods import double_q as dq
from jaxrec.methods import sqn

State = dq.State


@struct.dataclass
class Hyper(sqn.Hyper, dq.NegativeHyper):
    """SQN's fields plus the negatives' count and reward and the Q-loss weight w."""


def hyper(config) -> Hyper:
    """SQN's fields from ``config`` plus :func:`double_q.negative_hyper`'s."""
    return Hyper(**dataclasses.asdict(sqn.hyper(config)), **dq.negative_hyper(config))


def init(rng, task, config) -> State:
    """The SQN pair (two networks with Q and supervised heads, one Adam each)."""
    return dq.init_state(rng, task, config, heads=("q", "s"), hp=hyper(config))


def loss_fn(main, target, state: State, batch, rng):
    """SNQN loss of the main network; returns (loss, metrics).

    ``rng`` splits into (positive terms, negative terms) keys; the negatives' own key is
    the first of three split from the second (:func:`double_q.negative_td`).
    """
    hp = state.hp
    k_pos, k_neg = jax.random.split(rng)
    td, ce, out, metrics = sqn.td_and_ce(main, target, state, batch, k_pos)
    td_neg, _ = dq.negative_td(main, target, state, batch, out["q"], k_neg)
    loss = hp.q_weight * (td + td_neg).mean() + ce
    return loss, {"loss": loss, "neg_td_loss": td_neg.mean(), **metrics}


def train_step(state: State, batch, rng, consts=None):
    """One SNQN step: a coin picks the main network; only it is updated."""
    del consts
    return dq.double_q_step(state, batch, rng, loss_fn)


def predict(state: State, batch, consts=None):
    """Scores [B, N] of network 1 (dropout off) from ``hp.rank_head`` ('s' or 'q')."""
    return sqn.predict(state, batch, consts)
