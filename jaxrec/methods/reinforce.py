"""REINFORCE sequential recommender with the top-K off-policy correction.

Paper: M. Chen, A. Beutel, P. Covington, S. Jain, F. Belletti, E. H. Chi, "Top-K
Off-Policy Correction for a REINFORCE Recommender System", WSDM 2019 (§3 the policy and
its off-policy gradient, §4.1 the learned behaviour policy with a blocked gradient, §4.2
weight capping, §4.3 the top-K correction); the base recommender of Chang et al., "Latent
User Intent Modeling for Sequential Recommenders", WWW '23 Companion (specs/intent_pcrec.md
§1.2). No code was released; the choices marked [inferred] are config options.

Network (data kind ``'intent'``, :mod:`jaxrec.data.intent`):

    s_t      = GRU(item_emb(history) ⊕ context feats)         [B, H]   (user state)
    π(a|s_t) = softmax_a(⟨s_t, v_a⟩ + b_a)                      [B, N]   (policy)
    β(a|s_t) = softmax_a(⟨sg(s_t), v'_a⟩ + b'_a)                 [B, N]   (behaviour policy)

The context features are the observed behaviour signals of the history events
(``hist_feat``; ``config.model.context_features``). β is a separate head trained by
cross-entropy on the logged action through a stop-gradient on the state (§4.1: "we block
its gradient from flowing back into the user state"), so it estimates the logging policy
without steering s_t.

Loss of a batch of logged events (a_t, R_t) — the spec's ``L_RL`` (intent_pcrec.md §1.2):

    L_RL = −mean_t  sg(min(π(a_t|s_t) / β(a_t|s_t), c)) · sg(λ_K(s_t, a_t)) · R_t · log π(a_t|s_t)
    λ_K  = K (1 − π(a_t|s_t))^{K−1}                     (top-K correction, §4.3)
    L    = L_RL + w_β · CE(β(·|s_t), a_t)

R_t is the discounted return inside the session (``config.data.return_gamma``), rewards
r_click / r_buy per event as in the RL papers. ``config.rl``: ``cap`` c (10 [inferred]),
``topk`` K (0 switches the correction off: plain off-policy REINFORCE; K = 1 gives
λ = 1 as well), ``off_policy`` (False: weight 1, on-policy REINFORCE on logged data),
``beta_weight`` w_β (1) and ``beta_stop_gradient`` (True, as §4.1). Items are scored with
π (the policy that would be served); the policy is trained with a full softmax, since the
catalogues here are small enough (the paper samples the softmax for millions of items).

:class:`PolicyNet` exposes ``condition(s, batch, train)``, the hook by which
:mod:`jaxrec.methods.latent_intent` conditions the policy on a latent intent without
repeating this module.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jaxrec.evaluators.intent import IntentEvaluator
from jaxrec.methods import common

EVALUATORS = {"intent": IntentEvaluator}
LATENTS = ("state",)          # what latents() returns (the intent evaluator's keys)


@struct.dataclass
class Hyper:
    """The REINFORCE loss settings (module docstring)."""

    cap: float = 10.0
    topk: int = 0
    off_policy: bool = True
    beta_weight: float = 1.0


def hyper(config) -> Hyper:
    r = config.rl
    cap, topk = float(r.get("cap", 10.0)), int(r.get("topk", 0))
    if cap <= 0:
        raise ValueError(f"config.rl.cap must be > 0, got {cap}")
    if topk < 0:
        raise ValueError(f"config.rl.topk must be >= 0 (0 = no top-K correction), got {topk}")
    return Hyper(cap=cap, topk=topk, off_policy=bool(r.get("off_policy", True)),
                 beta_weight=float(r.get("beta_weight", 1.0)))


# ------------------------------------------------------------------------- the network
class StateEncoder(nn.Module):
    """GRU user state over the history's item embeddings and context features.

    Attributes:
      num_items: N; the item table has N + 1 rows (the pad N included, right padding).
      embed_dim: item-embedding width D.
      hidden: GRU width H (the state dimension).
      context_features: concatenate ``hist_feat`` to the item embeddings.
    """

    num_items: int
    embed_dim: int = 64
    hidden: int = 64
    context_features: bool = True

    @nn.compact
    def __call__(self, items, lengths, feats):
        """items [B, L] int (pad N after the history), lengths [B] int (>= 1),
        feats [B, L, F] float -> state [B, H]: the GRU carry after ``lengths`` steps."""
        x = nn.Embed(self.num_items + 1, self.embed_dim, name="item_embed")(items)
        if self.context_features and feats.shape[-1] > 0:
            x = jnp.concatenate([x, feats.astype(x.dtype)], axis=-1)
        carry, _ = nn.RNN(nn.GRUCell(self.hidden), name="gru")(
            x, seq_lengths=lengths, return_carry=True)
        return carry


class PolicyNet(nn.Module):
    """State encoder, policy head π and behaviour head β.

    Attributes:
      num_items: N.
      embed_dim, hidden, context_features: the :class:`StateEncoder`'s.
      beta_stop_gradient: β reads ``sg(s_t)`` (Chen et al. §4.1).
    """

    num_items: int
    embed_dim: int = 64
    hidden: int = 64
    context_features: bool = True
    beta_stop_gradient: bool = True

    def setup(self):
        self.encoder = StateEncoder(self.num_items, self.embed_dim, self.hidden,
                                    self.context_features)
        init = nn.initializers.xavier_uniform()
        self.pi_head = nn.Dense(self.num_items, kernel_init=init)
        self.beta_head = nn.Dense(self.num_items, kernel_init=init)

    def state(self, batch):
        """s_t [B, H] from ``state``, ``len_state`` and ``hist_feat`` of the batch."""
        return self.encoder(batch["state"], batch["len_state"], batch["hist_feat"])

    def condition(self, s, batch, train: bool):
        """The state the policy reads, and extra outputs (none here): ``([B, H'], {})``."""
        del batch, train
        return s, {}

    def __call__(self, batch, train: bool = False) -> dict:
        """-> {'pi': [B, N] policy logits, 'beta': [B, N] behaviour logits, 'state':
        [B, H], plus whatever :meth:`condition` adds}."""
        s = self.state(batch)
        s_pi, extra = self.condition(s, batch, train)
        s_b = jax.lax.stop_gradient(s) if self.beta_stop_gradient else s
        return {"pi": self.pi_head(s_pi), "beta": self.beta_head(s_b), "state": s, **extra}


def net_kwargs(config, task) -> dict:
    """The :class:`PolicyNet` fields from ``config.model`` and the task."""
    m = config.model
    return dict(num_items=int(task.num_items), embed_dim=int(m.get("embed_dim", 64)),
                hidden=int(m.get("hidden", 64)),
                context_features=bool(m.get("context_features", True)),
                beta_stop_gradient=bool(config.rl.get("beta_stop_gradient", True)))


# ------------------------------------------------------------------------- the loss
def importance_weights(log_pi_a, log_beta_a, cap: float):
    """Capped importance weights ``min(π/β, c)`` [B] from log-probabilities [B]
    (Chen et al. §4.2), with a stop-gradient: they scale the gradient, not receive one."""
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(log_pi_a - log_beta_a), cap))


