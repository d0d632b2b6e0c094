"""Beyond-accuracy evaluation: coverage, novel coverage, repetitions, diversity and novelty
rewards of the top-1, and the off-policy corrected NDCG.

Papers: Stamenkovic et al., "Choosing the Best of Both Worlds: Diverse and Novel
Recommendations through Multi-Objective Reinforcement Learning", WSDM 2022 (SMORL; the
metrics of rl.md §7, as the third-party reproduction computes them); Xin et al.,
"Supervised Advantage Actor-Critic for Recommender Systems", WSDM 2022 (the off-policy
corrected NDCG of the SA2C release, rl.md §5). Cumulative reward@k is the ranking
evaluator's (``total/reward@k``) and is not repeated here.

For every batch of queries, on device: the method's scores ``[B, N]``, the top-k lists
``[B, k_max]`` (:func:`jaxrec.metrics.top_k_items`), the target's rank ``[B]`` and, when
the consts carry item embeddings, the diversity reward of the top-1 ``[B]``. Only these
travel to the host, where the split's metrics are computed at the end
(:mod:`jaxrec.metrics`, pure functions). Keys (``k`` over ``ks``):

- ``cv@k``: |unique items over all top-k lists| / N;
- ``novel_cv@k``: the fraction of the less popular items (count ≤ the
  ``novel_percentile``-th percentile of ``task.item_freq``, default 90) in some list;
- ``repetitions@k``: the mean over sessions (the ``session`` eval array) of a session's
  list entries minus its distinct items (lower is better);
- ``nov_reward``: the total over queries of the novelty reward of the top-1 (1 if less
  popular), and ``nov_reward/mean`` per query;
- ``div_reward`` (and ``div_reward/mean``): the total of ``1 − cos(e(last item of the
  state), e(top-1))``, only with ``diversity`` on: ``e`` is ``consts['item_embeddings']``
  ``[N + 1, D]`` (row N is the pad, i.e. the empty history, as in the reproduction's
  padded lookup);
- ``offpolicy_ndcg@k`` over all queries, and ``<group>/offpolicy_ndcg@k`` per query group
  when there are several (clicks and purchases, as the SA2C release prints them): NDCG
  gains weighted by 1 / pop(target), normalised by ``offpolicy_norm``: ``'self'`` (the
  release: divided by the summed weights) or ``'mean'`` (divided by the number of
  queries); see :func:`jaxrec.metrics.offpolicy_ndcg`.

Options (``config.eval`` overridden by the ``config.evals`` entry): ``ks``, ``batch_size``,
``ties`` and ``exclude_history`` / ``mask_target_if_in_history`` as for the ranking
evaluator (history exclusion applies to the lists and the ranks alike); ``novel_percentile``
(90); ``offpolicy_norm`` ('self'); ``diversity``: True (require the embeddings), False
(skip), or None (default: report ``div_reward`` when the consts carry them; then
:meth:`metric_names` cannot list it in advance).
"""

from __future__ import annotations

from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import metrics as M
from jaxrec.evaluators.ranking import history_mask
from jaxrec.runs import eval_batches

EMBEDDINGS_KEY = "item_embeddings"


