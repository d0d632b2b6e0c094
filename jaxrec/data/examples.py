"""Training and evaluation examples built from sessions.

- :func:`session_split`: the RL papers' 80/10/10 split *by session* (rl.md §1.3), seeded.
- :func:`replay_transitions`: the SQN/SA2C replay buffer (rl.md §1.4, ``replay_buffer.py``).
- :func:`eval_queries`: every event of a held-out session as a query (rl.md §9).
- :func:`prl_trajectories`: PRL's trajectory buffer (rl.md §6, ``trajectory_buffer.py``).
- :func:`leave_one_out`: per-user leave-one-out (IISAN iisan.md §1.13; PCRec
  intent_pcrec.md §2.6), left-padded with 0 and items shifted by one.

All builders are vectorised numpy; nothing loops over events in Python.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jaxrec.data.sessions import Sessions


def session_split(num_sessions: int, fractions=(0.8, 0.1, 0.1), seed: int = 0
                  ) -> dict[str, np.ndarray]:
    """Seeded random split of session rows into train / validation / test.

    The reference (``split_data.py``) shuffles the unique session ids with an unseeded
    ``np.random.shuffle`` and cuts 80/10/10; here the permutation is seeded.

    Returns:
      {'train': [S_tr], 'validation': [S_va], 'test': [S_te]} sorted row indices.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, "
                         f"got {fractions}")
    perm = np.random.default_rng(seed).permutation(num_sessions)
    n_train = int(round(fractions[0] * num_sessions))
    n_val = int(round(fractions[1] * num_sessions))
    parts = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
    return {k: np.sort(p) for k, p in zip(("train", "validation", "test"), parts)}


def _resolve_pad(pad_id: Optional[int], num_items: Optional[int], who: str) -> int:
    """The padding id: ``pad_id`` if given, else the papers' right padding with N."""
    if pad_id is not None:
        return int(pad_id)
    if num_items is None:
        raise ValueError(f"{who} needs pad_id or num_items")
    return int(num_items)


