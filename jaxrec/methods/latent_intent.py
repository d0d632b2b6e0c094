"""Latent user intent: a conditional VAE over behaviour signals that conditions a
REINFORCE recommender.

Paper: B. Chang, A. Karatzoglou, Y. Wang, C. Xu, E. H. Chi, M. Chen, "Latent User Intent
Modeling for Sequential Recommenders", WWW '23 Companion, arXiv 2211.09832 (abstract;
Fig. 3: only the prior feeds the recommender, behind a stop-gradient; the stability
tricks). No code was released; the design follows specs/intent_pcrec.md §1.2, whose
details are [inferred] and therefore config options (``config.intent``).

On top of :mod:`jaxrec.methods.reinforce` (same state s_t, same π / β heads, same loss):

    x_t = s_t                                     the REINFORCE user state   [B, H]
    prior      p_ψ(z|x)   = N(μ_p, diag e^{ℓ_p}),   MLP on x                  [B, Z]
    posterior  q_φ(z|x,y) = N(μ_q, diag e^{ℓ_q}),   MLP on [x; enc(y)]        [B, Z]
    decoder    p_θ(y|z,x) = Π_signals p(y_s|z,x),   MLP on [z; x] -> one head per signal:
               categorical (softmax CE), binary (sigmoid BCE), continuous (Gaussian with a
               learned, soft-clipped log-variance); unobserved signals are masked
    ℓ ← c·tanh(ℓ/c)  (soft clip, c = ``logvar_clip`` = 5), for ℓ_p, ℓ_q and the decoder's
    KL = ½ Σ_d [ℓ_p − ℓ_q + (e^{ℓ_q} + (μ_q − μ_p)²) / e^{ℓ_p} − 1]
    −ELBO = E_q[−log p_θ(y|z,x)] + β_KL · KL        (one reparameterised sample)
    π(a|s_t, z) = softmax_a(⟨cond(s_t, sg(z̄_t)), v_a⟩),   z̄_t = μ_p(x_t)
    L = L_RL + λ · (−ELBO) + w_β · CE(β)

y are the behaviour signals of the event being predicted (observed after the
recommendation, so only in training); the prior is what the policy reads both in training
and at serving time, so the two never diverge. The stop-gradient means the RL gradient
never reaches the VAE: the VAE learns from its own loss only (its gradient does reach the
shared GRU state unless ``context_stop_gradient``). The μ / ℓ output layers start small
(``init_scale``), so KL ≈ 0 at initialisation.

``config.intent``: ``latent_dim`` Z (8), ``hidden`` (64), ``kl_weight`` β_KL (1.0),
``vae_weight`` λ (1.0), ``logvar_clip`` c (5.0), ``init_scale`` (0.01),
``conditioning``: ``'concat'`` [s; z̄] (default), ``'film'`` (s·(1 + γ(z̄)) + b(z̄)) or
``'gate'`` (s·2σ(g(z̄))) — FiLM and gating start as the identity; ``policy_latent``:
``'prior_mean'`` (default) or ``'prior_sample'``; ``decoder_reads_x`` (True: p(y|z,x) as
the spec, False: p(y|z)); ``context_stop_gradient`` (False).

The intent evaluator probes ``prior_mean`` (what the policy reads), ``posterior_mean`` and
the GRU ``state`` (:data:`LATENTS`).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrec import config_util
from jaxrec.methods import common
from jaxrec.methods import reinforce

EVALUATORS = reinforce.EVALUATORS
LATENTS = ("posterior_mean", "prior_mean", "state")
CONDITIONINGS = ("concat", "film", "gate")
POLICY_LATENTS = ("prior_mean", "prior_sample")
State = reinforce.State
check_task = reinforce.check_task


# ----------------------------------------------------------------------- pure pieces
def soft_clip(x, c: float):
    """``c · tanh(x / c)``: smooth, odd, bounded in (−c, c), ≈ x for |x| ≪ c."""
    return c * jnp.tanh(x / c)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p):
    """KL(N(μ_q, e^{ℓ_q}) ‖ N(μ_p, e^{ℓ_p})) of diagonal Gaussians, summed over the last
    axis: ``[..., Z] -> [...]``."""
    return 0.5 * jnp.sum(logvar_p - logvar_q
                         + (jnp.exp(logvar_q) + (mu_q - mu_p) ** 2) / jnp.exp(logvar_p)
                         - 1.0, axis=-1)


def encode_signals(batch, signals: tuple):
    """The behaviour signals y of the batch as posterior input ``[B, F_y]``: one-hot
    categorical, 0/1 binary, the standardised continuous value, each followed by an
    "observed" flag (unobserved: zeros and flag 0)."""
    cols = []
    for name, kind, size in signals:
        v = batch[f"y_{name}"]
        if kind == "continuous":
            seen = jnp.isfinite(v)
            cols += [jnp.where(seen, v, 0.0)[:, None]]
        else:
            seen = v >= 0
            width = size if kind == "categorical" else 1
            hot = (jax.nn.one_hot(v, size) if kind == "categorical"
                   else (v == 1)[:, None].astype(jnp.float32))
            cols += [hot.reshape(v.shape[0], width)]
        cols.append(seen[:, None].astype(jnp.float32))
    return jnp.concatenate(cols, axis=-1)


def signal_nll(heads: dict, batch, signals: tuple, logvar_clip: float):
    """Negative log-likelihood of the observed signals ``[B]`` (summed over signals) and
    the per-signal means over observed rows.

    Args:
      heads: name -> decoder outputs: categorical ``[B, K]`` logits, binary ``[B, 1]``
        logit, continuous ``[B, 2]`` (mean, raw log-variance).
    """
    total, per = 0.0, {}
    for name, kind, size in signals:
        v, h = batch[f"y_{name}"], heads[name]
        if kind == "categorical":
            seen = v >= 0
            nll = optax.softmax_cross_entropy_with_integer_labels(h, jnp.maximum(v, 0))
        elif kind == "binary":
            seen = v >= 0
            nll = optax.sigmoid_binary_cross_entropy(h[:, 0], (v == 1).astype(h.dtype))
        else:
            seen = jnp.isfinite(v)
            lv = soft_clip(h[:, 1], logvar_clip)
            y = jnp.where(seen, v, 0.0)
            nll = 0.5 * (lv + (y - h[:, 0]) ** 2 * jnp.exp(-lv) + math.log(2 * math.pi))
        nll = jnp.where(seen, nll, 0.0)
        total = total + nll
        per[name] = nll.sum() / jnp.maximum(seen.sum(), 1)
    return total, per


# ----------------------------------------------------------------------- the network
class IntentVAE(nn.Module):
    """Prior, posterior and per-signal decoder heads (module docstring).

    Attributes:
      signals: ((name, kind, size), ...) from ``task.extras['signals']``.
      latent_dim: Z; hidden: MLP width; logvar_clip: c; init_scale: std of the μ / ℓ
      output kernels; decoder_reads_x: the decoder reads [z; x] (else z only).
    """

    signals: tuple
    latent_dim: int = 8
    hidden: int = 64
    logvar_clip: float = 5.0
    init_scale: float = 0.01
    decoder_reads_x: bool = True

    def _gaussian(self, h, name: str):
        """h [B, ·] -> (μ [B, Z], soft-clipped ℓ [B, Z]) from a small-init layer."""
        small = nn.initializers.normal(self.init_scale)
        out = nn.Dense(2 * self.latent_dim, kernel_init=small, name=name)(h)
        mu, lv = jnp.split(out, 2, axis=-1)
        return mu, soft_clip(lv, self.logvar_clip)

    def _mlp(self, h, name: str):
        return nn.relu(nn.Dense(self.hidden, name=name)(h))

    @nn.compact
    def __call__(self, x, batch=None, sample: bool = True) -> dict:
        """x [B, H] context; batch: the ``y_<signal>`` [B] arrays, or None (serving: the
        prior only). Returns μ_p, ℓ_p [B, Z] and, given y, μ_q, ℓ_q [B, Z], z [B, Z] (a
        posterior sample with ``sample``, else μ_q), the decoder heads (name -> [B, ·])
        and ``kl`` [B]."""
        mu_p, lv_p = self._gaussian(self._mlp(x, "prior_hidden"), "prior_out")
        if batch is None:
            return {"mu_p": mu_p, "logvar_p": lv_p}
        y = encode_signals(batch, self.signals)
        mu_q, lv_q = self._gaussian(self._mlp(jnp.concatenate([x, y], -1), "post_hidden"),
                                    "post_out")
        if sample:
            eps = jax.random.normal(self.make_rng("latent"), mu_q.shape, mu_q.dtype)
            z = mu_q + jnp.exp(0.5 * lv_q) * eps
        else:
            z = mu_q
        dec_in = jnp.concatenate([z, x], -1) if self.decoder_reads_x else z
        h = self._mlp(dec_in, "dec_hidden")
        heads = {}
        for name, kind, size in self.signals:
            width = size if kind == "categorical" else (1 if kind == "binary" else 2)
            heads[name] = nn.Dense(width, name=f"dec_{name}")(h)
        return {"mu_p": mu_p, "logvar_p": lv_p, "mu_q": mu_q, "logvar_q": lv_q, "z": z,
                "heads": heads, "kl": gaussian_kl(mu_q, lv_q, mu_p, lv_p)}


class IntentPolicyNet(reinforce.PolicyNet):
    """:class:`~jaxrec.methods.reinforce.PolicyNet` whose policy reads ``cond(s, sg(z̄))``.

    Extra attributes: ``signals``, ``latent_dim``, ``vae_hidden``, ``logvar_clip``,
    ``init_scale``, ``decoder_reads_x`` (the VAE's), ``conditioning``,
    ``policy_latent``, ``context_stop_gradient`` (module docstring).
    """

    signals: tuple = ()
    latent_dim: int = 8
    vae_hidden: int = 64
    logvar_clip: float = 5.0
    init_scale: float = 0.01
    decoder_reads_x: bool = True
    conditioning: str = "concat"
    policy_latent: str = "prior_mean"
    context_stop_gradient: bool = False

    def setup(self):
        super().setup()
        self.vae = IntentVAE(self.signals, self.latent_dim, self.vae_hidden,
                             self.logvar_clip, self.init_scale, self.decoder_reads_x)
        zero = nn.initializers.zeros
        if self.conditioning == "film":
            self.film = nn.Dense(2 * self.hidden, kernel_init=zero)
        elif self.conditioning == "gate":
            self.gate = nn.Dense(self.hidden, kernel_init=zero)

    def condition(self, s, batch, train: bool):
        """(the policy's input [B, H'], {'vae': VAE outputs, 'z_bar': [B, Z]})."""
        x = jax.lax.stop_gradient(s) if self.context_stop_gradient else s
        # Training: the full VAE (posterior sample for the ELBO). Evaluation: the same
        # pass with z = μ_q when the batch carries y (the evaluator reads the posterior
        # mean too); serving without y runs the prior only.
        has_y = all(f"y_{name}" in batch for name, _, _ in self.signals)
        vae = self.vae(x, batch if (train or has_y) else None, sample=train)
        z_bar = vae["mu_p"]
        if self.policy_latent == "prior_sample" and train:
            eps = jax.random.normal(self.make_rng("latent"), z_bar.shape, z_bar.dtype)
            z_bar = z_bar + jnp.exp(0.5 * vae["logvar_p"]) * eps
        z_bar = jax.lax.stop_gradient(z_bar)     # the RL gradient never reaches the VAE
        if self.conditioning == "concat":
            s_pi = jnp.concatenate([s, z_bar], -1)
        elif self.conditioning == "film":
            g, b = jnp.split(self.film(z_bar), 2, axis=-1)
            s_pi = s * (1.0 + g) + b
        else:
            s_pi = s * 2.0 * jax.nn.sigmoid(self.gate(z_bar))
        return s_pi, {"vae": vae, "z_bar": z_bar}


@struct.dataclass
class Hyper(reinforce.Hyper):
    """REINFORCE's settings plus the VAE loss weights."""

    kl_weight: float = 1.0
    vae_weight: float = 1.0
    logvar_clip: float = 5.0
    signals: tuple = ()


