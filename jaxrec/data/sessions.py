"""Ragged in-memory sessions: the form in which every example builder reads a split.

The RL papers' code (rl.md §11) builds states from sessions on the fly; storing each
split as concatenated event arrays plus offsets keeps that cheap and vectorisable.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass
class Sessions:
    """Sessions of one split. Events of session ``s`` are ``offsets[s]:offsets[s+1]``.

    Attributes:
      items: [E] int32 dense item ids in [0, num_items), time-ordered within a session.
      is_buy: [E] int8 (1 = purchase).
      timestamps: [E] int64.
      offsets: [S + 1] int64.
      session_ids: [S] int64 dense session ids (global across splits).
      raw_session_ids: [S] raw session / user ids (str).
      rating: [E] float32 or None.
      ground_truth: name -> [E] hidden truth (synthetic data only; never model input).
      features: name -> [E] observable per-event features (e.g. synthetic dwell time).
    """

    items: np.ndarray
    is_buy: np.ndarray
    timestamps: np.ndarray
    offsets: np.ndarray
    session_ids: np.ndarray
    raw_session_ids: np.ndarray
    rating: Optional[np.ndarray] = None
    ground_truth: dict = dataclasses.field(default_factory=dict)
    features: dict = dataclasses.field(default_factory=dict)

    @property
    def num_sessions(self) -> int:
        return int(len(self.offsets) - 1)

    @property
    def num_events(self) -> int:
        return int(len(self.items))

    @property
    def lengths(self) -> np.ndarray:
        """[S] events per session."""
        return np.diff(self.offsets)

    def positions(self) -> np.ndarray:
        """[E] position t of each event inside its session (0-based)."""
        lens = self.lengths
        starts = np.repeat(self.offsets[:-1], lens)
        return np.arange(self.num_events, dtype=np.int64) - starts

    def event_session(self) -> np.ndarray:
        """[E] row index (0..S-1) of the session each event belongs to."""
        return np.repeat(np.arange(self.num_sessions), self.lengths)

    def sequence(self, s: int) -> np.ndarray:
        """[len_s] item sequence of session row ``s``."""
        return self.items[self.offsets[s]:self.offsets[s + 1]]

    def select(self, rows: np.ndarray) -> "Sessions":
        """Sessions at the given row indices (in the given order)."""
        rows = np.asarray(rows, dtype=np.int64)
        lens = self.lengths[rows]
        starts = self.offsets[rows]
        idx = (np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
               + np.arange(int(lens.sum())))
        take = lambda a: None if a is None else a[idx]
        return Sessions(
            items=self.items[idx], is_buy=self.is_buy[idx], timestamps=self.timestamps[idx],
            offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            session_ids=self.session_ids[rows], raw_session_ids=self.raw_session_ids[rows],
            rating=take(self.rating),
            ground_truth={k: v[idx] for k, v in self.ground_truth.items()},
            features={k: v[idx] for k, v in self.features.items()})

    def filter_lengths(self, min_len: int = 1, max_len: Optional[int] = None) -> "Sessions":
        """Keeps sessions with ``min_len <= len <= max_len``."""
        lens = self.lengths
        keep = lens >= min_len
        if max_len is not None:
            keep &= lens <= max_len
        return self.select(np.nonzero(keep)[0])

    @staticmethod
    def concat(parts: list["Sessions"]) -> "Sessions":
        """Concatenates splits (e.g. all three for leave-one-out), in the given order."""
        lens = np.concatenate([p.lengths for p in parts])
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])
        rating = None if any(p.rating is None for p in parts) else cat("rating")
        keys = set.intersection(*[set(p.ground_truth) for p in parts]) if parts else set()
        fkeys = set.intersection(*[set(p.features) for p in parts]) if parts else set()
        return Sessions(
            items=cat("items"), is_buy=cat("is_buy"), timestamps=cat("timestamps"),
            offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            session_ids=cat("session_ids"), raw_session_ids=cat("raw_session_ids"),
            rating=rating,
            ground_truth={k: np.concatenate([p.ground_truth[k] for p in parts]) for k in keys},
            features={k: np.concatenate([p.features[k] for p in parts]) for k in fkeys})

    @staticmethod
    def from_event_log(log, session_rows: Optional[np.ndarray] = None) -> "Sessions":
        """Builds Sessions from an :class:`~jaxrec.data.events.EventLog` (all or some sessions)."""
        bounds = log.session_bounds()
        all_s = Sessions(
            items=log.item.astype(np.int32), is_buy=log.is_buy.astype(np.int8),
            timestamps=np.asarray(log.timestamp).astype(np.int64), offsets=bounds,
            session_ids=np.arange(log.num_sessions, dtype=np.int64),
            raw_session_ids=np.asarray([str(x) for x in log.raw_session_ids]),
            rating=log.rating, ground_truth=dict(log.ground_truth),
            features=dict(log.features))
        return all_s if session_rows is None else all_s.select(session_rows)
