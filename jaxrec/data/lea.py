"""LEA's offline augmentation: the LLM environment's outputs precomputed into the task.

Paper: Wang, Karatzoglou, Arapakis, Jose, SIGIR 2024, arXiv 2403.16948 (spec ``rl.md`` §8):
the LE (:mod:`jaxrec.methods.lea`) is used only while preparing the training data, so the
recommender (SQN / SA2C) trains and serves without the LLM. All choices are [inferred] and
fields of ``config.lea``.

Data kind ``'lea'`` (also reachable as ``jaxrec.data.lea.lea_task``): the ``'replay'`` task
plus, for every training transition (s, a, s′):

* ``le_state [T, Ds]``, ``le_next_state [T, Ds]``: s^e of s and s′ (state model);
* ``le_reward [T]``: the reward model's reward of (s, a), ``reward_transform`` of its score
  mixed with the fixed one: ``(1 − reward_mix)·r_fixed + reward_mix·r_model``;
* ``aug_actions [T, K]``: the K = ``aug_k`` items with the highest state–action similarity
  s^e · A^T (the state model's own ranking), never the logged action and, with
  ``aug_exclude_history``, never an item of the state window;
* ``aug_reward [T, K]``: their reward-model rewards (same transform, mixed with r_click);
  ``aug_weights [T, K]``: σ(score) (``aug_weighting='reward'``) or 1 (``'uniform'``).

Evaluation queries get ``le_state [Q, Ds]`` (the state model on their window): with
``lea.state`` 'concat' / 'replace' the recommender reads it at test time too, so the state
plug point does need the LE's state model to serve (its output can be cached per prefix);
the reward and augmentation plug points do not.

``task.extras['lea']`` holds the environment's training losses and, on the validation
queries, its own quality (:func:`diagnostics`).

Everything is deterministic for ``lea.seed`` (the LE's training and the precomputation are
seeded; no sampling happens here), and cached under ``lea.cache_dir`` keyed by the
environment, the arrays and the settings, so every variant of a table reuses one run.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import config_util
from jaxrec.data import tasks
from jaxrec.methods import lea

TRANSFORMS = ("sigmoid", "raw")
WEIGHTINGS = ("reward", "uniform")
AUG_FIELDS = ("aug_k", "aug_weighting", "aug_exclude_history", "reward_transform", "reward_mix",
              "eval_batch")
TRAIN_KEYS = ("le_state", "le_next_state", "le_reward", "aug_actions", "aug_reward", "aug_weights")


@functools.partial(jax.jit, static_argnums=0)
def _states(model, params, ids, mask):
    return model.apply({"params": params}, ids, mask, method=lea.LEModel.state)


@functools.partial(jax.jit, static_argnums=0)
def _scores(model, params, ids, mask):
    return model.apply({"params": params}, ids, mask, method=lea.LEModel.reward)


@functools.partial(jax.jit, static_argnums=3)
def _top_k(s, actions, exclude, k: int):
    """s [b, Ds], actions [N, Ds], exclude [b, N] bool -> top-k item ids [b, k]."""
    sim = jnp.where(exclude, -jnp.inf, s @ actions.T)
    return jax.lax.top_k(sim, k)[1].astype(jnp.int32)


def _batched(fn, arrays: tuple, batch: int, desc: str = ""):
    """``fn(*rows)`` over ``[M, ...]`` arrays in fixed-size batches (the last padded with
    row 0, so one compile), concatenated to ``[M, ...]``."""
    m = len(arrays[0])
    out = []
    it = range(0, m, batch)
    if desc and m > 4 * batch:
        from tqdm import tqdm
        it = tqdm(it, desc=desc, unit="batch", mininterval=5.0)
    for a in it:
        rows = [x[a:a + batch] for x in arrays]
        fill = batch - len(rows[0])
        if fill:
            rows = [np.concatenate([r, np.repeat(r[:1], fill, axis=0)]) for r in rows]
        out.append(np.asarray(fn(*rows))[:batch - fill])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def state_vectors(env: lea.Environment, state: np.ndarray, batch: int, desc: str = "") -> np.ndarray:
    """s^e [M, Ds] float32 of replay states [M, L] (unique windows computed once)."""
    uniq, inv = np.unique(np.asarray(state), axis=0, return_inverse=True)
    ids, mask, _ = lea.prefix_tokens(uniq, env.model.num_items, env.model.config.vocab_size,
                                     **lea.special_ids(env.decoder))
    out = _batched(lambda i, m: _states(env.model, env.params["state"], i, m), (ids, mask), batch, desc)
    return out[np.asarray(inv).reshape(-1)].astype(np.float32)


def reward_scores(env: lea.Environment, state: np.ndarray, candidates: np.ndarray, batch: int,
                  desc: str = "") -> np.ndarray:
    """Raw reward-model scores [M] of (state [M, L], candidate [M])."""
    ids, mask = lea.reward_inputs(state, candidates, env.model.num_items, env.model.config.vocab_size,
                                  **lea.special_ids(env.decoder))
    return _batched(lambda i, m: _scores(env.model, env.params["reward"], i, m), (ids, mask), batch,
                    desc).astype(np.float32)


def transform(scores: np.ndarray, how: str) -> np.ndarray:
    """Reward-model scores -> rewards: 'sigmoid' σ(x) (the (0, 1) range of 0.2 / 1.0) or 'raw'."""
    if how == "sigmoid":
        return (1.0 / (1.0 + np.exp(-scores))).astype(np.float32)
    return scores.astype(np.float32)


def augment(env: lea.Environment, train: dict, config, progress: bool = True) -> dict:
    """The :data:`TRAIN_KEYS` arrays of the module docstring for replay arrays ``train``."""
    s = config.lea
    how = config_util.choice(s, "lea.reward_transform", TRANSFORMS)
    weighting = config_util.choice(s, "lea.aug_weighting", WEIGHTINGS)
    mix, k, bs = float(s.reward_mix), int(s.aug_k), int(s.eval_batch)
    n = env.model.num_items
    if not 1 <= k < n:
        raise ValueError(f"config.lea.aug_k must be in [1, {n - 1}], got {k}")
    r_click, r_buy = tasks.rewards_of(config)
    d = (lambda x: f"LEA {x}") if progress else (lambda x: "")
    t = len(train["action"])
    both = state_vectors(env, np.concatenate([train["state"], train["next_state"]]), bs, d("states"))
    le_state, le_next = both[:t], both[t:]
    fixed = np.where(train["is_buy"] > 0, r_buy, r_click).astype(np.float32)
    model_r = transform(reward_scores(env, train["state"], train["action"], bs, d("rewards")), how)
    actions = np.asarray(env.model.apply({"params": env.params["state"]}, method=lea.LEModel.actions))
    exclude_hist = bool(s.aug_exclude_history)

    def top(sv, st, act):
        ex = jax.nn.one_hot(act, n, dtype=bool)
        if exclude_hist:       # pad id n falls outside the one-hot (all zeros)
            ex = ex | jax.nn.one_hot(st, n, dtype=bool).any(1)
        return _top_k(sv, actions, ex, k)

    aug = _batched(top, (le_state, train["state"], train["action"]), bs, d("augmented actions"))
    aug_scores = reward_scores(env, np.repeat(train["state"], k, axis=0), aug.reshape(-1), bs,
                               d("augmented rewards")).reshape(t, k)
    aug_r = transform(aug_scores, how)
    weights = transform(aug_scores, "sigmoid") if weighting == "reward" else np.ones_like(aug_r)
    return {"le_state": le_state, "le_next_state": le_next,
            "le_reward": ((1 - mix) * fixed + mix * model_r).astype(np.float32),
            "aug_actions": aug.astype(np.int32),
            "aug_reward": ((1 - mix) * r_click + mix * aug_r).astype(np.float32),
            "aug_weights": weights.astype(np.float32)}


def diagnostics(env: lea.Environment, evalset: tasks.EvalSet, le_state: np.ndarray, batch: int,
                seed: int, k: int = 10) -> dict:
    """How good the environment is on held-out queries (for reading a table, not training):

    * ``state_hr@k``: share of queries whose target is among the state model's top k of
      s^e · A^T (its own next-item ranking, no exclusions);
    * ``reward_acc``: share of queries where r(s, target) > r(s, a⁻), a⁻ drawn uniformly
      among the items that are neither the target nor in the state window (seeded).
    """
    n = env.model.num_items
    target, state = evalset.arrays["target"], evalset.arrays["state"]
    actions = np.asarray(env.model.apply({"params": env.params["state"]}, method=lea.LEModel.actions))
    none = np.zeros((batch, n), bool)
    top = _batched(lambda sv: _top_k(sv, actions, none[:len(sv)], k), (le_state,), batch)
    rng = np.random.default_rng(seed)
    neg = rng.integers(0, n, len(target))
    for _ in range(100):
        bad = (neg == target) | (neg[:, None] == state).any(1)
        if not bad.any():
            break
        neg[bad] = rng.integers(0, n, int(bad.sum()))
    r_pos = reward_scores(env, state, target, batch)
    r_neg = reward_scores(env, state, neg, batch)
    return {f"state_hr@{k}": float((top == target[:, None]).any(1).mean()),
            "reward_acc": float((r_pos > r_neg).mean())}


def _key(env: lea.Environment, parts: tasks.TaskParts, config) -> str:
    h = hashlib.sha256()
    h.update(os.path.basename(str(env.info.get("source", ""))).encode())
    for a in (parts.train["state"], parts.train["action"], parts.train["is_buy"],
              parts.train["next_state"], parts.validation.arrays["state"], parts.test.arrays["state"]):
        lea._hash_arrays(h, a)
    h.update(json.dumps({f: config.lea[f] for f in AUG_FIELDS}, sort_keys=True).encode())
    h.update(json.dumps(tasks.rewards_of(config)).encode())
    h.update(str(lea.FORMAT).encode())
    return h.hexdigest()[:16]


@tasks.register("lea")
def lea_task(dataset, config) -> tasks.TaskParts:
    """The ``'replay'`` task with LEA's precomputed arrays (module docstring), cached."""
    parts = tasks.replay_task(dataset, config)
    if dataset.items is None or (dataset.items.titles is None and dataset.items.genres is None):
        raise ValueError(f"data kind 'lea': dataset {dataset.name!r} has no item titles or genres "
                         f"to describe its items with")
    env = lea.get_environment(dataset, config)
    path = os.path.join(lea.cache_root(config.lea), f"aug-{_key(env, parts, config)}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        arrays = augment(env, parts.train, config)
        bs = int(config.lea.eval_batch)
        arrays["val_le_state"] = state_vectors(env, parts.validation.arrays["state"], bs)
        arrays["test_le_state"] = state_vectors(env, parts.test.arrays["state"], bs)
    if not any(k.startswith("diag/") for k in arrays):
        diag = diagnostics(env, parts.validation, arrays["val_le_state"], int(config.lea.eval_batch),
                           int(config.lea.seed))
        arrays.update({f"diag/{k}": np.float64(v) for k, v in diag.items()})
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".incomplete.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        print(f"LEA augmentation -> {path}", file=sys.stderr, flush=True)
    parts.train.update({k: arrays[k] for k in TRAIN_KEYS})
    parts.validation.arrays["le_state"] = arrays["val_le_state"]
    parts.test.arrays["le_state"] = arrays["test_le_state"]
    parts.extras["lea"] = {**env.info, **{k[5:]: float(v) for k, v in arrays.items()
                                          if k.startswith("diag/")}}
    return parts
