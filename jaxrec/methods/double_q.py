"""Shared machinery of the double-Q recommenders: SQN, SAC, SNQN, SA2C and SMORL.

Papers: Xin et al., "Self-Supervised Reinforcement Learning for Recommender Systems",
SIGIR 2020, §3 (SQN/SAC); Xin et al., "Supervised Advantage Actor-Critic for
Recommender Systems", WSDM 2022, §3 (SNQN/SA2C); Stamenkovic et al., "Choosing the Best
of Both Worlds: Diverse and Novel Recommendations through Multi-Objective Reinforcement
Learning", WSDM 2022 (SMORL). Reference code: rl.md §3 (two complete networks with their
own Adam, swapped at random every step; no target sync, no Polyak averaging).

The methods import these pieces instead of importing each other:

- :class:`State` and :func:`init_state`: two networks (encoder + named heads) and their
  optimizer states stacked on a leading ``[2, ...]`` axis;
- :func:`double_q_step`: one step — a coin picks the main network, ``loss_fn(main,
  target, state, batch, rng)`` is differentiated w.r.t. main only, and only main's member
  of the stacked trees is written back (the target stays bit-identical);
- :func:`double_q_target`, :func:`rewards`, :func:`sample_negatives`: the TD target
  (trfl ``double_qlearning``), the click/purchase rewards and SNQN's negative sampling;
- :func:`predict_head`: scores of network 1 from a named head.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrec.methods import common


@struct.dataclass
class State:
    """Two networks stacked on ``[2, ...]``.

    Attributes:
      step: [] int32 steps done.
      params: [2, ...] per leaf: network 1 and network 2.
      opt: [2, ...] their optimizer states.
      updates: [2] int32, how many steps each network was the updated one.
      extra: method-specific arrays (e.g. SA2C's second optimizer state); a pytree.
      net, tx, hp: static — the network, the optax transformation, the hyperparameters.
    """

    step: jnp.ndarray
    params: Any
    opt: Any
    updates: jnp.ndarray
    extra: Any
    net: common.RecNet = struct.field(pytree_node=False)
    tx: Any = struct.field(pytree_node=False)
    hp: Any = struct.field(pytree_node=False)


def init_state(rng, task, config, heads: tuple, hp: Any, extra: Any = None) -> State:
    """Two independently initialised networks with heads ``heads`` and their Adam states.

    Network i is initialised from ``split(rng)[i]`` (as the SQN reference builds two
    graphs), so SQN's numbers do not depend on which method built the state.
    """
    net = common.make_net(config, task.num_items, heads=heads)
    k1, k2 = jax.random.split(rng)
    ex = task.example_batch()
    s, l = ex["state"], ex["len_state"]
    p1 = net.init({"params": k1, "dropout": k1}, s, l, train=False)
    p2 = net.init({"params": k2, "dropout": k2}, s, l, train=False)
    tx = common.make_optimizer(config.optim, p1)
    return State(step=jnp.zeros((), jnp.int32), params=common.stack_trees(p1, p2),
                 opt=common.stack_trees(tx.init(p1), tx.init(p2)),
                 updates=jnp.zeros((2,), jnp.int32), extra=extra, net=net, tx=tx, hp=hp)


LossFn = Callable[[Any, Any, State, dict, jax.Array], tuple]


def double_q_step(state: State, batch: dict, rng: jax.Array, loss_fn: LossFn,
                  tx: Any = None, opt: Any = None) -> tuple[State, dict]:
    """One double-Q step; returns (new state, metrics).

    Args:
      state: the stacked pair.
      batch: [B, ...] arrays.
      rng: the step's key; split into the coin and the loss's key.
      loss_fn: ``(main, target, state, batch, rng) -> (loss, metrics)``; differentiated
        w.r.t. ``main`` only.
      tx / opt: an optimizer and its stacked ``[2, ...]`` state to use instead of
        ``state.tx`` / ``state.opt`` (SA2C's second phase); the updated ``opt`` is
        returned in ``metrics['_opt']`` (popped by the caller).
    """
    k_coin, k_loss = jax.random.split(rng)
    i = jnp.where(jax.random.bernoulli(k_coin), 0, 1)     # index of main this step
    tx = state.tx if tx is None else tx
    stacked_opt = state.opt if opt is None else opt
    main = common.tree_index(state.params, i)
    target = common.tree_index(state.params, 1 - i)
    main_opt = common.tree_index(stacked_opt, i)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(main, target, state, batch, k_loss)
    updates, main_opt = tx.update(grads, main_opt, main)
    main = optax.apply_updates(main, updates)
    new_opt = common.tree_set(stacked_opt, i, main_opt)
    new = state.replace(step=state.step + 1, params=common.tree_set(state.params, i, main),
                        updates=state.updates.at[i].add(1))
    if opt is None:
        new = new.replace(opt=new_opt)
    else:
        metrics = {**metrics, "_opt": new_opt}
    return new, metrics


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


def rewards(is_buy, r_click: float, r_buy: float):
    """[B] r_buy for purchases, r_click for clicks."""
    return jnp.where(is_buy > 0, r_buy, r_click).astype(jnp.float32)


def sample_negatives(rng, positives, num_items: int, k: int):
    """SNQN's negatives (rl.md §5): k uniform draws from [0, N) per row, never the positive.

    Drawing from the N − 1 other items directly (a draw ≥ the positive is shifted up by
    one) is distributed exactly as the reference's "redraw any that equal the positive";
    duplicates and history items are allowed, as there.

    Args:
      rng: key.
      positives: [B] int positive actions.
      num_items: N.
      k: negatives per row.
    Returns:
      [B, k] int32.
    """
    draw = jax.random.randint(rng, positives.shape + (k,), 0, num_items - 1)
    return (draw + (draw >= positives[:, None])).astype(jnp.int32)


def apply_pair_on(net, main, target, items, lengths, keys, head: str = "q"):
    """Both networks on the same input in one ``vmap`` pass (dropout on, as the
    reference's target passes): returns (main's [B, N], target's [B, N]) of ``head``;
    gradients flow into ``main`` only."""
    pair = common.stack_trees(main, jax.lax.stop_gradient(target))
    out = jax.vmap(lambda p, k: net.apply(p, items, lengths, train=True,
                                          rngs={"dropout": k})[head])(pair, keys)
    return out[0], out[1]


def predict_head(state: State, batch, head: str):
    """Scores [B, N] of network 1 (dropout off) from ``head``."""
    out = state.net.apply(common.tree_index(state.params, 0), batch["state"],
                          batch["len_state"], train=False)
    return out[head]
