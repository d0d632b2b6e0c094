"""Full-ranking evaluation: HR / NDCG / MRR @k over all N items, jitted and batched.

Protocols (the task's :class:`~jaxrec.data.tasks.EvalSet`):

- session (RL papers, rl.md §9): every event of a held-out session is a query; metrics
  per group ``purchase`` / ``click`` (``group`` = is_buy), the cumulative reward@k of
  hits per group and ``total/reward@k`` (clicks + purchases, the number the papers
  report), no history removal by default.
- leave-one-out (iisan.md §1.13, intent_pcrec.md §2.6): one group ``all``.

Scores come from ``method.predict(state, batch, consts)`` ``[B, N]``; the target's rank
is computed on device one batch at a time, so ``[Q, N]`` never exists, and only ``[B]``
ranks travel to the host. The last batch is padded to full size so the function compiles
once; its padding rows are dropped by the accumulator.

Options (``config.eval`` overridden by the evaluator's ``config.evals`` entry):

- ``ks`` (5, 10, 20); ``batch_size`` (256);
- ``ties``: 'reference' (the papers' argsort order, default), 'pessimistic', 'optimistic'
  (:func:`jaxrec.metrics.target_ranks`);
- ``exclude_history``: remove the items of the query's input window from the ranking
  (IISAN's reference does; the RL papers and the widely used sequential libraries do
  not). Default False.
- ``mask_target_if_in_history``: with ``exclude_history``, a target that is itself in
  the window counts as a miss (IISAN's code, default) or keeps its score.

On a device mesh (``config.mesh``, :mod:`jaxrec.train.sharding`) each batch is split over
``data`` and, when ``model`` > 1, the scores' item axis over ``model``: the target's rank
is computed shard by shard and merged by two ``psum`` s of ``[B]`` values
(:func:`jaxrec.train.sharding.sharded_target_ranks`), so ``[B, N]`` is never gathered on
one device; the numbers are those of the unsharded path.
"""

from __future__ import annotations

from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrec import metrics as M
from jaxrec.train import sharding as sh
from jaxrec.runs import eval_batches


def history_mask(state: jax.Array, num_items: int, id_shift: int) -> jax.Array:
    """Items of the input window as a ``[B, N]`` bool mask.

    Args:
      state: ``[B, L]`` int ids of the window.
      num_items: N.
      id_shift: 1 when ids are item + 1 with 0 as the pad (leave-one-out, left padding);
        0 when ids are items with the pad N (the RL papers' right padding).
    Returns:
      ``[B, N]`` True where the item occurs in the window (pads never do).
    """
    b = state.shape[0]
    # N + 1 columns indexed by the raw id; the pad's column (0 shifted, N unshifted) is
    # dropped, and the shifted ids' column j + 1 is item j.
    mask = jnp.zeros((b, num_items + 1), bool).at[jnp.arange(b)[:, None], state].set(True)
    return mask[:, 1:] if id_shift else mask[:, :num_items]