def _intent_config(config):
    i = config.intent
    cond = config_util.choice(i, "intent.conditioning", CONDITIONINGS, "concat")
    pl = config_util.choice(i, "intent.policy_latent", POLICY_LATENTS, "prior_mean")
    clip = float(i.get("logvar_clip", 5.0))
    if clip <= 0:
        raise ValueError(f"config.intent.logvar_clip must be > 0, got {clip}")
    return i, cond, pl, clip


def init(rng, task, config) -> State:
    check_task(task, "latent_intent")
    signals = tuple(tuple(s) for s in task.extras.get("signals", ()))
    if not signals:
        raise ValueError("latent_intent needs behaviour signals (task.extras['signals'] of "
                         "the 'intent' data kind); the task has none")
    i, cond, pl, clip = _intent_config(config)
    net = IntentPolicyNet(
        **reinforce.net_kwargs(config, task), signals=signals,
        latent_dim=int(i.get("latent_dim", 8)), vae_hidden=int(i.get("hidden", 64)),
        logvar_clip=clip, init_scale=float(i.get("init_scale", 0.01)),
        decoder_reads_x=bool(i.get("decoder_reads_x", True)), conditioning=cond,
        policy_latent=pl, context_stop_gradient=bool(i.get("context_stop_gradient", False)))
    hp = Hyper(**dataclasses.asdict(reinforce.hyper(config)),
               kl_weight=float(i.get("kl_weight", 1.0)),
               vae_weight=float(i.get("vae_weight", 1.0)), logvar_clip=clip, signals=signals)
    return reinforce.init_state(rng, task, config, net, hp)


