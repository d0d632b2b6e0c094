"""The normalised interaction-event log every reader produces.

One representation serves every paper family: a flat table of events, each with a
session (or user) id, an item id, a timestamp and a behaviour. Readers re-index raw ids to
dense integers and keep the raw ids, so results can always be mapped back.

Conventions
- ``item`` is in ``[0, num_items)``. Padding is *not* part of the log; example builders add
  it (``pad = num_items`` on the right for the RL papers, ``0`` on the left with items
  shifted by one for the leave-one-out papers).
- ``session`` is in ``[0, num_sessions)``; for per-user datasets a "session" is a user.
- ``is_buy`` is 1 for a purchase (RetailRocket add-to-cart, YooChoose buy) and 0 for a click.
  Rating datasets carry ``rating`` (float) and ``is_buy`` = 0.
- Events are sorted by (session, timestamp) with a stable sort, so ties keep file order.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np


class DataFormatError(ValueError):
    """Raised on malformed raw input; the message names the file, line and field."""

    def __init__(self, path, message: str, line: Optional[int] = None):
        where = f"{path}" if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


@dataclasses.dataclass
class ItemInfo:
    """Optional per-item side information (index = dense item id).

    Attributes:
      titles: [N] item titles, or None.
      genres: [N] list of genre/category labels per item (multi-label), or None.
      category: [N] int32 primary category id, or None.
      extra: free-form named [N, ...] arrays (e.g. synthetic images / ground truth).
    """

    titles: Optional[list] = None
    genres: Optional[list] = None
    category: Optional[np.ndarray] = None
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EventLog:
    """A normalised, re-indexed event log. All arrays have shape [E] (number of events).

    Attributes:
      session: int32 dense session/user ids, sorted ascending.
      item: int32 dense item ids in [0, num_items).
      timestamp: int64 (or float64) timestamps; ties keep file order.
      is_buy: int8, 1 = purchase, 0 = click / rating event.
      rating: float32 ratings, or None for implicit-feedback logs.
      raw_session_ids: [num_sessions] raw id of each dense session id.
      raw_item_ids: [num_items] raw id of each dense item id.
      name: dataset name, for messages and tables.
      items: optional side information.
      ground_truth: named [E, ...] arrays known only for synthetic data: hidden truth
        (e.g. latent intent, purchase probability) that no model may read as input.
      features: named [E, ...] observable per-event signals (e.g. dwell time, entry point)
        that models may use as inputs; real readers fill it where the raw log has them.
    """

    session: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    is_buy: np.ndarray
    raw_session_ids: np.ndarray
    raw_item_ids: np.ndarray
    rating: Optional[np.ndarray] = None
    name: str = "unnamed"
    items: ItemInfo = dataclasses.field(default_factory=ItemInfo)
    ground_truth: dict = dataclasses.field(default_factory=dict)
    features: dict = dataclasses.field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return int(len(self.raw_item_ids))

    @property
    def num_sessions(self) -> int:
        return int(len(self.raw_session_ids))

    @property
    def num_events(self) -> int:
        return int(len(self.item))

    def session_bounds(self) -> np.ndarray:
        """[num_sessions + 1] offsets: events of session s are ``bounds[s]:bounds[s+1]``."""
        counts = np.bincount(self.session, minlength=self.num_sessions)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def sessions(self) -> list[np.ndarray]:
        """Item sequences, one [len_s] int32 array per session, in time order."""
        b = self.session_bounds()
        return [self.item[b[s]:b[s + 1]] for s in range(self.num_sessions)]

    def stats(self) -> dict:
        """The papers' statistics table row."""
        buys = int(self.is_buy.sum())
        return {
            "dataset": self.name,
            "sessions": self.num_sessions,
            "items": self.num_items,
            "interactions": self.num_events,
            "clicks": self.num_events - buys,
            "purchases": buys,
        }

    def validate(self) -> None:
        """Checks the invariants above; raises ValueError naming the broken one."""
        e = self.num_events
        for f in ("session", "item", "timestamp", "is_buy"):
            if len(getattr(self, f)) != e:
                raise ValueError(f"EventLog.{f} has {len(getattr(self, f))} rows, expected {e}")
        if e and (self.item.min() < 0 or self.item.max() >= self.num_items):
            raise ValueError("EventLog.item out of [0, num_items)")
        if e and (self.session.min() < 0 or self.session.max() >= self.num_sessions):
            raise ValueError("EventLog.session out of [0, num_sessions)")
        if e and np.any(np.diff(self.session) < 0):
            raise ValueError("EventLog is not sorted by session")
        for table in ("ground_truth", "features"):
            for k, v in getattr(self, table).items():
                if len(v) != e:
                    raise ValueError(f"EventLog.{table}[{k!r}] has {len(v)} rows, expected {e}")

    def subset_sessions(self, sessions: Sequence[int] | np.ndarray) -> "EventLog":
        """Events of the given dense sessions, keeping ids (no re-indexing)."""
        keep = np.isin(self.session, np.asarray(sessions))
        gt = {k: v[keep] for k, v in self.ground_truth.items()}
        feats = {k: v[keep] for k, v in self.features.items()}
        return dataclasses.replace(
            self, session=self.session[keep], item=self.item[keep],
            timestamp=self.timestamp[keep], is_buy=self.is_buy[keep],
            rating=None if self.rating is None else self.rating[keep], ground_truth=gt,
            features=feats)