def topk_correction(pi_a, k: int):
    """λ_K = K (1 − π)^{K−1} [B] for π(a_t|s_t) [B] (Chen et al. §4.3, stop-gradient);
    1 when ``k`` is 0 (no correction)."""
    if k <= 0:
        return jnp.ones_like(pi_a)
    return jax.lax.stop_gradient(k * (1.0 - pi_a) ** (k - 1))


def reinforce_loss(out: dict, batch, hp: Hyper):
    """L_RL + w_β · CE(β) of the module docstring; returns (loss, metrics).

    Args:
      out: {'pi': [B, N], 'beta': [B, N]} logits.
      batch: ``action [B]`` int, ``return [B]`` float.
    """
    a = batch["action"]
    log_pi = common.take_action(jax.nn.log_softmax(out["pi"]), a)        # [B]
    log_beta = common.take_action(jax.nn.log_softmax(out["beta"]), a)    # [B]
    if hp.off_policy:
        w = importance_weights(log_pi, log_beta, hp.cap)
    else:
        w = jnp.ones_like(log_pi)
    lam = topk_correction(jnp.exp(log_pi), hp.topk)
    ret = batch["return"].astype(log_pi.dtype)
    rl = -jnp.mean(w * lam * ret * log_pi)
    beta_ce = -jnp.mean(log_beta)
    loss = rl + hp.beta_weight * beta_ce
    raw = jnp.exp(log_pi - log_beta)
    return loss, {"rl_loss": rl, "beta_loss": beta_ce, "weight": w.mean(),
                  "capped": (raw > hp.cap).mean(), "lambda_k": lam.mean(),
                  "log_pi": log_pi.mean()}


# ------------------------------------------------------------------------- the contract
@struct.dataclass
class State:
    step: jnp.ndarray
    params: Any
    opt_state: Any
    net: nn.Module = struct.field(pytree_node=False)
    tx: Any = struct.field(pytree_node=False)
    hp: Any = struct.field(pytree_node=False)


def check_task(task, method: str) -> None:
    """The task must be of kind 'intent' (it carries ``hist_feat`` and ``return``)."""
    ex = task.example_batch(1)
    missing = [k for k in ("state", "len_state", "hist_feat", "action", "return") if k not in ex]
    if missing:
        raise ValueError(f"{method} needs config.data.kind='intent' (jaxrec.data.intent); the "
                         f"{task.kind!r} task lacks {', '.join(missing)}")


def init_state(rng, task, config, net: nn.Module, hp: Any) -> State:
    """Parameters of ``net`` (initialised on the task's example batch) and their Adam."""
    k_p, k_z = jax.random.split(rng)
    params = net.init({"params": k_p, "latent": k_z}, task.example_batch(), train=False)
    tx = common.make_optimizer(config.optim, params)
    return State(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                 net=net, tx=tx, hp=hp)


def init(rng, task, config) -> State:
    check_task(task, "reinforce")
    return init_state(rng, task, config, PolicyNet(**net_kwargs(config, task)),
                      hyper(config))


def loss_fn(params, state: State, batch, rng):
    del rng
    out = state.net.apply(params, batch, train=True)
    loss, metrics = reinforce_loss(out, batch, state.hp)
    return loss, {"loss": loss, **metrics}


def train_step(state: State, batch, rng, consts=None):
    del consts
    return common.gradient_step(state, loss_fn, batch, rng)


def predict(state: State, batch, consts=None):
    """Scores [B, N]: the policy logits (what would be served)."""
    del consts
    return state.net.apply(state.params, batch, train=False)["pi"]


def latents(state: State, batch, consts=None) -> dict:
    """What the intent evaluator probes: {'state': s_t [B, H]}."""
    del consts
    return {"state": state.net.apply(state.params, batch, train=False)["state"]}
