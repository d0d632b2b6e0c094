"""Sessions with behaviour signals: the data of the latent-intent recommender.

Paper: Chang, Karatzoglou, Wang, Xu, Chi, Chen, "Latent User Intent Modeling for
Sequential Recommenders", WWW '23 Companion, arXiv 2211.09832 (specs/intent_pcrec.md §1.2,
§1.4); the base recommender is the REINFORCE recommender of Chen et al., "Top-K
Off-Policy Correction for a REINFORCE Recommender System", WSDM 2019.

Registers the data kind ``'intent'`` (:func:`intent_task`). Every event t of a training
session is one row, as in the SQN/SA2C replay buffer (rl.md §1.4), plus what the
REINFORCE loss and the conditional VAE need:

- ``state [T, L]``, ``len_state [T]``: the last L items before t, right-padded with N;
- ``hist_feat [T, L, F]``: the *observed* behaviour signals of those history events
  (they are known at serving time, so the user state may read them: the "context feats"
  of ``s_t = GRU(item_emb(history) ⊕ context feats)``, intent_pcrec.md §1.2), zeros at
  pads;
- ``action [T]``, ``is_buy [T]``, ``reward [T]`` (r_click / r_buy of event t) and
  ``return [T]``: ``R_t = Σ_{t' ≥ t} γ^{t'-t} r_{t'}`` inside the session, γ =
  ``config.data.return_gamma`` (0.5 [inferred]);
- ``y_<signal> [T]``: the behaviour signals of event t itself, observed only *after* the
  recommendation, hence the VAE's y (training only). Categorical and binary signals are
  int32 with −1 = not observed; continuous ones float32 with NaN = not observed.

Which signals (``config.data.signals``):

- ``'features'``: the synthetic generator's observable per-event features (dwell time —
  log-seconds, continuous; entry point — categorical; repeat flag and category switch —
  binary). Needs ``Sessions.features`` (synthetic data only).
- ``'proxy'``: :func:`proxy_signals` from any event log (intent_pcrec.md §1.4): the time
  gap since the previous event of the session (log1p seconds; not observed at t = 0), a
  repeat-consumption flag (the item occurred earlier in the session) and a category
  switch (the item's category differs from the previous event's; not observed at
  t = 0). The category is ``items.category`` when the dataset has one, else the first
  genre label (MovieLens); a dataset with neither (RetailRocket's ``events.csv``) drops
  the category switch.
- ``'auto'`` (default): ``'features'`` when the dataset has them, else ``'proxy'``.

Continuous signals are standardised with the mean and standard deviation over the
training events. ``task.extras['signals']`` lists ``(name, kind, size)`` for every signal
(kind ``'categorical'`` with its number of classes, ``'binary'`` or ``'continuous'``
with size 1) and ``task.extras['num_hist_features']`` is F (one-hot categorical, 0/1
binary, the standardised continuous value; unobserved = 0).

Evaluation: the session protocol (every event of the held-out sessions is a query, rl.md
§9) with the same extra arrays (``hist_feat``, ``y_<signal>``) and, when the dataset is
synthetic, the hidden truth ``gt_intent [Q]`` (the latent intent of the query's target
event, index into the generator's ``intents``) for the intent-recovery evaluator. The
truth never enters the training arrays.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from jaxrec import config_util
from jaxrec.data import examples
from jaxrec.data import prepare as prep
from jaxrec.data import tasks
from jaxrec.data.sessions import Sessions

KINDS = ("categorical", "binary", "continuous")
SIGNAL_SOURCES = ("auto", "features", "proxy")
# The synthetic generator's observable features (jaxrec.data.synthetic.FEATURE_NAMES) as
# behaviour signals: (kind, transform).
FEATURE_SIGNALS = {"dwell": ("continuous", "log"), "entry_point": ("categorical", None),
                   "repeat": ("binary", None), "category_switch": ("binary", None)}


@dataclasses.dataclass(frozen=True)
class Signal:
    """One behaviour signal: its name, kind (:data:`KINDS`) and size (classes or 1)."""

    name: str
    kind: str
    size: int = 1


def item_categories(items, num_items: int):
    """[N] int64 primary category per item, or None when the dataset has none.

    ``items.category`` when present (synthetic), else the first genre label of each item
    mapped to an integer (MovieLens genres; items without genres get their own class −1)."""
    if items is not None and items.category is not None:
        return np.asarray(items.category, np.int64)
    if items is not None and items.genres is not None and any(items.genres):
        first = [g[0] if g else "" for g in items.genres]
        names = sorted(set(first) - {""})
        index = {n: i for i, n in enumerate(names)}
        return np.asarray([index.get(f, -1) for f in first], np.int64)
    return None


def _previous_same_session(sessions: Sessions) -> np.ndarray:
    """[E] bool: the event has a predecessor in its session (position > 0)."""
    return sessions.positions() > 0


def proxy_signals(sessions: Sessions, category=None) -> dict:
    """Proxy behaviour signals of logged data (intent_pcrec.md §1.4).

    Args:
      sessions: the sessions (any split).
      category: [N] primary category per item, or None (no category switch signal).
    Returns:
      name -> [E] arrays: ``time_gap`` float32 log1p(seconds since the previous event),
      NaN at a session's first event; ``repeat`` int32 1 if the item occurred earlier in
      the session; ``category_switch`` int32 (only with ``category``) 1 if the category
      differs from the previous event's, −1 at a session's first event.
    """
    has_prev = _previous_same_session(sessions)
    ts = sessions.timestamps.astype(np.float64)
    gap = np.full(sessions.num_events, np.nan, np.float64)
    gap[1:] = ts[1:] - ts[:-1]
    gap = np.where(has_prev, np.log1p(np.maximum(gap, 0.0)), np.nan)
    seg = np.repeat(np.arange(sessions.num_sessions, dtype=np.int64), sessions.lengths)
    key = seg * (int(sessions.items.max(initial=0)) + 1) + sessions.items
    _, first_idx, inverse = np.unique(key, return_index=True, return_inverse=True)
    repeat = (first_idx[inverse] != np.arange(sessions.num_events)).astype(np.int32)
    out = {"time_gap": gap.astype(np.float32), "repeat": repeat}
    if category is not None:
        cat = np.asarray(category)[sessions.items]
        prev = np.concatenate([[-2], cat[:-1]])
        out["category_switch"] = np.where(has_prev, (cat != prev).astype(np.int32),
                                          -1).astype(np.int32)
    return out


def _feature_signals(sessions: Sessions) -> dict:
    """The synthetic observable features as raw signals (dwell in log-seconds)."""
    out = {}
    for name, (kind, transform) in FEATURE_SIGNALS.items():
        if name not in sessions.features:
            continue
        v = np.asarray(sessions.features[name])
        if kind == "continuous":
            v = v.astype(np.float64)
            out[name] = (np.log(np.maximum(v, 1e-6)) if transform == "log" else v
                         ).astype(np.float32)
        else:
            out[name] = v.astype(np.int32)
    return out


def signal_source(dataset: prep.Dataset, config) -> str:
    """The resolved ``config.data.signals`` ('features' or 'proxy')."""
    src = config_util.choice(config.data, "data.signals", SIGNAL_SOURCES, "auto")
    has = all(n in dataset.splits["train"].features for n in FEATURE_SIGNALS)
    if src == "auto":
        return "features" if has else "proxy"
    if src == "features" and not has:
        raise ValueError(f"config.data.signals='features' needs the synthetic per-event "
                         f"features {sorted(FEATURE_SIGNALS)}; dataset {dataset.name!r} has "
                         f"{sorted(dataset.splits['train'].features) or 'none'} (use "
                         f"'proxy')")
    return src


def raw_signals(sessions: Sessions, source: str, category) -> dict:
    """name -> [E] unstandardised signals of ``sessions`` from ``source``."""
    return _feature_signals(sessions) if source == "features" else \
        proxy_signals(sessions, category)


def describe(raw: dict) -> tuple:
    """(Signal, ...) for raw signals: float -> continuous, int with values in {-1, 0, 1}
    -> binary, other ints -> categorical with max + 1 classes."""
    out = []
    for name, v in raw.items():
        if np.issubdtype(v.dtype, np.floating):
            out.append(Signal(name, "continuous", 1))
        elif name in FEATURE_SIGNALS and FEATURE_SIGNALS[name][0] == "categorical":
            out.append(Signal(name, "categorical", int(v.max(initial=0)) + 1))
        elif v.size == 0 or v.max() <= 1:
            out.append(Signal(name, "binary", 1))
        else:
            out.append(Signal(name, "categorical", int(v.max()) + 1))
    return tuple(out)


def standardise(raw: dict, signals: tuple, stats: dict) -> dict:
    """Continuous signals as ``(v - mean) / std`` (NaN stays NaN); others unchanged."""
    out = dict(raw)
    for s in signals:
        if s.kind == "continuous":
            mean, std = stats[s.name]
            out[s.name] = ((raw[s.name] - mean) / std).astype(np.float32)
    return out


def event_features(sig: dict, signals: tuple) -> np.ndarray:
    """[E, F] float32 per-event feature rows: one-hot categorical, 0/1 binary, the
    standardised continuous value; unobserved entries are 0."""
    cols = []
    for s in signals:
        v = sig[s.name]
        if s.kind == "categorical":
            cols.append((v[:, None] == np.arange(s.size)[None, :]).astype(np.float32))
        elif s.kind == "binary":
            cols.append((v == 1).astype(np.float32)[:, None])
        else:
            cols.append(np.nan_to_num(v, nan=0.0).astype(np.float32)[:, None])
    return np.concatenate(cols, axis=1) if cols else np.zeros((len(next(iter(sig.values()))), 0),
                                                              np.float32)


def history_features(sessions: Sessions, feats: np.ndarray, state_len: int) -> np.ndarray:
    """[E, L, F] the feature rows of each event's history window (the same window as
    :func:`jaxrec.data.examples.eval_queries`: the last L events before it, oldest first,
    right-padded), zeros at pads."""
    # The window builder gathers from ``items``; handing it event indices instead gives
    # the windows' event indices, so the features line up with the item states exactly.
    idx_sessions = dataclasses.replace(sessions, items=np.arange(sessions.num_events))
    idx, _ = examples._history_windows(idx_sessions, state_len, -1, include_current=False)
    out = feats[np.maximum(idx, 0)]
    out[idx < 0] = 0.0
    return out.astype(np.float32)


def discounted_returns(sessions: Sessions, rewards: np.ndarray, gamma: float) -> np.ndarray:
    """[E] float32 ``R_t = r_t + γ R_{t+1}`` inside each session (0 after its end).

    Vectorised over sessions, one pass per position from the longest session's end."""
    r = np.asarray(rewards, np.float64)
    out = r.copy()
    pos = sessions.positions()
    lens = np.repeat(sessions.lengths, sessions.lengths)
    not_last = np.flatnonzero(pos < lens - 1)
    by_pos = not_last[np.argsort(-pos[not_last], kind="stable")]
    bounds = np.flatnonzero(np.diff(pos[by_pos])) + 1
    for group in np.split(by_pos, bounds):    # positions in decreasing order
        out[group] += gamma * out[group + 1]
    return out.astype(np.float32)


