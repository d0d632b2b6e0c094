"""Full-ranking evaluation, jitted and batched (rl.md §9; iisan.md §1.13).

Scores over all N items come from the method's ``predict``; the rank of the target is
computed on device (one [B, N] batch at a time, so [Q, N] never exists), and only the [Q]
ranks travel to the host, where HR/NDCG/MRR@k are averaged per group: purchase and click
for the session protocol (the papers report them separately), one group 'all' for
leave-one-out. Leave-one-out masks the items of the input window (the IISAN reference).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import metrics as M
from jaxrec.train.data import EvalSet, eval_batches


def history_mask(inputs, num_items: int):
    """inputs [B, L] (shifted ids, 0 = pad) -> [B, N] bool, True for items in the window."""
    b = inputs.shape[0]
    mask = jnp.zeros((b, num_items + 1), bool)
    mask = mask.at[jnp.arange(b)[:, None], inputs].set(True)
    return mask[:, 1:]


def make_rank_fn(predict: Callable, protocol: str, num_items: int,
                 mask_target_if_in_history: bool = True) -> Callable:
    """Jitted (state, batch) -> ranks [B] (1-based)."""

    def rank_fn(state, batch):
        scores = predict(state, batch)
        exclude = history_mask(batch["state"], num_items) if protocol == "loo" else None
        return M.target_ranks(scores, batch["target"], exclude,
                              mask_target_if_in_history=mask_target_if_in_history)

    return jax.jit(rank_fn)


def evaluate(state, ev: EvalSet, rank_fn: Callable, batch_size: int, ks=(5, 10, 20),
             rewards: tuple = (0.2, 1.0), progress: bool = False, desc: str = "eval") -> dict:
    """Metrics of one evaluation set.

    Returns:
      {'<group>/<metric>@k': mean, '<group>/count': n} with groups purchase/click (session
      protocol; plus '<group>/reward@k', the papers' cumulative reward of hits, using
      ``rewards`` = (r_click, r_buy)) or 'all' (leave-one-out). A group without queries has
      count 0 and NaN means.
    """
    session = ev.protocol == "session"
    acc = M.MetricAccumulator(ks, M.RL_GROUPS if session else ("all",))
    it = eval_batches(ev, batch_size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, total=-(-ev.size // batch_size), desc=desc, leave=False)
    for batch, n in it:
        ranks = np.asarray(rank_fn(state, batch))
        valid = np.arange(len(ranks)) < n
        if session:
            buy = (batch["is_buy"] > 0).astype(np.int64)    # RL_GROUPS = (click, purchase)
            acc.add(ranks, group=buy, valid=valid,
                    reward=np.where(buy > 0, rewards[1], rewards[0]))
        else:
            acc.add(ranks, valid=valid)
    return acc.result()
