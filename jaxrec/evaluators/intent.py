"""Intent recovery: how much of the synthetic data's latent intent a model's vectors hold.

Paper: Chang et al., "Latent User Intent Modeling for Sequential Recommenders", WWW '23
Companion (specs/intent_pcrec.md §1.4: "intent recovery: linear-probe AUC, or NMI of z̄
against the true intent"). The synthetic generator keeps the intent of every event
(``gt_intent`` in the evaluation sets of the ``'intent'`` data kind,
:mod:`jaxrec.data.intent`); real logs have none, so this evaluator is for synthetic data.

The method provides ``latents(state, batch, consts) -> {name: [B, D]}`` (e.g. the prior
mean z̄, the posterior mean, the GRU state) and, optionally, their names in ``LATENTS``. For every name, over the split's queries
(the first ``max_points``):

- ``<name>/probe_auc``: a multinomial logistic regression (L2 ``probe_l2``, full-batch
  Adam, ``probe_steps`` steps on standardised vectors) fitted on a seeded half of the
  queries; the macro one-vs-rest ROC AUC of its probabilities on the other half
  (classes with both positives and negatives there);
- ``<name>/probe_acc``: its accuracy on that half;
- ``<name>/nmi``: normalised mutual information (arithmetic mean of the entropies, the
  common default) between k-means clusters of the vectors (k = number of intents,
  k-means++ seeding, best of ``kmeans_restarts``) and the true intents.

The vectors are computed on device batch by batch (jitted); the probe and k-means run on
the host over at most ``max_points`` rows. Ground-truth arrays (``gt_*``) are never
handed to the method.
"""

from __future__ import annotations

import functools
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.runs import eval_batches


