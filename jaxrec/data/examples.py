"""Training and evaluation examples built from sessions.

- :func:`session_split`: the RL papers' 80/10/10 split *by session* (rl.md §1.3), seeded.
- :func:`replay_transitions`: the SQN/SA2C replay buffer (rl.md §1.4, ``replay_buffer.py``).
- :func:`eval_queries`: every event of a held-out session as a query (rl.md §9).
- :func:`prl_trajectories`: PRL's trajectory buffer (rl.md §6, ``trajectory_buffer.py``).
- :func:`leave_one_out`: per-user leave-one-out (IISAN iisan.md §1.13; PCRec
  intent_pcrec.md §2.6), left-padded with 0 and items shifted by one; training rows as
  windows with targets at every position, or one row per prefix (RecBole's sequential
  data augmentation, Zhao et al., CIKM 2021).

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


LOO_TRAIN_MODES = ("windows", "prefixes")


@dataclasses.dataclass
class LeaveOneOut:
    """Leave-one-out examples; item ids are shifted by +1 and 0 is padding (left).

    Attributes:
      train_inputs: [M, L] int32 input windows from each user's seq[:-2], left-padded.
      train_targets: ``train_mode='windows'``: [M, L] int32, the next item at every
        position (0 where padded). ``train_mode='prefixes'``: [M] int32, the item that
        follows the window (a trainer reads its state at position L-1 and takes CE
        against this).
      valid_inputs / test_inputs: [U, L] int32 histories, left-padded.
      valid_target / test_target: [U] int32.
      users: [U] row index into the source Sessions.
      train_mode: 'windows' or 'prefixes', how the training rows were built.
    """

    train_inputs: np.ndarray
    train_targets: np.ndarray
    valid_inputs: np.ndarray
    valid_target: np.ndarray
    test_inputs: np.ndarray
    test_target: np.ndarray
    users: np.ndarray
    train_mode: str = "windows"


def _left_windows(flat: np.ndarray, start: np.ndarray, end: np.ndarray, length: int
                  ) -> np.ndarray:
    """Row r = ``flat[max(start[r], end[r] - length):end[r]]`` left-padded with 0.

    Args:
      flat: [E] int ids (shifted, so 0 is free for padding); start, end: [R] int.
    Returns:
      [R, length] int32.
    """
    out = np.zeros((len(end), length), np.int32)
    # Row blocks of ~2M cells bound the int64 index temporaries (prefix rows of ML-1M at
    # L = 200 are 1M x 200) and keep them in cache.
    step = max(1, (1 << 21) // length)
    cols = np.arange(length) - length
    for lo in range(0, len(end), step):
        idx = end[lo:lo + step, None] + cols[None, :]
        valid = idx >= start[lo:lo + step, None]
        out[lo:lo + step] = np.where(valid, flat[np.where(valid, idx, 0)], 0)
    return out


def leave_one_out(sessions: Sessions, max_len: int = 10, min_len: int = 5,
                  keep_last: Optional[int] = None, train_mode: str = "windows",
                  window_stride: Optional[int] = None) -> LeaveOneOut:
    """Per-user leave-one-out split (iisan.md §1.13, intent_pcrec.md §2.6).

    For a user sequence s (n >= min_len items, optionally cut to its last ``keep_last``,
    IISAN keeps 13 = max_len + 3): test predicts s[-1] from s[:-1][-max_len:], validation
    predicts s[-2] from s[:-2][-max_len:]. Training uses t = s[:-2] in one of two ways:

    - ``'windows'`` (the SASRec papers, IISAN, PCRec): next-item prediction at every
      position, t cut into chunks of max_len + 1 items from the end backwards (inputs =
      chunk[:-1], targets = chunk[1:]), the first chunk left-padded; each target appears
      once. ``train_targets`` is [M, L]. With ``window_stride`` s < L the windows overlap:
      they end every s items from the end backwards and each trains only its last s
      targets (earlier positions get target 0 = none), so every target is still trained
      once but sees at least L − s items of context, not a context cut at a chunk start.
    - ``'prefixes'`` (RecBole's ``data_augmentation``, one example per prefix): for
      i = 1..len(t)-1, input t[:i][-max_len:] left-padded, target t[i]; a user gives
      len(t) - 1 rows, in order. ``train_targets`` is [M]: the trainer only needs the
      state at the last position, so CE costs one [B, N] logit matrix instead of [B, L, N].

    Items are shifted by +1 so 0 is the pad id. Users keep their Sessions order.

    Args:
      sessions: one row per user, chronological.
      max_len: L, the window.
      min_len: users with fewer items (after ``keep_last``) are dropped; >= 3.
      keep_last: if given, only each user's last ``keep_last`` items are used.
      train_mode: 'windows' or 'prefixes'.
      window_stride: for 'windows', items between consecutive window ends (None = L:
        non-overlapping chunks).
    Returns:
      :class:`LeaveOneOut`.
    """
    if train_mode not in LOO_TRAIN_MODES:
        raise ValueError(f"leave_one_out: train_mode must be one of {LOO_TRAIN_MODES}, "
                         f"got {train_mode!r}")
    if min_len < 3:
        raise ValueError("leave_one_out needs min_len >= 3 (train, valid and test items)")
    if max_len < 1:
        raise ValueError(f"leave_one_out: max_len must be positive, got {max_len}")
    stride = max_len if window_stride is None else int(window_stride)
    if not 1 <= stride <= max_len:
        raise ValueError(f"leave_one_out: window_stride must be in [1, max_len={max_len}], "
                         f"got {window_stride}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"leave_one_out: keep_last must be positive or None, got {keep_last}")
    lengths = sessions.lengths.astype(np.int64)
    ends = sessions.offsets[1:].astype(np.int64)
    n = lengths if keep_last is None else np.minimum(lengths, keep_last)
    users = np.flatnonzero(n >= min_len)
    if not len(users):
        raise ValueError(f"leave_one_out: no user has at least {min_len} interactions")
    flat = sessions.items.astype(np.int32) + 1
    end = ends[users]                                  # one past s[-1]
    start = end - n[users]                             # s[0] after keep_last
    train_end = end - 2                                # t = flat[start:train_end]
    if train_mode == "prefixes":
        # Targets t[1..], i.e. global indices start+1 .. train_end-1 of every user.
        count = train_end - start - 1
        row = np.repeat(np.arange(len(users)), count)
        target_at = start[row] + 1 + (np.arange(count.sum()) - np.repeat(
            np.cumsum(count) - count, count))
        tr_in = _left_windows(flat, start[row], target_at, max_len)
        tr_tg = flat[target_at].astype(np.int32)
    else:
        # Window k of a user ends (exclusive) at train_end - k*stride while it holds >= 2
        # items; it trains its last `stride` targets (all of them when stride = L).
        count = np.maximum(0, -(-(train_end - start - 1) // stride))    # ceil, 0 if len <= 1
        row = np.repeat(np.arange(len(users)), count)
        k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        chunk_end = train_end[row] - k * stride
        tr_in = _left_windows(flat, start[row], chunk_end - 1, max_len)
        tr_tg = _left_windows(flat, start[row] + 1, chunk_end, max_len)
        tr_tg[:, :max_len - stride] = 0
    return LeaveOneOut(
        train_inputs=tr_in, train_targets=tr_tg,
        valid_inputs=_left_windows(flat, start, end - 2, max_len),
        valid_target=flat[end - 2].astype(np.int32),
        test_inputs=_left_windows(flat, start, end - 1, max_len),
        test_target=flat[end - 1].astype(np.int32),
        users=users.astype(np.int64), train_mode=train_mode)
