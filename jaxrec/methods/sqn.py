"""SQN — Self-Supervised Q-learning for sequential recommendation.

Paper: X. Xin, A. Karatzoglou, I. Arapakis, J. M. Jose, "Self-Supervised Reinforcement
Learning for Recommender Systems", SIGIR 2020, §3 (SQN). Reference code: ``M_TH.py`` of
the authors' release (rl.md §3–4).

Two complete networks (embeddings, encoder, Q head, supervised head), each with its own
Adam, are swapped at random every step (van Hasselt-style double Q; no target sync, no
Polyak averaging). With (main, target) drawn by a coin flip:

    y   = r + γ · [not done] · Q_tgt(s′)[argmax_a Q_main(s′, a)]      (stop-gradient)
    L_q = ½ (y − Q_main(s)[a])²
    L   = mean_B( L_q + CE(φ_s(s), a) )

and only ``main`` is updated. The two networks and their Adam states live stacked on a
leading ``[2, ...]`` axis: the step reads main = params[i], target = params[1 − i] and
writes back member i only, instead of selecting between two full trees four times; the
two passes on s′ (main to pick the action, target to value it) run as one ``vmap`` over
the stacked pair. The target passes run in training mode (dropout on), as the reference
does. Rewards (``config.data.r_buy`` / ``r_click``, 1.0 / 0.2) and γ = 0.5 (rl.md §3).
Evaluation ranks with network 1's supervised head φ_s (``config.rl.rank_head`` switches to
the Q head).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrec.data.tasks import rewards_of
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
    params: Any                    # [2, ...] per leaf: network 1 and network 2
    opt: Any                       # [2, ...] their Adam states
    updates: jnp.ndarray           # [2] how many steps each network was the updated one
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


def hyper(config) -> Hyper:
    """γ and the ranking head from ``config.rl``; rewards from ``config.data``."""
    r_click, r_buy = rewards_of(config)
    return Hyper(gamma=float(config.rl.gamma), r_click=r_click, r_buy=r_buy,
                 rank_head=str(config.rl.get("rank_head", "s")))


def init(rng, task, config) -> State:
    net = common.make_net(config, task.num_items, heads=("q", "s"))
    k1, k2 = jax.random.split(rng)
    ex = task.example_batch()
    s, l = ex["state"], ex["len_state"]
    p1 = net.init({"params": k1, "dropout": k1}, s, l, train=False)
    p2 = net.init({"params": k2, "dropout": k2}, s, l, train=False)
    tx = common.make_optimizer(config.optim, p1)
    return State(step=jnp.zeros((), jnp.int32), params=common.stack_trees(p1, p2),
                 opt=common.stack_trees(tx.init(p1), tx.init(p2)),
                 updates=jnp.zeros((2,), jnp.int32), net=net, tx=tx, hp=hyper(config))


def loss_fn(main, target, state: State, batch, rng):
    """SQN loss of the main network; returns (loss, metrics)."""
    net, hp = state.net, state.hp
    k_s, k_next, k_tgt = jax.random.split(rng, 3)
    out = net.apply(main, batch["state"], batch["len_state"], train=True,
                    rngs={"dropout": k_s})
    # Both networks on s′ in one vmapped pass; only the main member carries gradients.
    pair = common.stack_trees(main, jax.lax.stop_gradient(target))
    q_next = jax.vmap(lambda p, k: net.apply(p, batch["next_state"], batch["len_next_state"],
                                             train=True, rngs={"dropout": k})["q"])(
        pair, jnp.stack([k_next, k_tgt]))
    q_sel_next, q_tgt_next = q_next[0], q_next[1]
    r = rewards(batch["is_buy"], hp)
    y = double_q_target(q_tgt_next, q_sel_next, r, batch["is_done"], hp.gamma)
    q_sa = common.take_action(out["q"], batch["action"])
    td = 0.5 * jnp.square(y - q_sa)
    ce, _ = common.cross_entropy(out["s"], batch["action"])
    loss = td.mean() + ce
    return loss, {"loss": loss, "td_loss": td.mean(), "ce_loss": ce, "q_sa": q_sa.mean()}


def train_step(state: State, batch, rng, consts=None):
    """One SQN step: a coin picks the main network; only it is updated."""
    del consts
    k_coin, k_loss = jax.random.split(rng)
    i = jnp.where(jax.random.bernoulli(k_coin), 0, 1)    # index of main this step
    main = common.tree_index(state.params, i)
    target = common.tree_index(state.params, 1 - i)
    main_opt = common.tree_index(state.opt, i)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(main, target, state, batch, k_loss)
    updates, main_opt = state.tx.update(grads, main_opt, main)
    main = optax.apply_updates(main, updates)
    new = state.replace(step=state.step + 1,
                        params=common.tree_set(state.params, i, main),
                        opt=common.tree_set(state.opt, i, main_opt),
                        updates=state.updates.at[i].add(1))
    return new, metrics


def predict(state: State, batch, consts=None):
    """Scores [B, N] of network 1 (dropout off) from ``hp.rank_head`` ('s' or 'q')."""
    del consts
    out = state.net.apply(common.tree_index(state.params, 0), batch["state"],
                          batch["len_state"], train=False)
    return out[state.hp.rank_head]
