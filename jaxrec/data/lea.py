"""LEA's data kind: the replay task plus the LLM environment's precomputed outputs.

Paper: Wang, Karatzoglou, Arapakis, Jose, SIGIR 2024, arXiv 2403.16948 (spec ``rl.md`` §8):
the LLM environment (LE) is used only while preparing the training data, so the recommender
(SQN / SA2C) trains and serves without the LLM. All choices are [inferred] and fields of
``config.lea``.

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

Where the arrays come from: an **artefact directory** written by an earlier stage (the LE's
training and precomputation, ``python -m jaxrec.methods.lea``) holding :data:`ARRAYS_FILE`
(the arrays above, under their names; ``val_le_state`` / ``test_le_state`` for the
evaluation queries) and :data:`INFO_FILE` (the environment's losses and held-out quality, and
the :func:`fingerprint` of the replay data the arrays belong to, checked here). The directory
is ``config.lea.artefact`` when set; otherwise the stage named by ``config.lea.build``
(``module.function(dataset, config) -> directory``, building it or reusing its cached copy) is
run first. This module imports no method: it reads files.

``task.extras['lea']`` holds the artefact's ``info.json`` (and ``source``: its directory).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os

import numpy as np

from jaxrec.data import tasks

TRAIN_KEYS = ("le_state", "le_next_state", "le_reward", "aug_actions", "aug_reward", "aug_weights")
EVAL_KEYS = ("val_le_state", "test_le_state")
ARRAYS_FILE = "arrays.npz"
INFO_FILE = "info.json"
__all__ = ["lea_task", "artefact_directory", "read_artefact", "fingerprint", "hash_arrays",
           "TRAIN_KEYS", "EVAL_KEYS", "ARRAYS_FILE", "INFO_FILE"]


def hash_arrays(h, *arrays) -> None:
    """Feeds each array's dtype, shape and bytes into the hashlib object ``h``."""
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())


def fingerprint(parts: tasks.TaskParts) -> str:
    """16 hex digits identifying the replay arrays an artefact is computed on (training
    state / action / is_buy / next_state and the evaluation states)."""
    h = hashlib.sha256()
    hash_arrays(h, parts.train["state"], parts.train["action"], parts.train["is_buy"],
                parts.train["next_state"], parts.validation.arrays["state"], parts.test.arrays["state"])
    return h.hexdigest()[:16]


def _resolve(name: str):
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"config.lea.build={name!r}: cannot import the stage ({e})") from e


def artefact_directory(dataset, config) -> str:
    """``config.lea.artefact``, or the directory the ``config.lea.build`` stage returns."""
    s = config.lea
    if s.get("artefact"):
        return str(s.artefact)
    if not s.get("build"):
        raise ValueError("data kind 'lea' needs config.lea.artefact (a directory written by "
                         "`python -m jaxrec.methods.lea`) or config.lea.build (the stage to run)")
    return str(_resolve(str(s.build))(dataset, config))


def read_artefact(path: str, parts: tasks.TaskParts) -> tuple[dict, dict]:
    """``(arrays, info)`` of an artefact directory, checked against the replay task ``parts``.

    Raises:
      FileNotFoundError: the directory or one of its files is missing.
      ValueError: it belongs to other replay data, or an array is missing / mis-shaped.
    """
    info_path, arrays_path = os.path.join(path, INFO_FILE), os.path.join(path, ARRAYS_FILE)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"LEA artefact directory {path!r} does not exist (config.lea.artefact; "
                                f"write one with `python -m jaxrec.methods.lea --config=...`)")
    for f in (info_path, arrays_path):
        if not os.path.exists(f):
            raise FileNotFoundError(f"{f}: missing, {path} is not a complete LEA artefact directory")
    with open(info_path) as f:
        info = json.load(f)
    want = fingerprint(parts)
    if info.get("fingerprint") != want:
        raise ValueError(f"{info_path}: the artefact was computed on other replay data (fingerprint "
                         f"{info.get('fingerprint')!r}, this task's is {want!r}): other dataset, "
                         f"state_len or split")
    with np.load(arrays_path) as z:
        arrays = {k: z[k] for k in z.files}
    rows = {**{k: len(parts.train["action"]) for k in TRAIN_KEYS},
            **dict(zip(EVAL_KEYS, (parts.validation.size, parts.test.size)))}
    for k, n in rows.items():
        if k not in arrays or len(arrays[k]) != n:
            got = "missing" if k not in arrays else f"{len(arrays[k])} rows"
            raise ValueError(f"{arrays_path}: array {k!r} is {got}, the task needs {n} rows")
    return arrays, info


@tasks.register("lea")
def lea_task(dataset, config) -> tasks.TaskParts:
    """The ``'replay'`` task with LEA's precomputed arrays (module docstring)."""
    parts = tasks.replay_task(dataset, config)
    if dataset.items is None or (dataset.items.titles is None and dataset.items.genres is None):
        raise ValueError(f"data kind 'lea': dataset {dataset.name!r} has no item titles or genres "
                         f"to describe its items with")
    path = artefact_directory(dataset, config)
    arrays, info = read_artefact(path, parts)
    parts.train.update({k: arrays[k] for k in TRAIN_KEYS})
    parts.validation.arrays["le_state"] = arrays["val_le_state"]
    parts.test.arrays["le_state"] = arrays["test_le_state"]
    parts.extras["lea"] = dict(info, source=path)
    return parts
