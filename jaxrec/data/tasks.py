"""The task seam: from a prepared dataset to what a method trains and is evaluated on.

A :class:`Task` is everything the core hands a method (README, "Adding a method: the contract"):
``num_items``, ``steps_per_epoch``, the item frequency over all events (the reference
``pop_dict`` of the SNQN/SA2C release, used by SA2C's IPS factor, the off-policy NDCG and
SMORL's novelty; rl.md §5, §7), item side information (titles, genres, images), the
training arrays, the validation and test :class:`EvalSet` s, and free-form ``extras`` (e.g.
PRL's per-step reward statistics, rl.md §6).

Task builders are registered by *data kind* (``config.data.kind``) with :func:`register`;
``build_task`` looks the kind up, or imports it when the kind is a dotted path
(``mypkg.tasks.my_builder``), so a new kind of data needs no edit here or in the trainer.
A builder is ``fn(dataset, config) -> TaskParts``; :func:`build_task` adds the parts every
task shares (item frequency, side information, statistics, the ``max_queries`` prefix). A
builder marked :func:`without_dataset` reads its own data (preference pairs) and gets
``dataset=None``: no interaction dataset is loaded for it.

Kinds registered here:

- ``'replay'``: SQN/SA2C replay transitions (rl.md §1.4). Train fields: ``state [T, L]``,
  ``len_state [T]``, ``action [T]``, ``is_buy [T]``, ``next_state [T, L]``,
  ``len_next_state [T]``, ``is_done [T]``. Evaluation: the session protocol.
- ``'prl'``: PRL trajectory rows of sessions with at most ``config.data.prl_max_length``
  events (rl.md §6): ``step``, ``state``, ``len_state``, ``action``, ``is_buy``,
  ``reward_to_go``, ``reward_to_go_norm``; extras ``reward_mean`` / ``reward_max`` [T_max]
  over all kept sessions (the reference's statistics). Evaluation: session protocol on the
  held-out sessions of at most that length (``config.data.prl_eval_sessions='short'``, the
  reference) or on all of them (``'all'``, comparable with the other methods).
- ``'sequence'``: per-user leave-one-out (iisan.md §1.13, intent_pcrec.md §2.6), left
  padding with 0 and items shifted by one. ``config.data.loo_train``: ``'windows'`` = one
  window of L positions per chunk with next-item ``targets [T, L]`` (dense ids, −1 = none;
  CE at every position; ``config.data.loo_window_stride`` < L makes them overlap so
  every target keeps a long context), or ``'prefixes'`` = one example per prefix with a single
  ``action [T]`` (the data augmentation of RecBole-style sequential training).
  Evaluation: the leave-one-out protocol.
- ``'intent'`` (registered by :mod:`jaxrec.data.intent`, imported at the end of this
  module): per-event rows with behaviour signals and discounted returns for the
  latent-intent / REINFORCE recommenders; session protocol with the synthetic truth.

Evaluation protocols (the :class:`EvalSet` fields):

- ``'session'``: every event of the held-out sessions is a query (rl.md §9): ``state``,
  ``len_state``, ``target``, ``is_buy``, ``reward`` (r_buy or r_click of the event),
  ``session`` (dense session id) and ``position`` (index in the session; PRL's prompt
  step). Groups ``('click', 'purchase')`` indexed by ``is_buy``.
- ``'loo'``: one query per user: ``state`` (left-padded, shifted ids), ``len_state``,
  ``target`` (dense id), ``session`` (user's dense id), ``position`` (index of the target
  in the user's sequence). One group ``('all',)``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Optional

import numpy as np

from jaxrec import config_util
from jaxrec.data import examples
from jaxrec.data import prepare as prep
from jaxrec.data.events import ItemInfo

SESSION_GROUPS = ("click", "purchase")      # index = is_buy
LOO_GROUPS = ("all",)


@dataclasses.dataclass
class EvalSet:
    """Evaluation queries of one split: a dict of ``[Q, ...]`` arrays plus protocol info.

    Attributes:
      arrays: name -> [Q, ...] arrays (see the module docstring for each protocol).
      protocol: 'session' or 'loo' (or a custom builder's name).
      groups: names of the query groups; ``arrays['group']`` [Q] indexes them when there is
        more than one (session protocol: is_buy).
      id_shift: how ``arrays['state']`` encodes items: 0 = dense ids with the pad N (right
        padding, RL papers), 1 = ids + 1 with the pad 0 (left padding, leave-one-out).
    """

    arrays: dict
    protocol: str
    groups: tuple
    id_shift: int = 0

    @property
    def size(self) -> int:
        return int(len(self.arrays["target"]))

    def head(self, n: int) -> "EvalSet":
        """The first ``n`` queries (a deterministic prefix keeps smoke runs quick)."""
        return dataclasses.replace(self, arrays={k: v[:n] for k, v in self.arrays.items()})


@dataclasses.dataclass
class TaskParts:
    """What a builder returns: training arrays, the two evaluation sets, extras."""

    train: dict
    validation: EvalSet
    test: EvalSet
    extras: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Task:
    """Everything the core hands a method (README, "Adding a method: the contract").

    Attributes:
      name: dataset name.
      kind: the data kind that built it.
      num_items: N; dense item ids are 0..N-1.
      batch_size: training batch size (``steps_per_epoch`` depends on it).
      train: name -> [T, ...] training examples.
      validation / test: evaluation sets.
      item_freq: [N] int64 occurrences of each item over all events of all splits (the
        reference ``pop_dict``, before normalisation).
      items: item side information (titles, genres, category, extra [N, ...] arrays such
        as synthetic images). Fields named ``gt_*`` in ``items.extra`` are hidden truth of
        the synthetic generator and are never model input.
      stats: the papers' dataset statistics row.
      extras: builder-specific arrays (e.g. PRL ``reward_mean`` / ``reward_max``).
    """

    name: str
    kind: str
    num_items: int
    batch_size: int
    train: dict
    validation: EvalSet
    test: EvalSet
    item_freq: np.ndarray
    items: ItemInfo
    stats: dict
    extras: dict

    @property
    def num_train(self) -> int:
        return int(len(next(iter(self.train.values()))))

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per pass over the training examples (the last partial one dropped)."""
        return max(self.num_train // self.batch_size, 1)

    @property
    def item_popularity(self) -> np.ndarray:
        """[N] float64 ``item_freq / total`` (the reference's normalised ``pop_dict``)."""
        return self.item_freq / max(int(self.item_freq.sum()), 1)

    def example_batch(self, n: Optional[int] = None) -> dict:
        """The first ``n`` (default ``batch_size``) training rows: shapes for ``init``."""
        n = self.batch_size if n is None else n
        return {k: v[:n] for k, v in self.train.items()}

    def split(self, name: str) -> EvalSet:
        if name not in ("validation", "test"):
            raise ValueError(f"unknown evaluation split {name!r} (validation, test)")
        return getattr(self, name)


Builder = Callable[[prep.Dataset, object], TaskParts]
TASK_BUILDERS: dict[str, Builder] = {}


def register(kind: str) -> Callable[[Builder], Builder]:
    """Decorator: registers ``fn(dataset, config) -> TaskParts`` for ``config.data.kind``."""

    def deco(fn: Builder) -> Builder:
        if kind in TASK_BUILDERS and TASK_BUILDERS[kind] is not fn:
            raise ValueError(f"task builder {kind!r} is already registered")
        TASK_BUILDERS[kind] = fn
        return fn

    return deco


def get_builder(kind: str) -> Builder:
    """The builder of a registered kind, or ``module.function`` imported by dotted path."""
    if kind in TASK_BUILDERS:
        return TASK_BUILDERS[kind]
    if "." in kind:
        module, _, fn = kind.rpartition(".")
        try:
            return getattr(importlib.import_module(module), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"config.data.kind={kind!r}: cannot import task builder "
                             f"({e})") from e
    raise ValueError(f"unknown config.data.kind {kind!r}; registered: "
                     f"{', '.join(sorted(TASK_BUILDERS))} (or a dotted path to a builder)")


def load_dataset(config) -> prep.Dataset:
    """The prepared dataset named by ``config.dataset`` (prepared first if needed)."""
    d = config.dataset
    return prep.load(d.name, raw_dir=d.get("raw_dir") or None,
                     data_dir=d.get("data_dir") or None, **dict(d.get("options", {})))


def without_dataset(fn: Builder) -> Builder:
    """Marks a builder that reads its own data (e.g. preference pairs): :func:`build_task`
    then loads no interaction dataset and calls ``fn(None, config)``. Such a builder may put
    ``num_items``, ``items`` (:class:`ItemInfo`), ``item_freq`` and ``name`` in its extras."""
    fn.needs_dataset = False
    return fn


def build_task(config, dataset: Optional[prep.Dataset] = None) -> Task:
    """Loads ``config.dataset`` (unless given, or unless the kind's builder is marked
    :func:`without_dataset`) and builds the ``config.data.kind`` task."""
    builder = get_builder(config.data.kind)
    if dataset is None and getattr(builder, "needs_dataset", True):
        dataset = load_dataset(config)
    parts = builder(dataset, config)
    max_q = int(config.eval.get("max_queries", 0) or 0)
    val, test = parts.validation, parts.test
    if max_q:
        val, test = val.head(max_q), test.head(max_q)
    common = dict(kind=config.data.kind, batch_size=int(config.train.batch_size), train=parts.train,
                  validation=val, test=test, extras=parts.extras)
    if dataset is None:
        ex = parts.extras
        n = int(ex.get("num_items", 0))
        return Task(name=str(ex.get("name", config.data.kind)), num_items=n,
                    item_freq=np.asarray(ex.get("item_freq", np.zeros(n, np.int64)), np.int64),
                    items=ex.get("items", ItemInfo()), stats={}, **common)
    freq = np.bincount(dataset.all_sessions().items, minlength=dataset.num_items)
    return Task(name=dataset.name, num_items=dataset.num_items, item_freq=freq.astype(np.int64),
                items=dataset.items, stats=dataset.stats(), **common)


# --------------------------------------------------------------------------- protocols
def rewards_of(config) -> tuple[float, float]:
    """(r_click, r_buy) of the events: ``config.data.r_click`` / ``r_buy`` (rl.md §3)."""
    return float(config.data.get("r_click", 0.2)), float(config.data.get("r_buy", 1.0))


def _require_right_padding(config) -> None:
    if config.data.get("padding", "right") != "right":
        raise ValueError("config.data.padding must be 'right' for the session protocol (the "
                         "RL papers pad with id N after the history)")


def session_eval_set(sessions, config, num_items: int) -> EvalSet:
    """Every event of the held-out ``sessions`` as a query (rl.md §9)."""
    r_click, r_buy = rewards_of(config)
    q = examples.eval_queries(sessions, int(config.data.state_len), pad_id=num_items)
    q["position"] = q.pop("step")
    q["session"] = np.repeat(sessions.session_ids, sessions.lengths).astype(np.int32)
    q["reward"] = examples.event_rewards(q["is_buy"], r_click, r_buy)
    q["group"] = (q["is_buy"] > 0).astype(np.int32)
    return EvalSet(q, "session", SESSION_GROUPS)


@register("replay")
def replay_task(dataset: prep.Dataset, config) -> TaskParts:
    """SQN/SA2C replay buffer over the training sessions; session-protocol evaluation."""
    _require_right_padding(config)
    n = dataset.num_items
    train = examples.replay_transitions(dataset.splits["train"], int(config.data.state_len),
                                        pad_id=n)
    return TaskParts(train,
                     session_eval_set(dataset.splits["validation"], config, n),
                     session_eval_set(dataset.splits["test"], config, n))


@register("prl")
def prl_task(dataset: prep.Dataset, config) -> TaskParts:
    """PRL trajectory buffer (rl.md §6): reward-to-go over sessions of at most
    ``config.data.prl_max_length`` events, normalised by the per-step mean over all kept
    sessions of every split (the reference's statistics)."""
    _require_right_padding(config)
    n = dataset.num_items
    max_len = int(config.data.get("prl_max_length", 50))
    r_c, r_b = rewards_of(config)
    mean, mx = examples.prl_reward_stats(dataset.all_sessions(), max_len, r_c, r_b)
    train = examples.prl_trajectories(dataset.splits["train"], mean,
                                      int(config.data.state_len), pad_id=n,
                                      max_length=max_len, r_click=r_c, r_buy=r_b)
    # The reference evaluates on the held-out sessions of at most max_len events too ('short');
    # 'all' scores every held-out session (the step prompt is clipped to the table), so PRL's
    # numbers share a query set with the other methods'.
    scope = config_util.choice(config.data, "data.prl_eval_sessions", ("short", "all"), "short")
    evals = [session_eval_set(dataset.splits[s].filter_lengths(1, max_len) if scope == "short"
                              else dataset.splits[s], config, n)
             for s in ("validation", "test")]
    return TaskParts(train, *evals, extras={"reward_mean": mean, "reward_max": mx})


def _lengths_left(inputs: np.ndarray) -> np.ndarray:
    """[M, L] left-padded shifted ids -> [M] int32 number of real items (at least 1)."""
    return np.maximum((inputs > 0).sum(1), 1).astype(np.int32)


@register("sequence")
def sequence_task(dataset: prep.Dataset, config) -> TaskParts:
    """Per-user leave-one-out: train on seq[:-2], validate on seq[-2], test on seq[-1]."""
    if config.data.get("padding", "left") != "left":
        raise ValueError("config.data.padding must be 'left' for kind 'sequence' "
                         "(leave-one-out inputs are left-padded with 0, ids shifted by 1)")
    users = dataset.all_sessions()
    mode = str(config.data.get("loo_train", "windows"))
    if mode not in ("windows", "prefixes"):
        raise ValueError(f"config.data.loo_train must be 'windows' or 'prefixes', got {mode!r}")
    loo = examples.leave_one_out(users, max_len=int(config.data.state_len),
                                 min_len=int(config.data.get("loo_min_len", 5)),
                                 keep_last=config.data.get("loo_keep_last", None),
                                 train_mode=mode,
                                 window_stride=config.data.get("loo_window_stride", None))
    if mode == "windows":
        train = {"state": loo.train_inputs, "len_state": _lengths_left(loo.train_inputs),
                 "targets": loo.train_targets.astype(np.int32) - 1}   # dense ids, -1 = none
    else:
        train = {"state": loo.train_inputs, "len_state": _lengths_left(loo.train_inputs),
                 "action": loo.train_targets.astype(np.int32) - 1}
    seq_len = users.lengths[loo.users]        # position = index in the full sequence
    evals = []
    for inputs, target, back in ((loo.valid_inputs, loo.valid_target, 2),
                                 (loo.test_inputs, loo.test_target, 1)):
        evals.append(EvalSet({
            "state": inputs, "len_state": _lengths_left(inputs),
            "target": (target - 1).astype(np.int32),
            "session": users.session_ids[loo.users].astype(np.int32),
            "position": (seq_len - back).astype(np.int32)}, "loo", LOO_GROUPS, id_shift=1))
    return TaskParts(train, *evals)


# Data kinds defined in their own modules register themselves when imported.
from jaxrec.data import intent as _intent  # noqa: E402,F401  (kind 'intent')