def encode(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label-encodes like sklearn's LabelEncoder: sorted unique values -> 0..K-1.

    Args:
      values: [E] raw ids (ints or strings).
    Returns:
      (codes [E] int32, uniques [K]) with ``uniques[codes] == values``.
    """
    uniques, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int32), uniques


def from_raw(session_raw, item_raw, timestamp, is_buy, *, name: str, rating=None,
             items: Optional[ItemInfo] = None, ground_truth: Optional[dict] = None,
             item_uniques: Optional[np.ndarray] = None,
             features: Optional[dict] = None) -> EventLog:
    """Builds a sorted, re-indexed EventLog from raw columns (each [E]).

    Items and sessions are label-encoded in sorted order of their raw ids (the papers'
    LabelEncoder), then events are stably sorted by (session, timestamp).
    If ``item_uniques`` is given, items are encoded against it (every raw item must occur).
    ``ground_truth`` (hidden) and ``features`` (observable) are dicts of [E, ...] arrays,
    reordered with the events.
    """
    session_raw = np.asarray(session_raw)
    item_raw = np.asarray(item_raw)
    timestamp = np.asarray(timestamp)
    is_buy = np.asarray(is_buy, dtype=np.int8)
    s_codes, s_uniques = encode(session_raw)
    if item_uniques is None:
        i_codes, i_uniques = encode(item_raw)
    else:
        i_uniques = np.asarray(item_uniques)
        i_codes = np.searchsorted(i_uniques, item_raw).astype(np.int32)
        found = (i_codes < len(i_uniques)) & (
            i_uniques[np.minimum(i_codes, len(i_uniques) - 1)] == item_raw)
        if not found.all():
            raise ValueError(f"{name}: {int((~found).sum())} events have item ids missing "
                             f"from item_uniques, e.g. {item_raw[~found][:3].tolist()}")
    order = np.lexsort((timestamp, s_codes))  # stable: primary session, then time
    gt = {k: np.asarray(v)[order] for k, v in (ground_truth or {}).items()}
    feats = {k: np.asarray(v)[order] for k, v in (features or {}).items()}
    log = EventLog(
        session=s_codes[order], item=i_codes[order], timestamp=timestamp[order],
        is_buy=is_buy[order], raw_session_ids=s_uniques, raw_item_ids=i_uniques,
        rating=None if rating is None else np.asarray(rating, np.float32)[order],
        name=name, items=items or ItemInfo(), ground_truth=gt, features=feats)
    log.validate()
    return log
