"""YooChoose (RecSys Challenge 2015, "RC15") clicks and buys, as used by the RL recommenders.

Reproduces ``RC15/sample_data.py`` and ``RC15/merge_and_sort.py`` of the authors' release of
SQN/SAC (Xin et al., SIGIR 2020), reused by SNQN/SA2C (WSDM 2022), PRL (SIGIR 2022) and
SMORL; jaxrec spec ``specs/rl.md`` §1.2. Rules from that code [code]:

1. from ``yoochoose-clicks.dat`` keep sessions with more than 2 clicks;
2. sample 200,000 of those sessions uniformly without replacement;
3. label-encode items on the sampled clicks (sorted raw ids); the buys
   (``yoochoose-buys.dat``) of sampled sessions are mapped with the same encoder;
4. ``is_buy`` = 0 for clicks and 1 for buys, concatenate (clicks first) and sort by
   (session, timestamp). A buy is an event of its own. There is no item-frequency filter.

jaxrec decisions where the reference is silent or unusable [inferred]:

- **Seeded sample.** The reference calls an unseeded ``np.random.choice`` on the sessions
  in order of appearance; jaxrec draws ``num_sessions`` from the *sorted* eligible session
  ids with ``np.random.default_rng(seed)``, so a seed fixes the sample. If fewer sessions
  are eligible than requested, all are kept and a warning is logged (the reference would
  raise); ``num_sessions=None`` keeps all.
- **Buys of never-clicked items.** The reference's ``LabelEncoder.transform`` raises on a
  buy whose item is not among the sampled clicks. jaxrec drops such buys and logs how many
  (``unknown_buy_items="drop"``, the default), or raises DataFormatError naming the first
  one (``"raise"``, the reference behaviour).
- **Timestamps** are parsed to int64 milliseconds since the epoch (UTC). The reference
  sorts the ISO strings, which orders the same way for this file's fixed format.
- **Ties.** Sorting is stable, so a click and a buy with equal timestamps keep the click
  first, as after the reference's concatenation.

Statistics with the original files (``specs/rl.md`` §1.5): 200,000 sessions, 26,702 items,
1,110,965 clicks and 43,946 purchases — for the reference's own random sample, so a seeded
sample matches them only approximately.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from jaxrec.data.events import DataFormatError, EventLog, from_raw
from jaxrec.data.readers import _tabular as tab

log = logging.getLogger(__name__)

FILES = ("yoochoose-clicks.dat", "yoochoose-buys.dat")
_TIMESTAMP = tab.Field("timestamp", tab.ISO_MS)
CLICKS_SPEC = tab.TableSpec(fields=(
    tab.Field("session_id", tab.INT, expected="an integer session id"),
    _TIMESTAMP,
    tab.Field("item_id", tab.INT, expected="an integer item id"),
    # 'S' marks a special offer, a number is a category (1-12), a brand id or 0 (unknown).
    tab.Field("category", tab.STR, pattern=r"S|\d+", expected="'S' or an integer category"),
), delimiter=",")
BUYS_SPEC = tab.TableSpec(fields=(
    tab.Field("session_id", tab.INT, expected="an integer session id"),
    _TIMESTAMP,
    tab.Field("item_id", tab.INT, expected="an integer item id"),
    tab.Field("price", tab.FLOAT, expected="a numeric price"),
    tab.Field("quantity", tab.FLOAT, expected="a numeric quantity"),
), delimiter=",")
MIN_CLICKS = 3  # "more than 2 clicks"
_UNKNOWN_BUY_POLICIES = ("drop", "raise")


def sample_sessions(eligible: np.ndarray, num_sessions: Optional[int], seed: int) -> np.ndarray:
    """Seeded uniform sample without replacement.

    Args:
      eligible: [K] sorted unique raw session ids.
      num_sessions: how many to draw; None, or >= K, keeps all K.
      seed: numpy Generator seed.
    Returns:
      [min(num_sessions, K)] sorted raw session ids.
    """
    if num_sessions is None or num_sessions >= len(eligible):
        return eligible
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(eligible, size=num_sessions, replace=False))


def read_yoochoose(raw_dir, num_sessions: Optional[int] = 200_000, seed: int = 0,
                   unknown_buy_items: str = "drop") -> EventLog:
    """Reads YooChoose clicks + buys with the SQN release's sampling (module docstring).

    Args:
      raw_dir: directory holding ``yoochoose-clicks.dat`` (session_id, timestamp, item_id,
        category) and ``yoochoose-buys.dat`` (session_id, timestamp, item_id, price,
        quantity), both headerless CSV.
      num_sessions: sessions to sample among those with > 2 clicks (None: all).
      seed: sampling seed.
      unknown_buy_items: ``"drop"`` or ``"raise"`` for a buy whose item was never clicked in
        the sample.
    Returns:
      EventLog named ``yoochoose`` with E events: session/item [E] int32, timestamp [E] int64
      ms since the epoch, is_buy [E] int8; raw ids int64.
    Raises:
      DataFormatError: a missing/empty/malformed file (named with its 1-based line), or an
        unknown buy item under ``unknown_buy_items="raise"``.
      ValueError: bad arguments.
    """
    if num_sessions is not None and (isinstance(num_sessions, bool) or
                                     not isinstance(num_sessions, (int, np.integer))
                                     or num_sessions <= 0):
        raise ValueError(f"read_yoochoose: num_sessions must be a positive int or None, "
                         f"got {num_sessions!r}")
    if unknown_buy_items not in _UNKNOWN_BUY_POLICIES:
        raise ValueError(f"read_yoochoose: unknown_buy_items must be one of "
                         f"{_UNKNOWN_BUY_POLICIES}, got {unknown_buy_items!r}")
    clicks_path = tab.require_file(raw_dir, FILES[0], "yoochoose", FILES)
    buys_path = tab.require_file(raw_dir, FILES[1], "yoochoose", FILES)

    log.info("yoochoose: parsing %s", clicks_path)
    clicks = tab.read_table(clicks_path, CLICKS_SPEC)
    c_session = tab.to_numpy(clicks, "session_id")
    c_ts = tab.to_numpy(clicks, "timestamp")
    c_item = tab.to_numpy(clicks, "item_id")
    n_click_rows = clicks.num_rows
    del clicks  # the category strings of 33M rows are not needed any more

    # 1. Sessions with more than 2 clicks.
    uniques, _, counts = tab.unique_with_counts(c_session)
    eligible = uniques[counts >= MIN_CLICKS]
    if len(eligible) == 0:
        raise DataFormatError(clicks_path, f"no session has more than 2 clicks "
                              f"({n_click_rows} clicks in {len(uniques)} sessions)")
    # 2. Seeded sample.
    if num_sessions is not None and num_sessions > len(eligible):
        log.warning("yoochoose: asked for %d sessions but only %d have more than 2 clicks; "
                    "keeping all of them", num_sessions, len(eligible))
    chosen = sample_sessions(eligible, num_sessions, seed)
    keep = np.isin(c_session, chosen)
    c_session, c_ts, c_item = c_session[keep], c_ts[keep], c_item[keep]
    # 3. Item encoder fitted on the sampled clicks only.
    item_uniques = np.unique(c_item)
    log.info("yoochoose: %d of %d eligible sessions sampled (seed %d), %d clicks, %d items",
             len(chosen), len(eligible), seed, len(c_item), len(item_uniques))

    log.info("yoochoose: parsing %s", buys_path)
    buys = tab.read_table(buys_path, BUYS_SPEC)
    b_session = tab.to_numpy(buys, "session_id")
    b_ts = tab.to_numpy(buys, "timestamp")
    b_item = tab.to_numpy(buys, "item_id")
    keep = np.isin(b_session, chosen)
    b_session, b_ts, b_item = b_session[keep], b_ts[keep], b_item[keep]
    known = np.isin(b_item, item_uniques)
    if not known.all():
        n_bad = int((~known).sum())
        first = int(np.argmin(known))
        if unknown_buy_items == "raise":
            raise DataFormatError(buys_path, f"{n_bad} buy(s) of sampled sessions have items "
                                  "never clicked in the sample, e.g. session "
                                  f"{b_session[first]} item {b_item[first]} (the item encoder "
                                  "is fitted on sampled clicks)")
        log.warning("yoochoose: dropping %d buy(s) whose item was never clicked in the "
                    "sample (e.g. session %d item %d)", n_bad, b_session[first], b_item[first])
        b_session, b_ts, b_item = b_session[known], b_ts[known], b_item[known]

    # 4. Clicks first, then buys; from_raw's stable sort keeps that order on ties.
    out = from_raw(
        np.concatenate([c_session, b_session]), np.concatenate([c_item, b_item]),
        np.concatenate([c_ts, b_ts]),
        np.concatenate([np.zeros(len(c_item), np.int8), np.ones(len(b_item), np.int8)]),
        name="yoochoose", item_uniques=item_uniques)
    log.info("yoochoose: %s", out.stats())
    return out


__all__ = ["read_yoochoose", "sample_sessions", "FILES"]
