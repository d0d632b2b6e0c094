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
- :class:`NegativeHyper`, :func:`negative_hyper` and :func:`negative_td`: SNQN's
  settings and negative-action TD terms on the current state (SNQN, SA2C);
- :func:`with_second_optimizer`, :func:`second_phase` and :func:`two_phase_step`: a loss
  and optimizer switch at a fixed step, with a second optimizer starting from fresh
  moments (SAC's warm-up, SA2C's second phase), inside one compiled step;
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
      tx2: static — the second phase's optax transformation (:func:`two_phase_step`),
        whose stacked state is ``extra['opt2']``; None for one-phase methods.
    """

    step: jnp.ndarray
    params: Any
    opt: Any
    updates: jnp.ndarray
    extra: Any
    net: common.RecNet = struct.field(pytree_node=False)
    tx: Any = struct.field(pytree_node=False)
    hp: Any = struct.field(pytree_node=False)
    tx2: Any = struct.field(pytree_node=False, default=None)


def init_state(rng, task, config, heads: tuple, hp: Any, extra: Any = None) -> State:
    """Two independently initialised networks with heads ``heads`` and their Adam states.

    Network i is initialised from ``split(rng)[i]`` (as the SQN reference builds two
    graphs), so SQN's numbers do not depend on which method built the state.
    """
    net = common.make_net(config, task.num_items, heads=heads)
    k1, k2 = jax.random.split(rng)
    ex = task.example_batch()
    s, l, le = ex["state"], ex["len_state"], ex.get("le_state")
    p1 = net.init({"params": k1, "dropout": k1}, s, l, train=False, le=le)
    p2 = net.init({"params": k2, "dropout": k2}, s, l, train=False, le=le)
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


def apply_pair_on(net, main, target, items, lengths, keys, head: str | None = "q", le=None):
    """Both networks on the same input in one ``vmap`` pass (dropout on, as the
    reference's target passes): returns (main's [B, N], target's [B, N]) of ``head``, or
    with ``head=None`` every head as ({head: [B, N]}, {head: [B, N]}) (SMORL's three Q
    heads in one pass); gradients flow into ``main`` only. ``le`` [B, De]: LEA's
    environment state of the same rows (read only when ``net.le_state`` != 'none')."""
    pair = common.stack_trees(main, jax.lax.stop_gradient(target))

    def one(p, k):
        out = net.apply(p, items, lengths, train=True, rngs={"dropout": k}, le=le)
        return out if head is None else out[head]

    out = jax.vmap(one)(pair, keys)
    return common.tree_index(out, 0), common.tree_index(out, 1)


@struct.dataclass
class NegativeHyper:
    """SNQN's settings (rl.md §5), shared by SNQN and SA2C as a mixin of their ``Hyper``.

    Attributes:
      num_negatives: k uniform negatives per row (10).
      r_negative: their reward r_neg (0 in SNQN/SA2C; −1 in the ``DQN_NS`` baseline).
      q_weight: w, the weight of the Q-learning terms (the scripts' ``--weight``, 1).
    """

    num_negatives: int = 10
    r_negative: float = 0.0
    q_weight: float = 1.0


def negative_hyper(config) -> dict:
    """The :class:`NegativeHyper` fields from ``config.rl`` (defaults where absent)."""
    rl = config.rl
    return dict(num_negatives=int(rl.get("num_negatives", 10)),
                r_negative=float(rl.get("r_negative", 0.0)),
                q_weight=float(rl.get("q_weight", 1.0)))


def negative_td(main, target, state: State, batch, q_main_s, rng):
    """SNQN's negative-action TD terms (WSDM 2022 §3; rl.md §5, ``SNQN.py``).

    A sampled negative action leaves the state unchanged, so its target bootstraps from
    the current state s: two more passes (main to pick the action, target to value it, one
    ``vmap`` over the pair as on s′), and no done-mask — the session has not ended. With
    ``negatives`` drawn by :func:`sample_negatives`:

        y⁻      = r_neg + γ · Q_tgt(s)[argmax_a Q_main(s, a)]           (stop-gradient)
        L_q⁻,j  = ½ (y⁻ − Q_main(s)[a⁻_j])²

    Args:
      main, target: parameters of the two networks (gradients flow into ``main``).
      state: the pair: ``state.net``; ``state.hp`` with ``gamma`` and the
        :class:`NegativeHyper` fields (k = ``num_negatives``, ``r_negative``).
      batch: ``state`` [B, L], ``len_state`` [B], ``action`` [B].
      q_main_s: [B, N] main's Q(s, ·) from its differentiated pass.
      rng: split into (negatives, main's pass, target's pass) keys, in that order.
    Returns:
      (Σ_j L_q⁻,j [B], Q_main(s, a⁻_j) [B, k] — differentiable, for the caller to stop).
    """
    hp = state.hp
    k_neg, k_sel, k_tgt = jax.random.split(rng, 3)
    actions = batch["action"]
    negatives = sample_negatives(k_neg, actions, q_main_s.shape[-1], hp.num_negatives)
    q_sel_cur, q_tgt_cur = apply_pair_on(state.net, main, target, batch["state"],
                                         batch["len_state"], jnp.stack([k_sel, k_tgt]),
                                         le=batch.get("le_state"))
    r = jnp.full(actions.shape, hp.r_negative, jnp.float32)
    y = double_q_target(q_tgt_cur, q_sel_cur, r, jnp.zeros(actions.shape, bool), hp.gamma)
    q_neg = jnp.take_along_axis(q_main_s, negatives, axis=1)
    return (0.5 * jnp.square(y[:, None] - q_neg)).sum(-1), q_neg


def with_second_optimizer(state: State, switch_step: int, tx2: Any = None) -> State:
    """Equips a pair for :func:`two_phase_step`: ``tx2`` (default: ``state.tx``, i.e. a
    fresh instance of the same Adam, as SAC's warm-up) and its stacked ``[2, ...]`` state
    in ``extra['opt2']``.

    The second state is built here rather than at the switch: Adam's initial state (zero
    moments, count 0) depends only on the parameters' shapes, so it equals ``tx2.init`` at
    the switch, and the state keeps one fixed structure (one compile; a checkpoint holds
    both optimizers, so a resumed run continues bit-exactly on either side of the switch).
    With ``switch_step <= 0`` the second phase runs from step 0: ``tx2`` becomes the only
    optimizer (``state.tx`` / ``state.opt``) and nothing is added.
    """
    tx2 = state.tx if tx2 is None else tx2
    fresh = common.stack_trees(*(tx2.init(common.tree_index(state.params, i))
                                 for i in (0, 1)))
    if switch_step <= 0:
        return state.replace(tx=tx2, opt=fresh)
    return state.replace(tx2=tx2, extra={**(state.extra or {}), "opt2": fresh})


def second_phase(state: State, switch_step: int) -> jax.Array:
    """[] bool: this step (``state.step`` steps done) is at or after ``switch_step`` — the
    reference's ``total_step >= T``; a two-phase loss reads its phase from it."""
    return state.step >= switch_step


def _phase_switch(tx1, tx2, second: jax.Array) -> optax.GradientTransformation:
    """One optax transformation over a pair of states (s1, s2): ``tx2`` updates s2 where
    ``second`` ([] bool), ``tx1`` updates s1 elsewhere; the other state passes through
    untouched. ``lax.cond``: only the chosen optimizer runs."""
    def update(grads, pair, params=None):
        s1, s2 = pair

        def first(g):
            u, n = tx1.update(g, s1, params)
            return u, (n, s2)

        def later(g):
            u, n = tx2.update(g, s2, params)
            return u, (s1, n)

        return jax.lax.cond(second, later, first, grads)

    return optax.GradientTransformation(lambda p: (tx1.init(p), tx2.init(p)), update)


def two_phase_step(state: State, batch: dict, rng: jax.Array, switch_step: int,
                   loss_fn: LossFn) -> tuple[State, dict]:
    """One double-Q step with an optimizer switch at step ``switch_step`` (static): before
    it, main is updated by ``state.tx`` / ``state.opt``; from it on, by ``state.tx2`` /
    ``extra['opt2']`` (:func:`with_second_optimizer`). ``loss_fn`` reads its own phase
    from the state (:func:`second_phase`), so one loss graph and one backward pass serve
    both phases, and the switch is a traced condition inside the one jitted step.

    Only the active optimizer's state changes: the second keeps its initial value until
    the switch, the first stays frozen after it. The coin and the loss's key are drawn as
    in :func:`double_q_step`; ``metrics['phase']`` (1.0 or 2.0) is added.
    """
    if switch_step <= 0:
        new, metrics = double_q_step(state, batch, rng, loss_fn)
        return new, {**metrics, "phase": jnp.float32(2)}
    second = second_phase(state, switch_step)
    new, metrics = double_q_step(state, batch, rng, loss_fn,
                                 tx=_phase_switch(state.tx, state.tx2, second),
                                 opt=(state.opt, state.extra["opt2"]))
    opt1, opt2 = metrics.pop("_opt")
    return (new.replace(opt=opt1, extra={**state.extra, "opt2": opt2}),
            {**metrics, "phase": jnp.where(second, 2.0, 1.0)})


def predict_head(state: State, batch, head: str):
    """Scores [B, N] of network 1 (dropout off) from ``head``."""
    out = state.net.apply(common.tree_index(state.params, 0), batch["state"],
                          batch["len_state"], train=False, le=batch.get("le_state"))
    return out[head]
