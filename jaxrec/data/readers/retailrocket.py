"""RetailRocket e-commerce events (Kaggle ``events.csv``) as used by the RL recommenders.

Reproduces the processing of ``Kaggle/preprocess_kaggle.py`` in the authors' release of
SQN/SAC (Xin et al., "Self-Supervised Reinforcement Learning for Recommender Systems",
SIGIR 2020), reused unchanged by SNQN/SA2C (WSDM 2022), PRL (SIGIR 2022) and SMORL;
jaxrec spec ``specs/rl.md`` §1.1. Every rule below is [code] from that script:

1. keep rows whose ``transactionid`` is null (empty) — this removes ``transaction`` events;
2. drop sessions (visitors) with <= 2 events, **then**, in one pass, items with <= 2
   events (so a session can end with fewer than 3 events);
3. label-encode items and sessions in sorted raw-id order (sklearn ``LabelEncoder``);
   behaviour encodes alphabetically (addtocart = 0, view = 1) and ``is_buy = 1 - behaviour``,
   i.e. purchase = add-to-cart, click = view;
4. sort by (session, timestamp); jaxrec's sort is stable, so ties keep file order.

jaxrec additions (not in the reference): strict validation of every line, and an error for
a ``transaction`` event without a transaction id, which the reference would have kept as a
third behaviour and turned into ``is_buy = -1``.

With the original file the result has 195,523 sessions, 70,852 items, 1,176,680 clicks and
57,269 purchases (``specs/rl.md`` §1.5).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow.compute as pc

from jaxrec.data.events import DataFormatError, EventLog, from_raw
from jaxrec.data.readers import _tabular as tab

log = logging.getLogger(__name__)

FILES = ("events.csv",)
HEADER = "timestamp,visitorid,event,itemid,transactionid"
EVENTS = ("addtocart", "transaction", "view")  # alphabetical, as LabelEncoder orders them
_EVENT = tab.Field("event", tab.STR, choices=EVENTS)
SPEC = tab.TableSpec(
    fields=(
        tab.Field("timestamp", tab.INT, expected="an integer timestamp (ms)"),
        tab.Field("visitorid", tab.INT, expected="an integer visitor id"),
        _EVENT,
        tab.Field("itemid", tab.INT, expected="an integer item id"),
        tab.Field("transactionid", tab.STR, pattern=r"(?:\d+)?",
                  expected="an integer transaction id or nothing"),
    ),
    delimiter=",", header=HEADER)
MIN_EVENTS = 3  # "<= 2 events" are dropped, for sessions and for items


def _transaction_has_id_line(values):
    if values[2] == "transaction" and not values[4]:
        return "event 'transaction' must carry a transactionid (the filter keys on it)"
    return None


def _transaction_has_id_table(table) -> bool:
    bad = pc.and_(pc.equal(table.column("event"), "transaction"),
                  pc.equal(pc.utf8_length(table.column("transactionid")), 0))
    return not pc.any(bad).as_py()


# Without this rule a transaction event with an empty id would survive the null-id filter
# as a third behaviour, which the reference would encode as is_buy = -1.
TRANSACTION_HAS_ID = tab.RowRule(_transaction_has_id_table, _transaction_has_id_line)


def read_retailrocket(raw_dir) -> EventLog:
    """Reads ``raw_dir/events.csv`` with the SQN release's filters (module docstring).

    Args:
      raw_dir: directory holding ``events.csv`` (header
        ``timestamp,visitorid,event,itemid,transactionid``).
    Returns:
      EventLog named ``retailrocket`` with E events: session/item [E] int32 (dense, in sorted
      raw-id order), timestamp [E] int64 ms, is_buy [E] int8 (1 = addtocart), raw ids int64.
    Raises:
      DataFormatError: missing file, empty file, bad header, or a malformed line (named by
        its 1-based line number).
    """
    path = tab.require_file(raw_dir, "events.csv", "retailrocket", FILES)
    log.info("retailrocket: parsing %s", path)
    table = tab.read_table(path, SPEC, rules=(TRANSACTION_HAS_ID,))
    event = tab.choice_codes(table, _EVENT)
    no_tid = tab.is_empty(table, "transactionid")

    # 1. Null transaction id only.
    keep = no_tid
    ts = tab.to_numpy(table, "timestamp")[keep]
    session = tab.to_numpy(table, "visitorid")[keep]
    item = tab.to_numpy(table, "itemid")[keep]
    event = event[keep]
    n_rows = table.num_rows
    del table

    # 2a. Sessions with more than 2 events (counted after step 1).
    _, inv, counts = tab.unique_with_counts(session)
    keep = counts[inv] >= MIN_EVENTS
    ts, session, item, event = ts[keep], session[keep], item[keep], event[keep]
    # 2b. Then items with more than 2 events, counted on what survived 2a (single pass).
    _, inv, counts = tab.unique_with_counts(item)
    keep = counts[inv] >= MIN_EVENTS
    ts, session, item, event = ts[keep], session[keep], item[keep], event[keep]
    if len(item) == 0:
        raise DataFormatError(path, f"no events left after the filters ({n_rows} rows read): "
                              "every session or item has <= 2 events")

    # 3-4. Encode and stably sort; purchase = addtocart.
    is_buy = (event == EVENTS.index("addtocart")).astype(np.int8)
    out = from_raw(session, item, ts, is_buy, name="retailrocket")
    log.info("retailrocket: %s", out.stats())
    return out


__all__ = ["read_retailrocket", "FILES", "HEADER", "EVENTS"]