def _arrays(sessions: Sessions, sig: dict, signals: tuple, state_len: int, n: int,
            config) -> dict:
    """The per-event arrays every split shares (history features, y, returns)."""
    r_click, r_buy = tasks.rewards_of(config)
    feats = event_features(sig, signals)
    out = {"hist_feat": history_features(sessions, feats, state_len)}
    for s in signals:
        out[f"y_{s.name}"] = sig[s.name]
    reward = examples.event_rewards(sessions.is_buy, r_click, r_buy)
    out["reward"] = reward
    out["return"] = discounted_returns(sessions, reward,
                                       float(config.data.get("return_gamma", 0.5)))
    return out


@tasks.register("intent")
def intent_task(dataset: prep.Dataset, config) -> tasks.TaskParts:
    """Per-event rows with behaviour signals (module docstring); session-protocol eval."""
    tasks._require_right_padding(config)
    n, state_len = dataset.num_items, int(config.data.state_len)
    source = signal_source(dataset, config)
    category = item_categories(dataset.items, n) if source == "proxy" else None
    if source == "proxy" and category is None:
        logging.info("%s: no item categories or genres; the category switch signal is "
                     "left out", dataset.name)
    raw = {k: raw_signals(dataset.splits[k], source, category) for k in prep.SPLITS}
    # Sizes over every split, so a class seen only in the evaluation splits still fits.
    signals = describe({name: np.concatenate([raw[k][name] for k in prep.SPLITS])
                        for name in raw["train"]})
    stats = {}
    for s in signals:
        if s.kind == "continuous":
            v = raw["train"][s.name]
            v = v[np.isfinite(v)]
            stats[s.name] = (float(v.mean()) if v.size else 0.0,
                             float(v.std()) if v.size and v.std() > 0 else 1.0)
    sig = {k: standardise(raw[k], signals, stats) for k in prep.SPLITS}

    tr = dataset.splits["train"]
    train = examples.replay_transitions(tr, state_len, pad_id=n)
    for k in ("next_state", "len_next_state", "is_done"):
        train.pop(k)
    train.update(_arrays(tr, sig["train"], signals, state_len, n, config))
    evals = []
    for split in ("validation", "test"):
        s = dataset.splits[split]
        ev = tasks.session_eval_set(s, config, n)
        extra = _arrays(s, sig[split], signals, state_len, n, config)
        extra.pop("reward")                  # the eval set has its own (same values)
        ev.arrays.update(extra)
        if "intent" in s.ground_truth:
            ev.arrays["gt_intent"] = np.asarray(s.ground_truth["intent"], np.int32)
        evals.append(ev)
    extras = {"signals": tuple((s.name, s.kind, s.size) for s in signals),
              "num_hist_features": int(train["hist_feat"].shape[-1]),
              "signal_source": source, "signal_stats": stats}
    return tasks.TaskParts(train, *evals, extras=extras)