class CoverageEvaluator:
    """Coverage, novelty, repetition, diversity and off-policy NDCG over one split.

    Args:
      method: the method module (``predict``, optional ``eval_consts``).
      task: the :class:`~jaxrec.data.tasks.Task` (``item_freq``, ``item_popularity``, and
        eval arrays with ``session`` for repetitions).
      config: the run's config (unused beyond ``options``).
      options: merged settings (see the module docstring).
    """

    lower_is_better = ("repetitions",)

    def __init__(self, method: ModuleType, task, config, options):
        del config
        self.options, self.task = options, task
        self.ks = tuple(int(k) for k in options.get("ks", (5, 10, 20)))
        n = task.num_items
        if not self.ks or min(self.ks) < 1 or max(self.ks) > n:
            raise ValueError(f"coverage evaluator: ks must be in [1, N={n}], got {self.ks}")
        self.batch_size = int(options.get("batch_size", 256))
        self.diversity = options.get("diversity", None)
        self.norm = str(options.get("offpolicy_norm", "self"))
        if self.norm not in M.OFFPOLICY_NORMS:
            raise ValueError(f"coverage evaluator: offpolicy_norm must be one of "
                             f"{M.OFFPOLICY_NORMS}, got {self.norm!r}")
        self.less_popular = M.less_popular_items(task.item_freq,
                                                 float(options.get("novel_percentile", 90.0)))
        ties = str(options.get("ties", "reference"))
        exclude = bool(options.get("exclude_history", False))
        mask_target = bool(options.get("mask_target_if_in_history", True))
        k_max, predict = max(self.ks), method.predict

        def batch_fn(state, batch, ctx, table, id_shift):
            """-> (top [B, k_max], ranks [B], div [B] or None) for one batch."""
            scores = predict(state, batch, ctx)
            excl = history_mask(batch["state"], n, id_shift) if exclude else None
            ranks = M.target_ranks(scores, batch["target"], excl,
                                   mask_target_if_in_history=mask_target, ties=ties)
            if excl is not None:
                scores = jnp.where(excl, -jnp.inf, scores)
            top = M.top_k_items(scores, k_max)
            div = None
            if table is not None:
                last = M.last_items(batch["state"], batch["len_state"], n, id_shift)
                div = M.diversity_reward(table, last, top[:, 0])
            return top, ranks, div

        self._batch = jax.jit(batch_fn, static_argnums=4)
        pre = getattr(method, "eval_consts", None)
        self._eval_consts = jax.jit(pre) if pre is not None else None

    def metric_names(self, split: str) -> list:
        """The keys :meth:`run` returns for ``split`` (``div_reward`` only when
        ``diversity`` is True)."""
        ev = self.task.split(split)
        names = [f"{m}@{k}" for k in self.ks for m in ("cv", "novel_cv", "repetitions",
                                                        "offpolicy_ndcg")]
        if len(ev.groups) > 1:
            names += [f"{g}/offpolicy_ndcg@{k}" for g in ev.groups for k in self.ks]
        names += ["nov_reward", "nov_reward/mean"]
        if self.diversity:
            names += ["div_reward", "div_reward/mean"]
        return names

    def _table(self, consts):
        """The ``[N + 1, D]`` embeddings for the diversity reward, or None to skip it."""
        table = consts.get(EMBEDDINGS_KEY) if hasattr(consts, "get") else None
        if self.diversity is False:
            return None
        if table is None:
            if self.diversity:
                raise ValueError(f"coverage evaluator: diversity=True needs the method's "
                                 f"consts to provide {EMBEDDINGS_KEY!r} [N + 1, D]")
            return None
        n = self.task.num_items
        if table.ndim != 2 or table.shape[0] != n + 1:
            raise ValueError(f"coverage evaluator: consts[{EMBEDDINGS_KEY!r}] must have shape "
                             f"[N + 1, D] = [{n + 1}, D] (row N: the pad), got {table.shape}")
        return table

    def run(self, state, consts, split: str) -> dict:
        """The metrics of ``split`` (see the module docstring)."""
        ev = self.task.split(split)
        table = self._table(consts)
        ctx = self._eval_consts(state, consts) if self._eval_consts is not None else consts
        tops, ranks, divs = [], [], []
        for batch, b in eval_batches(ev.arrays, self.batch_size):
            top, rank, div = jax.device_get(self._batch(state, batch, ctx, table, ev.id_shift))
            tops.append(top[:b])
            ranks.append(rank[:b])
            if div is not None:
                divs.append(div[:b])
        top = np.concatenate(tops) if tops else np.zeros((0, max(self.ks)), np.int32)
        rank = np.concatenate(ranks) if ranks else np.zeros((0,), np.int32)
        target = ev.arrays["target"]
        group = ev.arrays.get("group", np.zeros(len(target), np.int32))
        pop = self.task.item_popularity
        n = self.task.num_items
        out = {}
        for k in self.ks:
            out[f"cv@{k}"] = M.coverage(top[:, :k], n)
            out[f"novel_cv@{k}"] = M.novel_coverage(top[:, :k], self.less_popular)
            out[f"repetitions@{k}"] = M.session_repetitions(top[:, :k], ev.arrays["session"])
            out[f"offpolicy_ndcg@{k}"] = M.offpolicy_ndcg(rank, target, pop, k, self.norm)
            if len(ev.groups) > 1:
                for i, g in enumerate(ev.groups):
                    sel = group == i
                    out[f"{g}/offpolicy_ndcg@{k}"] = M.offpolicy_ndcg(
                        rank[sel], target[sel], pop, k, self.norm)
        nov = self.less_popular[top[:, 0]].astype(np.float64)
        out["nov_reward"] = float(nov.sum())
        out["nov_reward/mean"] = float(nov.mean()) if nov.size else float("nan")
        if table is not None:
            div = np.concatenate(divs).astype(np.float64) if divs else np.zeros(0)
            out["div_reward"] = float(div.sum())
            out["div_reward/mean"] = float(div.mean()) if div.size else float("nan")
        return out
