"""SAC — Self-Supervised Actor-Critic for sequential recommendation.

Paper: X. Xin, A. Karatzoglou, I. Arapakis, J. M. Jose, "Self-Supervised Reinforcement
Learning for Recommender Systems", SIGIR 2020, §3.3 (SAC). Reference code: ``M_AC.py`` of
the authors' release (rl.md §4).

SQN's arrangement (:mod:`jaxrec.methods.sqn`: two networks swapped at random, double-Q
TD loss on the Q head) with the supervised head φ_s as the actor and the Q head as the
critic: each row's cross-entropy is weighted by the main network's Q value of the logged
action, raw (neither normalised nor clipped) and under stop-gradient:

    L = mean_B( L_q + sg(Q_main(s, a)) · CE(φ_s(s), a) )

**Warm-up** (``config.rl.warmup_steps`` = T, some scripts only): steps ``< T`` train with
the plain SQN loss; from step T on, the Q-weighted loss is minimised by a *new* Adam
instance at the same lr (the reference builds ``opt1`` and ``opt2`` per network). The
second Adam's stacked state lives in ``state.extra['opt2']``; inside the one jitted step
the loss reads its phase from ``state.step`` and a ``lax.cond`` picks the optimizer
(:func:`double_q.two_phase_step`). With T = 0 the Q-weighted loss and a single Adam run
from step 0.

Recommendations come from network 1's φ_s (``config.rl.rank_head`` switches to Q).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxrec.methods import common
from jaxrec.methods import double_q as dq
from jaxrec.methods import sqn

State = dq.State


@struct.dataclass
class Hyper(sqn.Hyper):
    warmup_steps: int = 0


def hyper(config) -> Hyper:
    """SQN's γ, rewards and ranking head, plus ``config.rl.warmup_steps`` (0: none)."""
    return Hyper(**dataclasses.asdict(sqn.hyper(config)),
                 warmup_steps=int(config.rl.get("warmup_steps", 0) or 0))


def init(rng, task, config) -> State:
    """The SQN pair, plus a fresh stacked Adam state for after the warm-up."""
    hp = hyper(config)
    state = dq.init_state(rng, task, config, heads=("q", "s"), hp=hp)
    return dq.with_second_optimizer(state, hp.warmup_steps)


def loss_fn(main, target, state: State, batch, rng):
    """SAC loss of the main network; returns (loss, metrics).

    During the warm-up (:func:`double_q.second_phase` false) the CE weight is 1, which is
    SQN's loss; afterwards it is the raw Q value. The weight multiplies each row's CE
    before the batch mean (``common.cross_entropy``: Σ_b w_b·CE_b / B). One graph serves
    both phases, so the step compiles once.
    """
    td, _, out, metrics = sqn.td_and_ce(main, target, state, batch, rng)
    q_sa = jax.lax.stop_gradient(common.take_action(out["q"], batch["action"]))
    weight = jnp.where(dq.second_phase(state, state.hp.warmup_steps), q_sa, 1.0)
    weighted_ce, _ = common.cross_entropy(out["s"], batch["action"], weights=weight)
    loss = td.mean() + weighted_ce
    return loss, {"loss": loss, "weighted_ce": weighted_ce, **metrics}


def train_step(state: State, batch, rng, consts=None):
    """One SAC step: SQN loss and the first Adam before ``warmup_steps``, then the
    Q-weighted loss and the second Adam; a coin picks the main network, only it is
    updated."""
    del consts
    return dq.two_phase_step(state, batch, rng, state.hp.warmup_steps, loss_fn)


def predict(state: State, batch, consts=None):
    """Scores [B, N] of network 1 (dropout off) from ``hp.rank_head`` ('s' or 'q')."""
    return sqn.predict(state, batch, consts)
