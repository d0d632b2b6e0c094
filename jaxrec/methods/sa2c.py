"""SA2C — Supervised Advantage Actor-Critic for sequential recommendation.

Paper: X. Xin, A. Karatzoglou, I. Arapakis, J. M. Jose, "Supervised Advantage Actor-Critic
for Recommender Systems", WSDM 2022, §3.3–3.4 (advantage-weighted supervised loss,
off-policy correction). Reference code: ``SA2C.py`` of the release mirrored in
``misikoff/AIPI-531-hw3`` (rl.md §5).

Two phases, switched at step T = ``config.rl.phase1_steps`` (15,000 in the scripts):

**Phase 1** (step < T): the SNQN loss, without the Q-loss weight, with the first Adam
(lr ``config.optim.lr``) — the SQN terms (:func:`sqn.td_and_ce`) plus the negative-action
terms (:func:`double_q.negative_td`: k = ``rl.num_negatives`` uniform negatives, targets
bootstrapped from the current state, r_neg = ``rl.r_negative``):

    L₁ = mean_B( L_q⁺ + Σ_j L_q⁻,j + CE(φ_s(s), a) )

**Phase 2** (step ≥ T): the supervised head is the actor, weighted by the advantage of the
logged action over the average of it and its sampled negatives, from the main network's Q
head on s (the differentiated pass) under stop-gradient, clipped to [``rl.advantage_clip``,
10] (no clip when ``advantage_clip`` < 0, as the script's ``if clip >= 0``):

    A   = Q(s, a⁺) − (Q(s, a⁺) + Σ_j Q(s, a⁻_j)) / (1 + k)
    ρ   = clip(π_s(a|s) / pop(a), 0.1, 10) ^ ``rl.ips_smooth``   (1 when smooth = 0)
    L₂  = mean_B( w · (L_q⁺ + Σ_j L_q⁻,j) + A · ρ · CE(φ_s(s), a) ),  w = ``rl.q_weight`` (1)

where π_s is φ_s's softmax (stop-gradient) and pop the item's frequency over all events
(``task.item_popularity``, a frozen ``make_consts`` array). L₂ is minimised by a *second*
Adam, lr ``rl.lr2`` (0.001), from fresh moments; its stacked state is
``state.extra['opt2']``; inside the one jitted step the loss reads its phase from
``state.step`` and a ``lax.cond`` picks the optimizer (:func:`double_q.two_phase_step`).

Recommendations come from network 1's φ_s (``config.rl.rank_head`` switches to Q). The
script's off-policy-corrected NDCG@10 (hits weighted by 1/pop) is an evaluator's job.

LEA's plug points (``config.lea``) come through :func:`sqn.td_and_ce`; in phase 2 each
augmented positive's CE is weighted by its own advantage A_j = Q(s, a_j) − (Q(s, a⁺) +
Σ Q(s, a⁻)) / (1 + k), clipped as A (``lea.aug_advantage``, default on [inferred]: the
actor treats logged and proposed positives alike), or keeps its fixed weight (off).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrec.methods import common
from jaxrec.methods import double_q as dq
from jaxrec.methods import sqn

State = dq.State


@struct.dataclass
class Hyper(sqn.Hyper, dq.NegativeHyper):
    phase1_steps: int = 15000
    advantage_clip: float = 0.0
    ips_smooth: float = 0.0
    aug_advantage: bool = True       # LEA: advantage-weight the augmented CE in phase 2


def hyper(config) -> Hyper:
    """SQN's fields plus SA2C's (``config.rl``); ``phase1_steps`` must be set."""
    rl = config.rl
    if rl.get("phase1_steps") is None:
        raise ValueError("config.rl.phase1_steps is not set: SA2C needs the length of its "
                         "first phase in steps (15000 in the paper's scripts)")
    return Hyper(**dataclasses.asdict(sqn.hyper(config)), **dq.negative_hyper(config),
                 phase1_steps=int(rl.phase1_steps),
                 advantage_clip=float(rl.get("advantage_clip", 0.0)),
                 ips_smooth=float(rl.get("ips_smooth", 0.0)),
                 aug_advantage=bool((config.get("lea") or {}).get("aug_advantage", True)))


def init(rng, task, config) -> State:
    """The SNQN pair with the phase-1 Adam, plus the fresh phase-2 Adam (lr ``rl.lr2``)."""
    hp = hyper(config)
    state = dq.init_state(rng, task, config, heads=("q", "s"), hp=hp)
    optim2 = config.optim.copy_and_resolve_references()
    optim2.lr = float(config.rl.get("lr2", 0.001))
    tx2 = common.make_optimizer(optim2, common.tree_index(state.params, 0))
    return dq.with_second_optimizer(state, hp.phase1_steps, tx2)


def make_consts(config, task):
    """{'pop': [N] float32 item frequency over all events, normalised} (the IPS
    denominator; the reference's ``pop_dict``)."""
    del config
    return {"pop": np.asarray(task.item_popularity, np.float32)}


def advantage(q_pos, q_neg, clip: float):
    """A [B] = q_pos − mean(q_pos, q_neg_1..k), clipped to [clip, 10] when clip >= 0.

    Args:
      q_pos: [B] Q(s, a⁺); q_neg: [B, k] Q(s, a⁻_j) (both already stop-gradient).
    """
    a = q_pos - (q_pos + q_neg.sum(-1)) / (1 + q_neg.shape[-1])
    return jnp.clip(a, clip, 10.0) if clip >= 0 else a


def loss_fn(main, target, state: State, batch, rng, pop=None):
    """SA2C loss of the main network: L₁ before ``phase1_steps``, L₂ from it on
    (:func:`double_q.second_phase`); ``pop`` [N] is needed when ``ips_smooth`` != 0.
    Returns (loss, metrics).

    One graph serves both phases (the CE weight is 1 and w is 1 in phase 1), so the step
    compiles once; the advantage and IPS factor are reported in both. ``rng`` splits into
    (positive terms, negative terms) keys, as SNQN's loss.
    """
    hp = state.hp
    actions = batch["action"]
    k_pos, k_neg = jax.random.split(rng)
    td, _, out, metrics = sqn.td_and_ce(main, target, state, batch, k_pos)
    td_neg, q_neg = dq.negative_td(main, target, state, batch, out["q"], k_neg)
    q_pos = jax.lax.stop_gradient(common.take_action(out["q"], actions))
    adv = advantage(q_pos, jax.lax.stop_gradient(q_neg), hp.advantage_clip)
    if hp.ips_smooth != 0:
        if pop is None:
            raise ValueError(f"config.rl.ips_smooth={hp.ips_smooth} needs the item "
                             f"popularity: pass consts=sa2c.make_consts(config, task)")
        pi = common.take_action(jax.nn.softmax(jax.lax.stop_gradient(out["s"])), actions)
        ips = jnp.clip(pi / pop[actions], 0.1, 10.0) ** hp.ips_smooth
    else:                                 # smooth = 0: the factor is 1 (the default)
        ips = jnp.ones_like(adv)
    second = dq.second_phase(state, hp.phase1_steps)
    weighted_ce, _ = common.cross_entropy(out["s"], actions,
                                          weights=jnp.where(second, adv * ips, 1.0))
    if hp.aug:
        # LEA's augmented positives: in phase 2 the actor weights each by its own advantage
        # over the same sampled actions (``lea.aug_advantage``), else by its weight alone.
        aug_ce = metrics["aug_ce"]
        if hp.aug_advantage:
            q_aug = jax.lax.stop_gradient(jnp.take_along_axis(
                out["q"], jnp.asarray(batch["aug_actions"], jnp.int32), axis=1))
            base = (q_pos + jax.lax.stop_gradient(q_neg).sum(-1)) / (1 + q_neg.shape[-1])
            adv_aug = q_aug - base[:, None]
            adv_aug = jnp.clip(adv_aug, hp.advantage_clip, 10.0) if hp.advantage_clip >= 0 else adv_aug
            aug_ce = jnp.where(second, sqn.augmented_ce(out["s"], batch, hp, adv_aug), aug_ce)
            metrics = {**metrics, "aug_advantage": adv_aug.mean()}
        weighted_ce = weighted_ce + aug_ce
    loss = jnp.where(second, hp.q_weight, 1.0) * (td + td_neg).mean() + weighted_ce
    return loss, {"loss": loss, "neg_td_loss": td_neg.mean(), "advantage": adv.mean(),
                  "ips": ips.mean(), "weighted_ce": weighted_ce, **metrics}


def train_step(state: State, batch, rng, consts=None):
    """One SA2C step: L₁ with the first Adam before ``phase1_steps``, then L₂ with the
    second; a coin picks the main network, only it is updated."""
    pop = None if consts is None else consts["pop"]
    return dq.two_phase_step(state, batch, rng, state.hp.phase1_steps,
                             functools.partial(loss_fn, pop=pop))


def predict(state: State, batch, consts=None):
    """Scores [B, N] of network 1 (dropout off) from ``hp.rank_head`` ('s' or 'q')."""
    return sqn.predict(state, batch, consts)
