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

LEA's plug points (Wang et al., SIGIR 2024; rl.md §8, all [inferred]; ``config.lea``, read
only when the section exists, so SQN and its descendants are unchanged without it): the
heads read the LLM environment's state (``lea.state``, :class:`common.RecNet`); the
rewards come from its reward model (``lea.rewards='reward_model'``: ``batch['le_reward']``
instead of r_click / r_buy); and its augmented positive actions add weighted CE and Q
terms (``lea.aug``, :func:`augmented_terms`). The arrays come precomputed in the batch
(data kind ``'lea'``, :mod:`jaxrec.data.lea`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxrec import config_util
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
    # LEA's switches (config.lea; the defaults leave every loss as it was).
    rewards: str = "fixed"           # or 'reward_model': batch['le_reward']
    aug: bool = False                # augmented positives batch['aug_actions'] [B, K]
    aug_weight: float = 1.0          # global weight of their terms
    aug_q: str = "reward"            # their Q target: 'reward' | 'logged_next' | 'none'


LE_REWARDS = ("fixed", "reward_model")
AUG_Q = ("reward", "logged_next", "none")


def hyper(config) -> Hyper:
    """γ and the ranking head from ``config.rl``; rewards from ``config.data``; LEA's
    switches from ``config.lea`` when present."""
    r_click, r_buy = rewards_of(config)
    lea = config.get("lea")
    extra = {}
    if lea is not None:
        extra = dict(rewards=config_util.choice(lea, "lea.rewards", LE_REWARDS, "fixed"),
                     aug=bool(lea.get("aug", False)),
                     aug_weight=float(lea.get("aug_weight", 1.0)),
                     aug_q=config_util.choice(lea, "lea.aug_q", AUG_Q, "reward"))
    return Hyper(gamma=float(config.rl.gamma), r_click=r_click, r_buy=r_buy,
                 rank_head=str(config.rl.get("rank_head", "s")), **extra)


def init(rng, task, config) -> State:
    return dq.init_state(rng, task, config, heads=("q", "s"), hp=hyper(config))


def td_and_ce(main, target, state: State, batch, rng):
    """The SQN terms: (L_q [B], CE (mean), main's outputs on s, metrics).

    With LEA's ``hp.aug`` the augmented positives' terms (:func:`augmented_terms`) are
    included: their Q terms in L_q, their CE in CE and also in ``metrics['aug_ce']`` (for a
    loss that reweights the logged CE, as SA2C's phase 2, and adds them on its own)."""
    net, hp = state.net, state.hp
    k_s, k_next, k_tgt = jax.random.split(rng, 3)
    out = net.apply(main, batch["state"], batch["len_state"], train=True,
                    rngs={"dropout": k_s}, le=batch.get("le_state"))
    q_sel_next, q_tgt_next = dq.apply_pair_on(net, main, target, batch["next_state"],
                                              batch["len_next_state"],
                                              jnp.stack([k_next, k_tgt]),
                                              le=batch.get("le_next_state"))
    if hp.rewards == "reward_model":          # LEA: the reward model's reward of (s, a)
        r = jnp.asarray(batch["le_reward"], jnp.float32)
    else:
        r = dq.rewards(batch["is_buy"], hp.r_click, hp.r_buy)
    y = dq.double_q_target(q_tgt_next, q_sel_next, r, batch["is_done"], hp.gamma)
    q_sa = common.take_action(out["q"], batch["action"])
    td = 0.5 * jnp.square(y - q_sa)
    ce, _ = common.cross_entropy(out["s"], batch["action"])
    metrics = {"td_loss": td.mean(), "ce_loss": ce, "q_sa": q_sa.mean()}
    if hp.aug:
        aug_td, aug_ce = augmented_terms(out, batch, hp, y - r)
        td, ce = td + aug_td, ce + aug_ce
        metrics.update(aug_td=aug_td.mean(), aug_ce=aug_ce)
    return td, ce, out, metrics


def augmented_terms(out, batch, hp: Hyper, next_value):
    """LEA's augmented positives (rl.md §8, plug point 3 [inferred]): the K actions the LLM
    environment proposes for s, each with a weight w_j (``batch['aug_weights']`` times
    ``hp.aug_weight``), add a weighted CE of the supervised head and a weighted Q term:

        CE_aug = mean_B Σ_j w_j · CE(φ_s(s), a_j)
        L_aug  = Σ_j w_j · ½ (y_j − Q_main(s, a_j))²,  y_j = r_j (+ γ·V(s′) with 'logged_next')

    r_j is the reward model's reward of (s, a_j) (``batch['aug_reward']``) with
    ``hp.rewards='reward_model'``, else the click reward; 'logged_next' bootstraps from the
    logged next state's value (an augmented action's own next state is not in the log);
    ``hp.aug_q='none'`` drops the Q term.

    Args:
      out: main's outputs on s: 'q' and 's' [B, N].
      batch: 'aug_actions' [B, K] int, 'aug_weights' [B, K], 'aug_reward' [B, K].
      next_value: [B] γ·(1 − done)·Q_tgt(s′, argmax Q_main(s′)) (stop-gradient).
    Returns:
      (L_aug [B], CE_aug []).
    """
    a = jnp.asarray(batch["aug_actions"], jnp.int32)
    w = hp.aug_weight * jnp.asarray(batch["aug_weights"], jnp.float32)
    ce = augmented_ce(out["s"], batch, hp)
    if hp.aug_q == "none":
        return jnp.zeros(a.shape[:1], jnp.float32), ce
    if hp.rewards == "reward_model":
        r = jnp.asarray(batch["aug_reward"], jnp.float32)
    else:
        r = jnp.full(a.shape, hp.r_click, jnp.float32)
    y = r + (next_value[:, None] if hp.aug_q == "logged_next" else 0.0)
    q = jnp.take_along_axis(out["q"], a, axis=1)
    return (w * 0.5 * jnp.square(jax.lax.stop_gradient(y) - q)).sum(-1), ce


def augmented_ce(logits, batch, hp: Hyper, extra=None):
    """mean_B Σ_j w_j · e_j · CE(logits, a_j) over the augmented actions ``batch['aug_actions']``
    [B, K], w_j = ``hp.aug_weight`` · ``batch['aug_weights']``; ``extra`` [B, K] (default 1)
    is a further per-action weight (SA2C's advantages). logits [B, N] -> []."""
    a = jnp.asarray(batch["aug_actions"], jnp.int32)
    w = hp.aug_weight * jnp.asarray(batch["aug_weights"], jnp.float32)
    if extra is not None:
        w = w * extra
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -(w * jnp.take_along_axis(logp, a, axis=1)).sum(-1).mean()


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
