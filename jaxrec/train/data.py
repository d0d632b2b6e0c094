"""From a prepared dataset to training batches and evaluation sets, driven by the config.

The trainer knows *data kinds* and *evaluation protocols*, never methods:

- ``config.data.kind``:
  - ``'replay'``: SQN/SA2C replay transitions (rl.md §1.4). Batch fields: ``state [B, L]``,
    ``len_state [B]``, ``action [B]``, ``is_buy [B]``, ``next_state [B, L]``,
    ``len_next_state [B]``, ``is_done [B]``.
  - ``'sequence'``: leave-one-out training windows (iisan.md §1.13). Fields: ``state [B, L]``
    (left-padded, items shifted by +1, 0 = pad), ``len_state [B]``, ``targets [B, L]``
    (dense ids, −1 = none).
  - ``'prl'``: PRL trajectory rows (rl.md §6): ``step``, ``state``, ``len_state``, ``action``,
    ``is_buy``, ``reward_to_go``, ``reward_to_go_norm``.
- ``config.eval.protocol``:
  - ``'session'``: every event of held-out sessions (rl.md §9); fields ``state``,
    ``len_state``, ``target``, ``is_buy``, ``step``; metrics per purchase / click.
  - ``'loo'``: leave-one-out; fields ``state`` (left-padded, shifted), ``len_state``,
    ``target`` (dense id); the items of the input window are excluded from the ranking.

Batches come from a grain ``MapDataset`` of *index batches* (seeded shuffle, reshuffled
every epoch) mapped through one vectorised numpy gather, so batch ``i`` is a pure function of
``(seed, i)``: the data position saved in a checkpoint is simply the step.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jaxrec.data import examples
from jaxrec.data import prepare as prep


@dataclasses.dataclass
class EvalSet:
    """Evaluation queries of one split: a dict of [Q, ...] arrays plus protocol info."""

    arrays: dict
    protocol: str
    groups: tuple

    @property
    def size(self) -> int:
        return int(len(self.arrays["target"]))


@dataclasses.dataclass
class TaskData:
    """Everything the trainer needs from the data side."""

    num_items: int
    train: dict                 # name -> [T, ...] arrays of training examples
    validation: EvalSet
    test: EvalSet
    stats: dict
    extras: dict                # e.g. item popularity, PRL reward statistics

    @property
    def num_train(self) -> int:
        return int(len(next(iter(self.train.values()))))


def _pad_id(config, num_items: int) -> int:
    return num_items if config.data.get("padding", "right") == "right" else 0


def build_task(config, dataset: Optional[prep.Dataset] = None) -> TaskData:
    """Loads the dataset named by ``config.dataset`` and builds examples per ``config.data``."""
    if dataset is None:
        dataset = prep.load(config.dataset.name, raw_dir=config.dataset.get("raw_dir"),
                            data_dir=config.dataset.get("data_dir"),
                            **dict(config.dataset.get("options", {})))
    n = dataset.num_items
    L = int(config.data.state_len)
    kind = config.data.kind
    protocol = config.eval.protocol
    extras = {"item_counts": np.bincount(dataset.splits["train"].items, minlength=n)}
    if kind in ("replay", "prl") and protocol != "session":
        raise ValueError(f"config.data.kind={kind!r} needs config.eval.protocol='session'")
    if kind == "sequence" and protocol != "loo":
        raise ValueError("config.data.kind='sequence' needs config.eval.protocol='loo'")

    if protocol == "session":
        if config.data.get("padding", "right") != "right":
            raise ValueError("the session protocol uses the RL papers' right padding with "
                             "pad = num_items; set config.data.padding='right'")
        pad = n
        train_s = dataset.splits["train"]
        if kind == "replay":
            train = examples.replay_transitions(train_s, L, pad_id=pad)
        elif kind == "prl":
            max_len = int(config.data.get("prl_max_length", 50))
            r_c, r_b = float(config.rl.r_click), float(config.rl.r_buy)
            mean, mx = examples.prl_reward_stats(dataset.all_sessions(), max_len, r_c, r_b)
            extras.update(reward_mean=mean, reward_max=mx)
            train = examples.prl_trajectories(train_s, mean, L, pad_id=pad,
                                              max_length=max_len, r_click=r_c, r_buy=r_b)
        else:
            raise ValueError(f"unknown config.data.kind {kind!r} (replay, prl, sequence)")
        evals = {}
        for split in ("validation", "test"):
            s = dataset.splits[split]
            if kind == "prl":   # PRL evaluates only sessions of at most max_length events
                s = s.filter_lengths(1, int(config.data.get("prl_max_length", 50)))
            evals[split] = EvalSet(examples.eval_queries(s, L, pad_id=pad), "session",
                                   ("purchase", "click"))
    elif protocol == "loo":
        loo = examples.leave_one_out(
            dataset.all_sessions(), max_len=L, min_len=int(config.data.get("loo_min_len", 5)),
            keep_last=config.data.get("loo_keep_last", None))
        tgt = loo.train_targets.astype(np.int32) - 1          # dense ids, -1 = padding
        train = {"state": loo.train_inputs, "targets": tgt,
                 "len_state": np.maximum((loo.train_inputs > 0).sum(1), 1).astype(np.int32)}
        extras["item_counts"] = np.bincount(tgt[tgt >= 0], minlength=n)
        evals = {}
        for split, inp, t in (("validation", loo.valid_inputs, loo.valid_target),
                              ("test", loo.test_inputs, loo.test_target)):
            evals[split] = EvalSet(
                {"state": inp, "len_state": np.maximum((inp > 0).sum(1), 1).astype(np.int32),
                 "target": (t - 1).astype(np.int32)}, "loo", ("all",))
    else:
        raise ValueError(f"unknown config.eval.protocol {protocol!r} (session, loo)")
    max_q = config.eval.get("max_queries", None)
    if max_q:
        for k, ev in evals.items():   # a deterministic prefix keeps smoke runs quick
            ev.arrays = {a: v[:int(max_q)] for a, v in ev.arrays.items()}
    return TaskData(num_items=n, train=train, validation=evals["validation"],
                    test=evals["test"], stats=dataset.stats(), extras=extras)


class BatchSource:
    """Random-access training batches: ``source[i]`` is batch i (seeded, epoch-reshuffled).

    Args:
      arrays: name -> [T, ...] training examples.
      batch_size: rows per batch (the last partial batch of each pass is dropped).
      seed: shuffle seed.
    """

    def __init__(self, arrays: dict, batch_size: int, seed: int):
        import grain
        self.arrays = arrays
        n = len(next(iter(arrays.values())))
        if n < batch_size:
            raise ValueError(f"only {n} training examples for batch_size {batch_size}; "
                             "lower config.train.batch_size")
        self.steps_per_epoch = n // batch_size
        # Index batches over an endless, per-epoch reshuffled stream of example indices.
        self._index = (grain.MapDataset.range(n).shuffle(seed=seed).repeat(None)
                       .batch(batch_size, drop_remainder=True))

    def __getitem__(self, i: int) -> dict:
        idx = np.asarray(self._index[int(i)])
        return {k: v[idx] for k, v in self.arrays.items()}


def eval_batches(ev: EvalSet, batch_size: int):
    """Yields (batch dict of [b, ...] arrays, number of real rows), the last batch padded to
    ``batch_size`` by repeating row 0 so the jitted predict compiles once."""
    n = ev.size
    for a in range(0, n, batch_size):
        b = min(n, a + batch_size)
        batch = {k: v[a:b] for k, v in ev.arrays.items()}
        if b - a < batch_size:
            fill = batch_size - (b - a)
            batch = {k: np.concatenate([v, np.repeat(v[:1], fill, axis=0)])
                     for k, v in batch.items()}
        yield batch, b - a
