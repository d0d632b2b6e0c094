"""SQN — Self-Supervised Q-learning for sequential recommendation.

Paper: X. Xin, A. Karatzoglou, I. Arapakis, J. M. Jose, "Self-Supervised Reinforcement
Learning for Recommender Systems", SIGIR 2020. Reference code: ``M_TH.py`` of the authors'
release (rl.md §3–4).

Two complete networks (embeddings, encoder, Q head, supervised head), each with its own
Adam, are swapped at random every step (van Hasselt-style double Q; no target sync, no
Polyak averaging). With (main, target) drawn by a coin flip:

    y   = r + γ · [not done] · Q_tgt(s′)[argmax_a Q_main(s′, a)]      (stop-gradient)
    L_q = ½ (y − Q_main(s)[a])²
    L   = mean_B( L_q + CE(φ_s(s), a) )

and only ``main`` is updated. The target passes run in training mode (dropout on), as the
reference does. Rewards: r_buy for purchases, r_click for clicks (default 1.0 / 0.2),
γ = 0.5. Evaluation ranks with network 1's supervised head φ_s (``config.rl.rank_head``
switches to the Q head).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrec.methods import common


@struct.dataclass
class Hyper:
    gamma: float = 0.5
    r_click: float = 0.2
    r_buy: float = 1.0
    rank_head: str = "s"


@struct.dataclass
class State:
    step: jnp.ndarray
    params1: Any
    params2: Any
    opt1: Any
    opt2: Any
    updates1: jnp.ndarray          # how many steps each network was the updated one
    updates2: jnp.ndarray
    net: common.RecNet = struct.field(pytree_node=False)
    tx: Any = struct.field(pytree_node=False)
    hp: Hyper = struct.field(pytree_node=False)


def double_q_target(q_tgt_next, q_sel_next, reward, done, gamma):
    """The double-Q TD target (trfl ``double_qlearning``), under stop-gradient.

    Args:
      q_tgt_next: [B, N] target network's Q(s′, ·).
      q_sel_next: [B, N] main network's Q(s′, ·), used only to pick the action.
      reward: [B] rewards.
      done: [B] bool, true on a session's last event (bootstrap value zeroed).
      gamma: discount.
    Returns:
      [B] y = r + γ·(1 − done)·Q_tgt(s′, argmax_a Q_sel(s′, a)).
    """
    a_star = jnp.argmax(q_sel_next, axis=-1)
    boot = common.take_action(q_tgt_next, a_star)
    boot = jnp.where(done, 0.0, boot)
    return jax.lax.stop_gradient(reward + gamma * boot)


def rewards(is_buy, hp: Hyper):
    """[B] r_buy for purchases, r_click for clicks."""
    return jnp.where(is_buy > 0, hp.r_buy, hp.r_click).astype(jnp.float32)


def init(rng, example_batch, config) -> State:
    net = common.make_net(config, heads=("q", "s"))
    k1, k2 = jax.random.split(rng)
    s, l = example_batch["state"], example_batch["len_state"]
    p1 = net.init({"params": k1, "dropout": k1}, s, l, train=False)
    p2 = net.init({"params": k2, "dropout": k2}, s, l, train=False)
    tx = common.make_optimizer(config.optim, p1)
    rl = config.rl
    hp = Hyper(gamma=float(rl.gamma), r_click=float(rl.r_click), r_buy=float(rl.r_buy),
               rank_head=str(rl.get("rank_head", "s")))
    zero = jnp.zeros((), jnp.int32)
    return State(step=zero, params1=p1, params2=p2, opt1=tx.init(p1), opt2=tx.init(p2),
                 updates1=zero, updates2=zero, net=net, tx=tx, hp=hp)


def loss_fn(main, target, state: State, batch, rng):
    """SQN loss of the main network; returns (loss, metrics)."""
    net, hp = state.net, state.hp
    k_s, k_next, k_tgt = jax.random.split(rng, 3)
    out = net.apply(main, batch["state"], batch["len_state"], train=True,
                    rngs={"dropout": k_s})
    q_sel_next = net.apply(main, batch["next_state"], batch["len_next_state"], train=True,
                           rngs={"dropout": k_next})["q"]
    q_tgt_next = net.apply(target, batch["next_state"], batch["len_next_state"], train=True,
                           rngs={"dropout": k_tgt})["q"]
    r = rewards(batch["is_buy"], hp)
    y = double_q_target(q_tgt_next, q_sel_next, r, batch["is_done"], hp.gamma)
    q_sa = common.take_action(out["q"], batch["action"])
    td = 0.5 * jnp.square(y - q_sa)
    ce, _ = common.cross_entropy(out["s"], batch["action"])
    loss = td.mean() + ce
    return loss, {"loss": loss, "td_loss": td.mean(), "ce_loss": ce, "q_sa": q_sa.mean()}


def train_step(state: State, batch, rng):
    k_coin, k_loss = jax.random.split(rng)
    first = jax.random.bernoulli(k_coin)          # True: net1 is main this step
    main = common.tree_where(first, state.params1, state.params2)
    target = common.tree_where(first, state.params2, state.params1)
    main_opt = common.tree_where(first, state.opt1, state.opt2)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(main, target, state, batch, k_loss)
    updates, main_opt = state.tx.update(grads, main_opt, main)
    main = optax.apply_updates(main, updates)
    new = state.replace(
        step=state.step + 1,
        params1=common.tree_where(first, main, state.params1),
        params2=common.tree_where(first, state.params2, main),
        opt1=common.tree_where(first, main_opt, state.opt1),
        opt2=common.tree_where(first, state.opt2, main_opt),
        updates1=state.updates1 + first.astype(jnp.int32),
        updates2=state.updates2 + (1 - first.astype(jnp.int32)))
    return new, metrics


def predict(state: State, batch):
    """Scores [B, N] of network 1 (dropout off) from ``hp.rank_head`` ('s' or 'q')."""
    out = state.net.apply(state.params1, batch["state"], batch["len_state"], train=False)
    return out[state.hp.rank_head]