class RankingEvaluator:
    """Ranks the target of every query of a split among all N items.

    Args:
      method: the method module (its ``predict`` and optional ``eval_consts``).
      task: the :class:`~jaxrec.data.tasks.Task`.
      config: the run's config (unused beyond ``options``).
      options: merged settings (see the module docstring).
    """

    lower_is_better = ()

    def __init__(self, method: ModuleType, task, config, options):
        self.mesh = sh.mesh_from_config(config)       # None: one device
        self.options = options
        self.task = task
        self.ks = tuple(int(k) for k in options.get("ks", (5, 10, 20)))
        self.batch_size = int(options.get("batch_size", 256))
        ties = str(options.get("ties", "reference"))
        if ties not in M.TIES:
            raise ValueError(f"config.eval.ties must be one of {M.TIES}, got {ties!r}")
        exclude = bool(options.get("exclude_history", False))
        mask_target = bool(options.get("mask_target_if_in_history", True))
        n = task.num_items
        predict = method.predict
        mesh = self.mesh
        if mesh is not None:
            self._batch_sh = NamedSharding(mesh, sh.batch_spec(self.batch_size, mesh))
            self._rows = sh.local_rows(self._batch_sh, self.batch_size)

        def make_rank(id_shift: int):
            """A jitted (state, batch, consts) -> ranks [B] for one id convention."""

            def rank_fn(state, batch, consts):
                scores = predict(state, batch, consts)
                if scores.shape != (batch["target"].shape[0], n):
                    raise ValueError(f"{method.__name__}.predict returned scores of shape "
                                     f"{scores.shape}; the ranking evaluator needs "
                                     f"[B, N={n}]")
                if mesh is not None and sh.model_size(mesh) > 1:
                    return sh.sharded_target_ranks(
                        scores, batch["target"], mesh,
                        batch["state"] if exclude else None, id_shift,
                        mask_target_if_in_history=mask_target, ties=ties)
                excl = history_mask(batch["state"], n, id_shift) if exclude else None
                return M.target_ranks(scores, batch["target"], excl,
                                      mask_target_if_in_history=mask_target, ties=ties)

            if mesh is None:
                return jax.jit(rank_fn)
            # Ranks come back replicated ([B] ints), so every host can read them.
            return jax.jit(rank_fn, out_shardings=NamedSharding(mesh, P()))

        # Validation and test share a convention, so one function serves both and compiles
        # once per run.
        by_shift, self._rank = {}, {}
        for split in ("validation", "test"):
            shift = task.split(split).id_shift
            if shift not in by_shift:
                by_shift[shift] = make_rank(shift)
            self._rank[split] = by_shift[shift]
        pre = getattr(method, "eval_consts", None)
        if pre is not None and sh.model_size(mesh) > 1:
            # an item tower's [N, d] output split over 'model' like the item tables
            self._eval_consts = sh.jit_item_sharded(pre, mesh, n)
        else:
            self._eval_consts = jax.jit(pre) if pre is not None else None

    def metric_names(self, split: str) -> list:
        """The keys :meth:`run` returns for ``split``."""
        ev = self.task.split(split)
        names = [f"{g}/count" for g in ev.groups]
        names += [f"{g}/{m}@{k}" for g in ev.groups for k in self.ks for m in M.METRIC_NAMES]
        if "reward" in ev.arrays:
            names += [f"{g}/reward@{k}" for g in ev.groups + ("total",) for k in self.ks]
        return names

    def run(self, state, consts, split: str) -> dict:
        """Metrics of ``split``: ``'<group>/<metric>@k'`` means, ``'<group>/count'`` and,
        when the queries carry rewards, ``'<group>/reward@k'`` sums and
        ``'total/reward@k'``. A group without queries has count 0 and NaN means."""
        ev = self.task.split(split)
        ctx = self._eval_consts(state, consts) if self._eval_consts is not None else consts
        rank = self._rank[split]
        acc = M.MetricAccumulator(self.ks, ev.groups)
        for batch, n in eval_batches(ev.arrays, self.batch_size):
            if self.mesh is None:
                ranks = np.asarray(rank(state, batch, ctx))
            else:   # this host's rows of the batch, as one global batch over 'data'
                dev = sh.global_batch({k: v[self._rows] for k, v in batch.items()},
                                      self._batch_sh, self.batch_size)
                ranks = np.asarray(rank(state, dev, ctx))
            acc.add(ranks, group=batch.get("group"), valid=np.arange(len(ranks)) < n,
                    reward=batch.get("reward"))
        out = acc.result()
        if "reward" in ev.arrays:
            for k in self.ks:
                # A split without queries never called add(): its reward sums are 0.
                for g in ev.groups:
                    out.setdefault(f"{g}/reward@{k}", 0.0)
                out[f"total/reward@{k}"] = float(sum(out[f"{g}/reward@{k}"]
                                                     for g in ev.groups))
        return out