# ----------------------------------------------------------------------- pure metrics
def average_ranks(x: np.ndarray) -> np.ndarray:
    """[n] 1-based ranks of ``x`` [n], ties sharing their average rank."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.concatenate([[True], xs[1:] != xs[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [len(x)]]) - 1
    avg = (first + last) / 2.0 + 1.0
    out = np.empty(len(x), np.float64)
    out[order] = avg[group]
    return out


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` [n] for the boolean labels ``positive`` [n] (Mann–Whitney,
    ties counted half); NaN when one class is absent."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(scores)
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean one-vs-rest AUC over the classes (columns of ``probs`` [n, K]) that have both
    positives and negatives among ``labels`` [n]."""
    aucs = [roc_auc(probs[:, c], labels == c) for c in range(probs.shape[1])]
    aucs = [a for a in aucs if np.isfinite(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information of two labelings [n]: I(a; b) / mean(H(a), H(b))
    (natural logs; 1 when both are constant and equal, 0 when one is constant)."""
    a, b = np.unique(a, return_inverse=True)[1], np.unique(b, return_inverse=True)[1]
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    ha, hb = _entropy(joint.sum(1)), _entropy(joint.sum(0))
    if ha == 0.0 and hb == 0.0:
        return 1.0
    if ha == 0.0 or hb == 0.0:
        return 0.0
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / (pa @ pb)[nz])).sum())
    return max(mi, 0.0) / (0.5 * (ha + hb))


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50, restarts: int = 4
           ) -> np.ndarray:
    """[n] cluster ids of ``x`` [n, D]: Lloyd's k-means with k-means++ seeding, the best
    (lowest inertia) of ``restarts`` seeded runs."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float64)
    n = len(x)
    best, best_inertia = np.zeros(n, np.int64), np.inf
    for _ in range(restarts):
        centres = [x[rng.integers(n)]]
        for _ in range(1, k):
            d = np.min(((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
            p = d / d.sum() if d.sum() > 0 else np.full(n, 1.0 / n)
            centres.append(x[rng.choice(n, p=p)])
        c = np.asarray(centres)
        for _ in range(iters):
            assign = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
            new = np.asarray([x[assign == j].mean(0) if (assign == j).any() else c[j]
                              for j in range(k)])
            if np.allclose(new, c):
                break
            c = new
        inertia = float(((x - c[assign]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = assign, inertia
    return best


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "lr"))
def _fit_probe(x, y, l2, num_classes: int, steps: int, lr: float) -> dict:
    """Full-batch Adam on the L2-regularised softmax regression of y [n] on x [n, D]
    from zero weights; jitted once per shape (the same for every evaluation)."""
    tx = optax.adam(lr)

    def loss(p):
        ce = optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y).mean()
        return ce + l2 * jnp.sum(p["w"] ** 2)

    def step(carry, _):
        p, o = carry
        u, o = tx.update(jax.grad(loss)(p), o, p)
        return (optax.apply_updates(p, u), o), None

    p = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
    (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)
    return p


def linear_probe(x_fit, y_fit, x_eval, num_classes: int, l2: float = 1e-3,
                 steps: int = 300, lr: float = 0.05) -> np.ndarray:
    """Multinomial logistic regression fitted on (``x_fit`` [n, D], ``y_fit`` [n]);
    returns class probabilities [m, K] for ``x_eval`` [m, D]. Features are standardised
    with the fit half's statistics; full-batch Adam from zero weights (deterministic)."""
    mu, sd = x_fit.mean(0), x_fit.std(0) + 1e-6
    xf = jnp.asarray((x_fit - mu) / sd, jnp.float32)
    xe = jnp.asarray((x_eval - mu) / sd, jnp.float32)
    p = _fit_probe(xf, jnp.asarray(y_fit, jnp.int32), jnp.float32(l2), int(num_classes),
                   int(steps), float(lr))
    return np.asarray(jax.nn.softmax(xe @ p["w"] + p["b"]))


def recovery_metrics(z: np.ndarray, intent: np.ndarray, num_classes: int, seed: int = 0,
                     l2: float = 1e-3, steps: int = 300, restarts: int = 4) -> dict:
    """{'probe_auc', 'probe_acc', 'nmi'} of vectors ``z`` [n, D] against ``intent`` [n]
    (module docstring)."""
    perm = np.random.default_rng(seed).permutation(len(z))
    fit, ev = perm[: len(z) // 2], perm[len(z) // 2:]
    probs = linear_probe(z[fit], intent[fit], z[ev], num_classes, l2=l2, steps=steps)
    k = len(np.unique(intent))
    sd = z.std(0) + 1e-6
    clusters = kmeans((z - z.mean(0)) / sd, k, seed=seed, restarts=restarts)
    return {"probe_auc": macro_auc(probs, intent[ev]),
            "probe_acc": float((probs.argmax(1) == intent[ev]).mean()),
            "nmi": nmi(clusters, intent)}


# ----------------------------------------------------------------------- the evaluator
class IntentEvaluator:
    """Intent recovery of the method's ``latents`` on one split (module docstring).

    Options: ``batch_size`` (256), ``max_points`` (4000), ``seed`` (0), ``probe_l2``
    (1e-3), ``probe_steps`` (300), ``kmeans_restarts`` (4).
    """

    lower_is_better = ()

    def __init__(self, method: ModuleType, task, config, options):
        del config
        self.options = options
        self.task = task
        fn = getattr(method, "latents", None)
        if fn is None:
            raise ValueError(f"the intent evaluator needs {method.__name__}.latents(state, "
                             f"batch, consts) -> {{name: [B, D]}}")
        for split in ("validation", "test"):
            if "gt_intent" not in task.split(split).arrays:
                raise ValueError(
                    f"the intent evaluator needs the true intents (gt_intent) of the "
                    f"synthetic data's 'intent' task; dataset {task.name!r} (kind "
                    f"{task.kind!r}) has none: remove config.evals.intent")
        self._latents = jax.jit(fn)
        self.batch_size = int(options.get("batch_size", 256))
        self.max_points = int(options.get("max_points", 4000))
        self.seed = int(options.get("seed", 0))
        self.l2 = float(options.get("probe_l2", 1e-3))
        self.steps = int(options.get("probe_steps", 300))
        self.restarts = int(options.get("kmeans_restarts", 4))
        # Declared by the method (``LATENTS``) so a misspelled select metric fails early.
        self._names = tuple(sorted(getattr(method, "LATENTS", ()) or ())) or None

    def metric_names(self, split: str):
        """The keys :meth:`run` returns, or None when the method declares no ``LATENTS``."""
        del split
        if self._names is None:
            return None
        return [f"{n}/{m}" for n in self._names for m in ("probe_auc", "probe_acc", "nmi")]

    def vectors(self, state, consts, split: str) -> tuple[dict, np.ndarray]:
        """({name: [Q', D]}, intents [Q']) over the first ``max_points`` queries."""
        arrays = self.task.split(split).arrays
        q = min(len(arrays["target"]), self.max_points)
        arrays = {k: v[:q] for k, v in arrays.items()}
        inputs = {k: v for k, v in arrays.items() if not k.startswith("gt_")}
        out: dict = {}
        for batch, n in eval_batches(inputs, self.batch_size):
            for name, v in self._latents(state, batch, consts).items():
                out.setdefault(name, []).append(np.asarray(v)[:n])
        return {k: np.concatenate(v) for k, v in out.items()}, arrays["gt_intent"]

    def run(self, state, consts, split: str) -> dict:
        vecs, intent = self.vectors(state, consts, split)
        k = int(max(intent.max(initial=0) + 1, 2))
        out = {}
        for name in sorted(vecs):
            m = recovery_metrics(vecs[name], intent, k, seed=self.seed, l2=self.l2,
                                 steps=self.steps, restarts=self.restarts)
            out.update({f"{name}/{key}": v for key, v in m.items()})
        return out