def vae_loss(vae: dict, batch, hp: Hyper):
    """(−ELBO averaged over the batch, metrics): reconstruction NLL + β_KL · KL."""
    nll, per = signal_nll(vae["heads"], batch, hp.signals, hp.logvar_clip)
    recon, kl = nll.mean(), vae["kl"].mean()
    neg_elbo = recon + hp.kl_weight * kl
    return neg_elbo, {"neg_elbo": neg_elbo, "recon": recon, "kl": kl,
                      **{f"nll_{k}": v for k, v in per.items()}}


def loss_fn(params, state: State, batch, rng):
    out = state.net.apply(params, batch, train=True, rngs={"latent": rng})
    rl, m_rl = reinforce.reinforce_loss(out, batch, state.hp)
    neg_elbo, m_vae = vae_loss(out["vae"], batch, state.hp)
    loss = rl + state.hp.vae_weight * neg_elbo
    return loss, {"loss": loss, **m_rl, **m_vae}


def train_step(state: State, batch, rng, consts=None):
    del consts
    return common.gradient_step(state, loss_fn, batch, rng)


# Scores [B, N]: the intent-conditioned policy logits (z̄ = the prior mean).
predict = reinforce.predict


def latents(state: State, batch, consts=None) -> dict:
    """{'prior_mean', 'posterior_mean': [B, Z], 'state': [B, H]} for the intent evaluator."""
    del consts
    out = state.net.apply(state.params, batch, train=False)
    return {"prior_mean": out["vae"]["mu_p"], "posterior_mean": out["vae"]["mu_q"],
            "state": out["state"]}
