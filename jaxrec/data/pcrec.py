"""PCRec's leave-one-out data (Sun et al., SIGIR 2022; specs/intent_pcrec.md §2.6).

Two task kinds, registered like those of :mod:`jaxrec.data.tasks` (importing this module
registers them; :mod:`jaxrec.methods.pcrec` does):

- ``'pcrec_sequence'`` (SASRec, YouTube-DNN; the reference ``Data_loader.py``): keep the
  users with at least ``config.data.loo_min_len`` (5) items and, when
  ``config.data.min_unique`` > 0, at least that many distinct items (the reference's
  RetailRocket rule ``len(set(seq)) > 3`` is ``min_unique = 4``), then the ``'sequence'``
  builder: test = s[-1] from s[:-1], validation = s[-2] from s[:-2], training on s[:-2]
  cut into windows of ``state_len`` inputs, left-padded with id 0 (items shifted by one).
  Deviation: the reference cuts t = s[:-2] into disjoint chunks of max_len items (the
  remainder first), so the transition between two chunks is never trained; the
  ``'windows'`` of :func:`jaxrec.data.examples.leave_one_out` overlap by one item and
  train every target once. The reference feeds max_len − 1 inputs; ``state_len`` here is
  that input width.
- ``'pcrec_bpr'`` (BPR; ``BPR/Data_loader.py``): the same filters (the reference always
  applies ``len(set(seq)) > 3`` here); each sequence is deduplicated keeping last
  occurrences; its last item is the test target, the second-to-last the validation
  target, the rest are (user, item) training pairs. Train fields ``user [T]``,
  ``item [T]`` (dense ids). Evaluation sets carry ``user [Q]`` and, as ``state``, the
  user's training items (shifted ids, left-padded to the longest history) so the ranking
  evaluator's ``exclude_history`` removes them as the reference's mask does;
  ``extras['history'] [U, H]`` holds the same rows for negative sampling.
"""

from __future__ import annotations

import numpy as np

from jaxrec.data import prepare as prep
from jaxrec.data import tasks
from jaxrec.data.sessions import Sessions


def unique_counts(users: Sessions) -> np.ndarray:
    """``[S]`` number of distinct items of each row."""
    n = int(users.items.max()) + 1 if users.num_events else 1
    key = np.unique(users.event_session().astype(np.int64) * n + users.items)
    return np.bincount(key // n, minlength=users.num_sessions)


def filter_users(users: Sessions, min_len: int, min_unique: int) -> Sessions:
    """Rows with ``len >= min_len`` and ``distinct items >= min_unique``.

    Raises:
      ValueError: when no user is left (naming the thresholds).
    """
    keep = users.lengths >= min_len
    if min_unique > 0:
        keep &= unique_counts(users) >= min_unique
    if not keep.any():
        raise ValueError(f"pcrec data: no user has >= {min_len} items and >= {min_unique} "
                         f"distinct items (config.data.loo_min_len / config.data.min_unique)")
    return users.select(np.flatnonzero(keep))


class _Users:
    """A stand-in for a prepared dataset that exposes only the filtered users, so the
    shared ``'sequence'`` builder (which reads ``all_sessions()``) serves PCRec too."""

    def __init__(self, users: Sessions):
        self._users = users

    def all_sessions(self) -> Sessions:
        return self._users


@tasks.register("pcrec_sequence")
def sequence_task(dataset: prep.Dataset, config) -> tasks.TaskParts:
    """Filtered users, then the ``'sequence'`` leave-one-out builder (module docstring)."""
    users = filter_users(dataset.all_sessions(), int(config.data.get("loo_min_len", 5)),
                         int(config.data.get("min_unique", 0) or 0))
    return tasks.sequence_task(_Users(users), config)


def dedup_keep_last(seq: np.ndarray) -> np.ndarray:
    """``seq [n]`` -> its distinct items in the order of their *last* occurrence
    (the reference's ``reversed(OrderedDict.fromkeys(reversed(seq)))``)."""
    rev = seq[::-1]
    _, first_in_rev = np.unique(rev, return_index=True)
    return rev[np.sort(first_in_rev)][::-1]


@tasks.register("pcrec_bpr")
def bpr_task(dataset: prep.Dataset, config) -> tasks.TaskParts:
    """(user, item) pairs of the deduplicated sequences minus their last two items."""
    min_unique = config.data.get("min_unique", 4)
    users = filter_users(dataset.all_sessions(), int(config.data.get("loo_min_len", 5)),
                         4 if min_unique is None else int(min_unique))
    seqs = [dedup_keep_last(users.sequence(s)) for s in range(users.num_sessions)]
    seqs_ok = [s for s in seqs if len(s) >= 3]
    if len(seqs_ok) != len(seqs):
        raise ValueError("pcrec_bpr: a kept user has fewer than 3 distinct items; raise "
                         "config.data.min_unique to at least 3")
    train_items = [s[:-2] for s in seqs]
    num_train = np.array([len(t) for t in train_items])
    h = max(int(num_train.max()), 1)
    history = np.zeros((len(seqs), h), np.int32)          # left-padded shifted ids
    for u, t in enumerate(train_items):
        if len(t):
            history[u, h - len(t):] = t + 1
    train = {"user": np.repeat(np.arange(len(seqs)), num_train).astype(np.int32),
             "item": np.concatenate(train_items).astype(np.int32)}
    if not len(train["item"]):
        raise ValueError("pcrec_bpr: no training pairs (every user has exactly 2 distinct "
                         "items after filtering)")
    user_ids = np.arange(len(seqs), dtype=np.int32)
    lens = np.array([len(s) for s in seqs])
    evals = []
    for back in (2, 1):                                    # validation, test
        evals.append(tasks.EvalSet({
            "state": history, "len_state": np.maximum(num_train, 1).astype(np.int32),
            "target": np.array([s[-back] for s in seqs], np.int32),
            "user": user_ids,
            "session": users.session_ids.astype(np.int32),
            "position": (lens - back).astype(np.int32)}, "loo", tasks.LOO_GROUPS,
            id_shift=1))
    return tasks.TaskParts(train, *evals, extras={"history": history,
                                                  "num_users": np.int64(len(seqs))})
