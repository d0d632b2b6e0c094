"""SQN — Self-Supervised Q-learning for sequential recommendation.

Paper: X. Xin, A. Karatzoglou, I. Arapakis, J. M. Jose, "Self-Supervised Reinforcement
Learning for Recommender Systems", SIGIR 2020, §3 (SQN). Reference code: ``M_TH.py`` of
the authors' release (rl.md §3–4).

Two complete networks (embeddings, encoder, Q head, supervised head), each with its own
Adam, are swapped at random every step (:mod:`jaxrec.methods.double_q`: the pair lives
stacked on a leading ``[2, ...]`` axis and only main's member is written back). With
(main, target) drawn by a coin flip:

    y   = r + γ · [not done] · Q_tgt(s′)[argmax_a Q_main(s′, a)]      (stop-gradient)
    L_q = ½ (y − Q_main(s)[a])²
    L   = mean_B( L_q + CE(φ_s(s), a) )

The two passes on s′ (main to pick the action, target to value it) run as one ``vmap``
over the stacked pair, in training mode (dropout on) as the reference does. Rewards
(``config.data.r_buy`` / ``r_click``, 1.0 / 0.2) and γ = 0.5 (rl.md §3). Evaluation ranks
with network 1's supervised head φ_s (``config.rl.rank_head`` switches to the Q head).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxrec.data.tasks import rewards_of
from jaxrec.methods import common
from jaxrec.methods import double_q as dq

State = dq.State


@struct.dataclass
class Hyper:
    gamma: float = 0.5
    r_click: float = 0.2
    r_buy: float = 1.0
    rank_head: str = "s"


def hyper(config) -> Hyper:
    """γ and the ranking head from ``config.rl``; rewards from ``config.data``."""
    r_click, r_buy = rewards_of(config)
    return Hyper(gamma=float(config.rl.gamma), r_click=r_click, r_buy=r_buy,
                 rank_head=str(config.rl.get("rank_head", "s")))


def init(rng, task, config) -> State:
    return dq.init_state(rng, task, config, heads=("q", "s"), hp=hyper(config))


def td_and_ce(main, target, state: State, batch, rng):
    """The SQN terms: (L_q [B], CE (mean), main's outputs on s, metrics)."""
    net, hp = state.net, state.hp
    k_s, k_next, k_tgt = jax.random.split(rng, 3)
    out = net.apply(main, batch["state"], batch["len_state"], train=True,
                    rngs={"dropout": k_s})
    q_sel_next, q_tgt_next = dq.apply_pair_on(net, main, target, batch["next_state"],
                                              batch["len_next_state"],
                                              jnp.stack([k_next, k_tgt]))
    r = dq.rewards(batch["is_buy"], hp.r_click, hp.r_buy)
    y = dq.double_q_target(q_tgt_next, q_sel_next, r, batch["is_done"], hp.gamma)
    q_sa = common.take_action(out["q"], batch["action"])
    td = 0.5 * jnp.square(y - q_sa)
    ce, _ = common.cross_entropy(out["s"], batch["action"])
    return td, ce, out, {"td_loss": td.mean(), "ce_loss": ce, "q_sa": q_sa.mean()}


def loss_fn(main, target, state: State, batch, rng):
    """SQN loss of the main network; returns (loss, metrics)."""
    td, ce, _, metrics = td_and_ce(main, target, state, batch, rng)
    loss = td.mean() + ce
    return loss, {"loss": loss, **metrics}


def train_step(state: State, batch, rng, consts=None):
    """One SQN step: a coin picks the main network; only it is updated."""
    del consts
    return dq.double_q_step(state, batch, rng, loss_fn)


def predict(state: State, batch, consts=None):
    """Scores [B, N] of network 1 (dropout off) from ``hp.rank_head`` ('s' or 'q')."""
    del consts
    return dq.predict_head(state, batch, state.hp.rank_head)