def _history_windows(sessions: Sessions, state_len: int, pad_id: int, include_current: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    """States for every event: the last ``state_len`` items before (or up to) each event.

    Returns:
      (state [E, state_len] int32 right-padded with ``pad_id`` in chronological order,
       len_state [E] int32 = min(|history|, state_len), with **1 for an empty history**
       — the papers' rule, so that position len-1 is a valid read index).
    """
    t = sessions.positions() + (1 if include_current else 0)    # history length
    starts = np.repeat(sessions.offsets[:-1], sessions.lengths)
    k = np.minimum(t, state_len)
    base = starts + t - k                                       # first history event
    j = np.arange(state_len)[None, :]
    idx = base[:, None] + j
    valid = j < k[:, None]
    state = np.where(valid, sessions.items[np.where(valid, idx, 0)], pad_id).astype(np.int32)
    return state, np.maximum(k, 1).astype(np.int32)


def replay_transitions(sessions: Sessions, state_len: int = 10,
                       pad_id: Optional[int] = None, num_items: Optional[int] = None
                       ) -> dict[str, np.ndarray]:
    """The SQN/SA2C replay buffer: one row per event t of every session, t = 0 included.

    Args:
      sessions: training sessions.
      state_len: window (10 in the papers).
      pad_id: padding id; defaults to ``num_items`` (the papers' right padding with N).
    Returns:
      dict with ``state`` [T, state_len], ``len_state`` [T], ``action`` [T], ``is_buy`` [T],
      ``next_state`` [T, state_len], ``len_next_state`` [T], ``is_done`` [T] (true only on a
      session's last event), all int32 except is_buy/is_done (int8 / bool).
    """
    pad_id = _resolve_pad(pad_id, num_items, "replay_transitions")
    state, len_state = _history_windows(sessions, state_len, pad_id, include_current=False)
    nxt, len_next = _history_windows(sessions, state_len, pad_id, include_current=True)
    done = np.zeros(sessions.num_events, dtype=bool)
    done[sessions.offsets[1:] - 1] = True
    return {
        "state": state, "len_state": len_state,
        "action": sessions.items.astype(np.int32), "is_buy": sessions.is_buy.astype(np.int8),
        "next_state": nxt, "len_next_state": len_next, "is_done": done,
    }


def eval_queries(sessions: Sessions, state_len: int = 10, pad_id: Optional[int] = None,
                 num_items: Optional[int] = None) -> dict[str, np.ndarray]:
    """Every event of every held-out session is a query (rl.md §9), states as in the buffer.

    Returns:
      dict with ``state`` [Q, state_len], ``len_state`` [Q], ``target`` [Q], ``is_buy`` [Q],
      ``step`` [Q] (position in the session, used by PRL's inference prompt).
    """
    pad_id = _resolve_pad(pad_id, num_items, "eval_queries")
    state, len_state = _history_windows(sessions, state_len, pad_id, include_current=False)
    return {"state": state, "len_state": len_state,
            "target": sessions.items.astype(np.int32), "is_buy": sessions.is_buy.astype(np.int8),
            "step": sessions.positions().astype(np.int32)}


def event_rewards(is_buy: np.ndarray, r_click: float = 0.2, r_buy: float = 1.0) -> np.ndarray:
    """[E] reward per event: r_buy for purchases, r_click for clicks (rl.md §3)."""
    return np.where(np.asarray(is_buy) > 0, r_buy, r_click).astype(np.float32)


def prl_reward_stats(sessions: Sessions, max_length: int = 50, r_click: float = 0.2,
                     r_buy: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-step mean and max reward-to-go over the kept sessions (PRL ``trajectory_buffer.py``).

    The reference computes these over *all* kept sessions (every split), so pass the
    concatenation of the splits. Sessions longer than ``max_length`` are dropped first.
    Steps that no session reaches get mean 1 and max 0 (avoids dividing by zero; unused).

    Returns:
      (reward_mean [max_length] float32, reward_max [max_length] float32).
    """
    s = sessions.filter_lengths(1, max_length)
    rtg = _reward_to_go(s, r_click, r_buy)
    t = s.positions()
    count = np.bincount(t, minlength=max_length).astype(np.float64)
    total = np.bincount(t, weights=rtg, minlength=max_length)
    mean = np.where(count > 0, total / np.maximum(count, 1), 1.0)
    mx = np.full(max_length, -np.inf)
    np.maximum.at(mx, t, rtg)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    return mean.astype(np.float32), mx.astype(np.float32)


def _reward_to_go(s: Sessions, r_click: float, r_buy: float) -> np.ndarray:
    """[E] R_t = sum_{k >= t} r_k within the session (gamma = 1, PRL's setting)."""
    r = event_rewards(s.is_buy, r_click, r_buy).astype(np.float64)
    # Suffix sums per session: total of session minus exclusive prefix sum.
    csum = np.concatenate([[0.0], np.cumsum(r)])
    ends = np.repeat(s.offsets[1:], s.lengths)
    return (csum[ends] - csum[:-1]).astype(np.float32)


def prl_trajectories(sessions: Sessions, reward_mean: np.ndarray, state_len: int = 10,
                     pad_id: Optional[int] = None, num_items: Optional[int] = None,
                     max_length: int = 50, r_click: float = 0.2, r_buy: float = 1.0
                     ) -> dict[str, np.ndarray]:
    """PRL trajectory rows for the sessions with at most ``max_length`` events.

    Returns:
      dict with ``step`` [T] (t in [0, max_length)), ``state`` [T, state_len],
      ``len_state`` [T], ``action`` [T], ``is_buy`` [T], ``reward_to_go`` [T] (R_t, which
      includes r_t) and ``reward_to_go_norm`` [T] = R_t / reward_mean[t].
    """
    pad_id = _resolve_pad(pad_id, num_items, "prl_trajectories")
    s = sessions.filter_lengths(1, max_length)
    state, len_state = _history_windows(s, state_len, pad_id, include_current=False)
    t = s.positions()
    rtg = _reward_to_go(s, r_click, r_buy)
    return {"step": t.astype(np.int32), "state": state, "len_state": len_state,
            "action": s.items.astype(np.int32), "is_buy": s.is_buy.astype(np.int8),
            "reward_to_go": rtg,
            "reward_to_go_norm": (rtg / np.asarray(reward_mean)[t]).astype(np.float32)}


@dataclasses.dataclass
class LeaveOneOut:
    """Leave-one-out examples; item ids are shifted by +1 and 0 is padding (left).

    Attributes:
      train_inputs: [M, L] int32 input windows from each user's seq[:-2] (chunked).
      train_targets: [M, L] int32 next item at every position (0 where padded).
      valid_inputs / test_inputs: [U, L] int32 histories, left-padded.
      valid_target / test_target: [U] int32.
      users: [U] row index into the source Sessions.
    """

    train_inputs: np.ndarray
    train_targets: np.ndarray
    valid_inputs: np.ndarray
    valid_target: np.ndarray
    test_inputs: np.ndarray
    test_target: np.ndarray
    users: np.ndarray


def _left_pad(seq: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(length, dtype=np.int32)
    seq = seq[-length:]
    if len(seq):
        out[length - len(seq):] = seq
    return out


def leave_one_out(sessions: Sessions, max_len: int = 10, min_len: int = 5,
                  keep_last: Optional[int] = None) -> LeaveOneOut:
    """Per-user leave-one-out split (iisan.md §1.13, intent_pcrec.md §2.6).

    For a user sequence s (n >= min_len items, optionally cut to its last ``keep_last``,
    IISAN keeps 13 = max_len + 3): test predicts s[-1] from s[:-1][-max_len:], validation
    predicts s[-2] from s[:-2][-max_len:], training uses s[:-2] for next-item prediction at
    every position, cut into chunks of max_len + 1 items (inputs = chunk[:-1], targets =
    chunk[1:]) from the end backwards, the first chunk left-padded.

    Items are shifted by +1 so 0 is the pad id.
    """
    if min_len < 3:
        raise ValueError("leave_one_out needs min_len >= 3 (train, valid and test items)")
    tr_in, tr_tg, va_in, va_t, te_in, te_t, users = [], [], [], [], [], [], []
    for u in range(sessions.num_sessions):
        seq = sessions.sequence(u).astype(np.int32) + 1
        if keep_last is not None:
            seq = seq[-keep_last:]
        if len(seq) < min_len:
            continue
        users.append(u)
        te_in.append(_left_pad(seq[:-1], max_len)); te_t.append(seq[-1])
        va_in.append(_left_pad(seq[:-2], max_len)); va_t.append(seq[-2])
        train = seq[:-2]
        end = len(train)
        while end > 1:
            chunk = train[max(0, end - max_len - 1):end]
            tr_in.append(_left_pad(chunk[:-1], max_len))
            tr_tg.append(_left_pad(chunk[1:], max_len))
            end -= max_len
    if not users:
        raise ValueError(f"leave_one_out: no user has at least {min_len} interactions")
    a = lambda x: np.stack(x).astype(np.int32) if x else np.zeros((0, max_len), np.int32)
    return LeaveOneOut(train_inputs=a(tr_in), train_targets=a(tr_tg),
                       valid_inputs=a(va_in), valid_target=np.asarray(va_t, np.int32),
                       test_inputs=a(te_in), test_target=np.asarray(te_t, np.int32),
                       users=np.asarray(users, np.int64))
