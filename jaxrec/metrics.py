"""Full-ranking metrics: ranks, HR@k / NDCG@k / MRR@k, grouped streaming accumulation, tables.

Protocols implemented:
- RL papers (Xin et al. SIGIR 2020 / WSDM 2022 / SIGIR 2022; specs/rl.md §9,
  ``utility.calculate_hit``): every event is a query, full ranking over all N items with
  no history removal, one relevant item so IDCG = 1, NDCG gain 1/log2(rank+1), HR and NDCG
  reported separately for clicks and purchases, plus cumulative reward@k (sum of the
  rewards of hits).
- Leave-one-out papers (IISAN, Fu et al. SIGIR 2024, specs/iisan.md §1.13; PCRec, Sun et
  al. SIGIR 2022, specs/intent_pcrec.md §2.6): full ranking with the user's history items
  excluded (IISAN), HR/NDCG/MRR@k.

Ranks are computed by counting, not sorting (``rank = 1 + #{items placed above t}`` under
a chosen tie rule), which is O(N) per query and jittable; the evaluator streams batches of queries through
:class:`MetricAccumulator`, so a [Q, N] score matrix is never held for all queries.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Rank given to a target that cannot be ranked: excluded by the history mask, a NaN score,
# or an id outside the catalogue. Larger than any catalogue, so it is a miss at every k
# (even when k exceeds N), and small enough that rank + 1 does not overflow int32.
UNRANKED = 2 ** 30

METRIC_NAMES = ("hr", "ndcg", "mrr")
# Table/group order of the RL papers' tables: purchases first, then clicks.
PAPER_GROUPS = ("purchase", "click")
# Group index = is_buy, so ``add(ranks, group=is_buy)`` works directly.
RL_GROUPS = ("click", "purchase")


def _is_concrete(x) -> bool:
    """True for arrays whose values can be read now (not under jit tracing)."""
    return isinstance(x, (np.ndarray, jax.Array)) and not isinstance(x, jax.core.Tracer)


TIES = ("reference", "pessimistic", "optimistic")


def target_ranks(scores: jax.Array, targets: jax.Array,
                 exclude_mask: Optional[jax.Array] = None, *,
                 mask_target_if_in_history: bool = True,
                 ties: str = "reference") -> jax.Array:
    """1-based rank of each target in a full ranking, with a chosen tie rule.

    ``ties``:

    - ``'reference'`` (default): the order of the papers' evaluation code, which takes
      the top k from the end of a stable ascending ``np.argsort`` (rl.md §9,
      ``utility.calculate_hit``): among items tied with the target, those with a *higher*
      index rank above it. ``rank = 1 + #{j : s_j > s_t} + #{j > t : s_j = s_t}``.
      Beware: a constant scorer then gets credit whenever the target has a large id.
    - ``'pessimistic'``: every tied item ranks above the target,
      ``rank = 1 + #{j != t : s_j >= s_t}``, so a constant scorer (or a block of tied
      scores containing the target) gets no credit for the tie.
    - ``'optimistic'``: every tied item ranks below, ``rank = 1 + #{j : s_j > s_t}``.

    NaN scores are ranked above the target under every rule; a NaN target score or an
    out-of-range target id gives :data:`UNRANKED`.

    Args:
      scores: ``[Q, N]`` float scores over the catalogue.
      targets: ``[Q]`` int column of the relevant item in ``scores``.
      exclude_mask: optional ``[Q, N]`` bool, True = remove the item from the ranking
        (its score becomes -inf): leave-one-out history masking.
      mask_target_if_in_history: what happens when the target itself is excluded. True
        (IISAN's reference behaviour): it is masked like any history item and counts as a
        miss (rank :data:`UNRANKED`). False: the target keeps its score; only the other
        excluded items are removed.
    Returns:
      ``[Q]`` int32 ranks in ``[1, N]``, or :data:`UNRANKED`.
    """
    if scores.ndim != 2:
        raise ValueError(f"target_ranks: scores must have shape [Q, N], got {scores.shape}")
    Q, N = scores.shape
    if getattr(targets, "shape", None) != (Q,):
        raise ValueError(f"target_ranks: targets must have shape [Q]=({Q},), got "
                         f"{getattr(targets, 'shape', None)}")
    if not jnp.issubdtype(jnp.asarray(targets).dtype, jnp.integer):
        raise TypeError(f"target_ranks: targets must be integer item ids, got "
                        f"{jnp.asarray(targets).dtype}")
    if exclude_mask is not None and exclude_mask.shape != (Q, N):
        raise ValueError(f"target_ranks: exclude_mask must have the shape of scores "
                         f"{(Q, N)}, got {exclude_mask.shape}")
    if _is_concrete(targets):
        t = np.asarray(targets)
        if t.size and (t.min() < 0 or t.max() >= N):
            raise ValueError(f"target_ranks: targets must be in [0, N={N}), got range "
                             f"[{t.min()}, {t.max()}]")
    scores = jnp.asarray(scores, jnp.float32)
    targets = jnp.asarray(targets, jnp.int32)
    # Under jit an out-of-range target cannot raise: gather a NaN and report UNRANKED.
    target_score = jnp.take_along_axis(scores, targets[:, None], axis=1, mode="fill",
                                       fill_value=jnp.nan,
                                       wrap_negative_indices=False)[:, 0]  # [Q]
    is_target = jnp.arange(N)[None, :] == targets[:, None]                 # [Q, N]
    unranked = jnp.isnan(target_score)
    if exclude_mask is not None:
        exclude_mask = jnp.asarray(exclude_mask, bool)
        target_excluded = jnp.any(exclude_mask & is_target, axis=1)
        if mask_target_if_in_history:
            unranked = unranked | target_excluded
        scores = jnp.where(exclude_mask & ~is_target, -jnp.inf, scores)
    if ties not in TIES:
        raise ValueError(f"target_ranks: ties must be one of {TIES}, got {ties!r}")
    t_s = target_score[:, None]
    if ties == "pessimistic":
        tied_above = jnp.ones((1, N), bool)
    elif ties == "optimistic":
        tied_above = jnp.zeros((1, N), bool)
    else:   # reference: later index wins a tie (end of a stable ascending argsort)
        tied_above = jnp.arange(N)[None, :] > targets[:, None]
    above = ((scores > t_s) | ((scores == t_s) & tied_above) | jnp.isnan(scores)) & ~is_target
    ranks = 1 + jnp.sum(above, axis=1, dtype=jnp.int32)
    return jnp.where(unranked, UNRANKED, ranks).astype(jnp.int32)


def ranking_metrics(ranks: jax.Array, ks: Sequence[int] = (5, 10, 20)) -> dict:
    """Per-query HR@k, NDCG@k and MRR@k from 1-based ranks.

    One relevant item per query, so IDCG = 1: ``ndcg@k = 1/log2(rank+1)`` if
    ``rank <= k`` else 0, ``hr@k = [rank <= k]``, ``mrr@k = 1/rank`` if ``rank <= k``.

    Args:
      ranks: ``[Q]`` int ranks (e.g. from :func:`target_ranks`).
      ks: cut-offs.
    Returns:
      ``{'hr@k': [Q], 'ndcg@k': [Q], 'mrr@k': [Q]}`` float32 for every k.
    """
    ks = _check_ks(ks)
    r = jnp.asarray(ranks).astype(jnp.float32)
    out = {}
    for k in ks:
        hit = r <= k
        out[f"hr@{k}"] = hit.astype(jnp.float32)
        out[f"ndcg@{k}"] = jnp.where(hit, 1.0 / jnp.log2(r + 1.0), 0.0)
        out[f"mrr@{k}"] = jnp.where(hit, 1.0 / r, 0.0)
    return out


def _check_ks(ks) -> tuple:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"cut-offs ks must be positive integers, got {ks}")
    return ks


def top_k_items(scores: jax.Array, k: int) -> jax.Array:
    """Indices of the k highest scores per row, best first: ``[Q, N] -> [Q, k]`` int32.

    Ties go to the lower item index (``jax.lax.top_k``). Used for coverage, novelty and
    repetition metrics, which need the recommended lists rather than a target's rank.
    """
    if scores.ndim != 2:
        raise ValueError(f"top_k_items: scores must have shape [Q, N], got {scores.shape}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"top_k_items: k must be in [1, N={scores.shape[1]}], got {k}")
    return jax.lax.top_k(scores, k)[1].astype(jnp.int32)


_jit_ranks = jax.jit(target_ranks, static_argnames=("mask_target_if_in_history", "ties"))


class MetricAccumulator:
    """Streams per-query metrics into per-group means (host-side float64 sums).

    ``groups`` names the query groups; ``add(..., group=g)`` takes ``g [Q]`` int indices
    into it. For the RL protocol use ``groups=RL_GROUPS`` (``('click', 'purchase')``) and
    pass ``group=is_buy``; for leave-one-out a single group, e.g. ``('all',)``.

    ``result()`` gives ``'{group}/{metric}@{k}'`` means, ``'{group}/count'``, and — when
    rewards were passed — ``'{group}/reward@{k}'``, the *sum* of the rewards of hits (the
    RL papers' cumulative reward). A group with no queries has count 0 and NaN means.
    """

    def __init__(self, ks: Sequence[int] = (5, 10, 20), groups: Sequence[str] = ("all",)):
        self.ks = _check_ks(ks)
        self.groups = tuple(str(g) for g in groups)
        if not self.groups or len(set(self.groups)) != len(self.groups):
            raise ValueError(f"MetricAccumulator: groups must be distinct names, got {groups}")
        self.reset()

    def reset(self) -> None:
        """Forgets everything added so far (e.g. between evaluation rounds)."""
        G = len(self.groups)
        self._count = np.zeros(G, np.int64)
        self._sums = {f"{m}@{k}": np.zeros(G, np.float64)
                      for k in self.ks for m in METRIC_NAMES}
        self._reward = {f"reward@{k}": np.zeros(G, np.float64) for k in self.ks}
        self._has_reward = False

    def add(self, ranks, group=None, valid=None, reward=None) -> None:
        """Adds a batch of queries.

        Args:
          ranks: ``[Q]`` int ranks.
          group: ``[Q]`` int indices into ``groups``; None = all in group 0.
          valid: ``[Q]`` bool; False rows are ignored (padding of a fixed-shape last batch).
          reward: ``[Q]`` float reward of each query's event, for cumulative reward@k.
        """
        ranks = np.asarray(ranks)
        if ranks.ndim != 1:
            raise ValueError(f"MetricAccumulator.add: ranks must have shape [Q], got "
                             f"{ranks.shape}")
        Q = ranks.shape[0]
        g = np.zeros(Q, np.int64) if group is None else np.asarray(group).astype(np.int64)
        if g.shape != (Q,):
            raise ValueError(f"MetricAccumulator.add: group must have shape [Q]=({Q},), got "
                             f"{g.shape}")
        if Q and (g.min() < 0 or g.max() >= len(self.groups)):
            raise ValueError(f"MetricAccumulator.add: group indices must be in "
                             f"[0, {len(self.groups)}) for groups {self.groups}, got range "
                             f"[{g.min()}, {g.max()}]")
        keep = np.ones(Q, bool) if valid is None else np.asarray(valid, bool)
        if keep.shape != (Q,):
            raise ValueError(f"MetricAccumulator.add: valid must have shape [Q]=({Q},), got "
                             f"{keep.shape}")
        if reward is not None:
            reward = np.asarray(reward, np.float64)
            if reward.shape != (Q,):
                raise ValueError(f"MetricAccumulator.add: reward must have shape "
                                 f"[Q]=({Q},), got {reward.shape}")
            self._has_reward = True
        G = len(self.groups)
        g, r = g[keep], ranks[keep].astype(np.float64)
        self._count += np.bincount(g, minlength=G)
        # Same formulas as ranking_metrics, in float64 on the host: the accumulator
        # must not depend on a device being present or on float32 summation order.
        for k in self.ks:
            hit = r <= k
            self._sums[f"hr@{k}"] += np.bincount(g, weights=hit.astype(np.float64),
                                                 minlength=G)
            self._sums[f"ndcg@{k}"] += np.bincount(
                g, weights=np.where(hit, 1.0 / np.log2(r + 1.0), 0.0), minlength=G)
            self._sums[f"mrr@{k}"] += np.bincount(g, weights=np.where(hit, 1.0 / r, 0.0),
                                                  minlength=G)
            if reward is not None:
                self._reward[f"reward@{k}"] += np.bincount(
                    g, weights=np.where(hit, reward[keep], 0.0), minlength=G)

    def add_scores(self, scores, targets, group=None, valid=None, reward=None,
                   exclude_mask=None, *, mask_target_if_in_history: bool = True,
                   ties: str = "reference") -> None:
        """Ranks a batch (jitted :func:`target_ranks`) and adds it.

        Args:
          scores: ``[Q, N]``; targets: ``[Q]``; exclude_mask: ``[Q, N]`` bool or None;
          the rest as in :meth:`add`.
        """
        if valid is not None:
            # Padding rows of a fixed-shape batch may carry any target id; park them at 0
            # so the range check does not reject the batch.
            targets = np.where(np.asarray(valid, bool), np.asarray(targets), 0)
        ranks = _jit_ranks(scores, targets, exclude_mask,
                           mask_target_if_in_history=mask_target_if_in_history, ties=ties)
        self.add(ranks, group=group, valid=valid, reward=reward)

    def result(self) -> dict:
        """``{'{group}/{metric}@{k}': mean, '{group}/count': n, ...}`` as Python numbers."""
        out = {}
        for i, name in enumerate(self.groups):
            n = int(self._count[i])
            out[f"{name}/count"] = n
            for key, s in self._sums.items():
                out[f"{name}/{key}"] = float(s[i] / n) if n else float("nan")
            if self._has_reward:
                for key, s in self._reward.items():
                    out[f"{name}/{key}"] = float(s[i])
        return out


def paper_columns(groups: Sequence[str] = PAPER_GROUPS, ks: Sequence[int] = (5, 10, 20),
                  metrics: Sequence[str] = ("hr", "ndcg")) -> list:
    """Column keys in the RL papers' table order: per group, for each k, HR then NDCG."""
    return [f"{g}/{m}@{k}" for g in groups for k in ks for m in metrics]


_SHORT = {"hr": "HR", "ndcg": "NG", "mrr": "MRR", "reward": "R"}


def _column_label(metric: str) -> str:
    name, _, k = metric.partition("@")
    return f"{_SHORT.get(name, name)}@{k}" if k else _SHORT.get(name, name)


def format_table(rows: Mapping[str, Mapping[str, float]],
                 columns: Optional[Sequence[str]] = None, digits: int = 4) -> str:
    """A paper-style text table: one row per method, grouped metric columns.

    Args:
      rows: ``{method: {'purchase/hr@5': 0.39, ...}}`` (e.g. ``MetricAccumulator.result()``
        per method).
      columns: column keys ``'{group}/{metric}'``; None = :func:`paper_columns` restricted
        to keys present in some row (purchase HR/NDCG @5/10/20, then click).
      digits: decimals shown.
    Returns:
      The table as a string; missing values print as ``-``. Groups are separated by ``|``
      and labelled on a header line above their columns.
    """
    if columns is None:
        present = set().union(*(r.keys() for r in rows.values())) if rows else set()
        columns = [c for c in paper_columns() if c in present]
        if not columns:   # not the RL layout: every non-count key, in first-seen order
            columns = list(dict.fromkeys(c for r in rows.values() for c in r
                                         if not c.endswith("/count")))
    columns = list(columns)
    groups, metrics = [], []
    for c in columns:
        g, sep, m = c.rpartition("/")
        groups.append(g if sep else "")
        metrics.append(m)
    width = max([digits + 3] + [len(_column_label(m)) for m in metrics])
    name_w = max([len("method")] + [len(str(n)) for n in rows])

    # Runs of consecutive columns with the same group share one header cell.
    runs = []
    for i, g in enumerate(groups):
        if runs and runs[-1][0] == g:
            runs[-1][1].append(i)
        else:
            runs.append((g, [i]))

    def cell(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "-".rjust(width)
        if isinstance(v, (int, np.integer)):
            return str(int(v)).rjust(width)
        return f"{float(v):.{digits}f}".rjust(width)

    def join(cells_per_run):
        return " | ".join(" ".join(cells) for cells in cells_per_run)

    span = lambda n: n * width + (n - 1)
    head1 = " " * name_w + " | " + " | ".join(g.center(span(len(ix))) for g, ix in runs)
    head2 = "method".ljust(name_w) + " | " + join(
        [[_column_label(metrics[i]).rjust(width) for i in ix] for _, ix in runs])
    lines = [head1.rstrip(), head2, "-" * len(head2)]
    for name, vals in rows.items():
        lines.append(str(name).ljust(name_w) + " | " + join(
            [[cell(vals.get(columns[i])) for i in ix] for _, ix in runs]))
    return "\n".join(lines)


# ------------------------------------------------------------------ beyond accuracy
# SMORL (Stamenkovic et al., WSDM 2022; rl.md §7 "Extra metrics") and the off-policy
# corrected NDCG of SA2C (Xin et al., WSDM 2022; rl.md §5). The list metrics take the
# recommended lists ``[Q, k]`` (best first, e.g. from :func:`top_k_items`) of all queries of a
# split, gathered on the host; the rewards are jittable and shared with the SMORL method.


def less_popular_items(item_freq, percentile: float = 90.0) -> np.ndarray:
    """The "novel" items of SMORL: not among the top 10% most frequent.

    An item is less popular when its count is at most the ``percentile``-th percentile of
    the item counts (``np.percentile``, linear interpolation — the reproduction's
    ``np.quantile(item_freqs, 0.9)`` and ``count <= threshold``, rl.md §7). The percentile
    is taken over all N items of the catalogue; after the papers' preprocessing every item
    occurs at least once, so this equals the reproduction's percentile over seen items.

    Args:
      item_freq: ``[N]`` item counts (``Task.item_freq``).
      percentile: in [0, 100].
    Returns:
      ``[N]`` bool, True for the less popular items.
    """
    freq = np.asarray(item_freq)
    if freq.ndim != 1 or not freq.size:
        raise ValueError(f"less_popular_items: item_freq must have shape [N] with N > 0, got "
                         f"{freq.shape}")
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"less_popular_items: percentile must be in [0, 100], got {percentile}")
    return freq <= np.percentile(freq, float(percentile))


def coverage(top_lists, num_items: int) -> float:
    """Aggregate coverage CV@k: ``|unique items over all lists| / N``.

    Args:
      top_lists: ``[Q, k]`` int recommended items of every query.
      num_items: N.
    """
    return float(np.unique(np.asarray(top_lists)).size / num_items)


def novel_coverage(top_lists, less_popular) -> float:
    """Fraction of the less popular items (:func:`less_popular_items`) that appear in at
    least one list: ``|unique items over all lists ∩ L| / |L|`` (NaN when L is empty).

    Args:
      top_lists: ``[Q, k]`` int recommended items; less_popular: ``[N]`` bool mask of L.
    """
    less_popular = np.asarray(less_popular, bool)
    n_novel = int(less_popular.sum())
    if not n_novel:
        return float("nan")
    shown = np.unique(np.asarray(top_lists))
    return float(less_popular[shown].sum() / n_novel)


def session_repetitions(top_lists, sessions) -> float:
    """Repetitions: the mean over sessions of the duplicates among a session's lists.

    For a session with queries (steps) ``q_1..q_n`` and lists of length k, its duplicates
    are ``n·k − |distinct items in the union of its n lists|``: every list entry beyond
    the first occurrence of an item in that session counts once (an item shown at three
    steps counts 2). The result is the plain mean of that count over the sessions present
    (the reproduction's ``len(concat) − len(unique)`` per session, rl.md §7, which it
    reports per session length; here one number over all sessions).

    Args:
      top_lists: ``[Q, k]`` int recommended items; sessions: ``[Q]`` session id of each
        query (queries need not be contiguous per session).
    Returns:
      The mean (NaN with no query).
    """
    top = np.asarray(top_lists).astype(np.int64)
    sess = np.asarray(sessions)
    if top.ndim != 2 or sess.shape != top.shape[:1]:
        raise ValueError(f"session_repetitions: need top_lists [Q, k] and sessions [Q], got "
                         f"{top.shape} and {sess.shape}")
    if not top.shape[0]:
        return float("nan")
    _, sid = np.unique(sess, return_inverse=True)
    n_sess, k = int(sid.max()) + 1, top.shape[1]
    base = int(top.max()) + 1
    # Distinct (session, item) pairs, counted per session.
    pairs = np.unique(np.repeat(sid, k).astype(np.int64) * base + top.ravel())
    distinct = np.bincount(pairs // base, minlength=n_sess)
    entries = np.bincount(sid, minlength=n_sess) * k
    return float(np.mean(entries - distinct))


def last_items(state, len_state, num_items: int, id_shift: int = 0):
    """The last item of each input window as a dense id, the pad as N: ``[B]`` int32.

    Right padding (``id_shift`` 0, the RL papers): the item at position ``len − 1``; an
    empty history (``len`` 1 with the pad N there, rl.md §1.4) gives N. Left padding with
    shifted ids (``id_shift`` 1, leave-one-out): position ``L − 1``, ``id − 1``, pad 0 → N.

    Args:
      state: ``[B, L]`` int ids; len_state: ``[B]`` int; num_items: N.
    """
    state = jnp.asarray(state)
    if id_shift:
        last = state[:, -1]
        return jnp.where(last == 0, num_items, last - 1).astype(jnp.int32)
    idx = jnp.clip(jnp.asarray(len_state) - 1, 0, state.shape[1] - 1)
    return jnp.take_along_axis(state, idx[:, None], axis=1)[:, 0].astype(jnp.int32)


def diversity_reward(table, last, recommended, eps: float = 1e-6):
    """SMORL's diversity reward ``1 − cos(e(last item), e(recommended))`` (rl.md §7).

    The cosine is ``x·y / (max(‖x‖, eps) · max(‖y‖, eps))`` (torch ``CosineSimilarity``
    with eps 1e-6, as the reproduction), so a zero row gives cos 0 rather than NaN.

    Args:
      table: ``[N + 1, D]`` frozen item embeddings; row N is the pad, i.e. an empty
        history (the reference's ``nn.Embedding(N + 1)`` lookup of the padded state).
      last: ``[B]`` int ids in ``[0, N]`` (:func:`last_items`); recommended: ``[B]`` int.
    Returns:
      ``[B]`` float32 in [0, 2].
    """
    table = jnp.asarray(table, jnp.float32)
    x, y = table[last], table[recommended]
    norm = lambda v: jnp.maximum(jnp.linalg.norm(v, axis=-1), eps)
    return 1.0 - jnp.sum(x * y, axis=-1) / (norm(x) * norm(y))


def novelty_reward(less_popular, recommended):
    """SMORL's novelty reward: 1 where the recommended item is less popular, else 0.

    Args:
      less_popular: ``[N]`` bool (:func:`less_popular_items`); recommended: ``[B]`` int.
    Returns:
      ``[B]`` float32.
    """
    return jnp.asarray(less_popular)[recommended].astype(jnp.float32)


OFFPOLICY_NORMS = ("self", "mean")


def offpolicy_ndcg(ranks, targets, popularity, k: int = 10, normalize: str = "self") -> float:
    """Off-policy corrected NDCG@k of the SA2C release (rl.md §5, ``calculate_off``).

    Each query's NDCG gain ``[rank ≤ k] / log2(rank + 1)`` is weighted by ``1 / pop(t)``,
    with ``pop`` the target's share of all events (``Task.item_popularity``):

    - ``'self'`` (the reference, default): ``Σ_q gain_q / pop(t_q)  /  Σ_q 1 / pop(t_q)``,
      the self-normalised estimate (a weighted mean of the gains; the release computes it
      separately over click and purchase queries);
    - ``'mean'``: ``Σ_q gain_q / pop(t_q)  /  Q``, the plain average over queries (an
      unnormalised inverse-propensity estimate; its scale grows as 1 / pop).

    Args:
      ranks: ``[Q]`` 1-based target ranks (:func:`target_ranks`); targets: ``[Q]`` ids;
      popularity: ``[N]`` item shares; k: cut-off; normalize: 'self' or 'mean'.
    Returns:
      The estimate (NaN with no query). A zero popularity (a target never counted, which a
      target event cannot be) is clipped to the smallest positive one.
    """
    if normalize not in OFFPOLICY_NORMS:
        raise ValueError(f"offpolicy_ndcg: normalize must be one of {OFFPOLICY_NORMS}, got "
                         f"{normalize!r}")
    r = np.asarray(ranks, np.float64)
    if not r.size:
        return float("nan")
    pop = np.asarray(popularity, np.float64)
    pop = np.maximum(pop, pop[pop > 0].min() if (pop > 0).any() else 1.0)
    w = 1.0 / pop[np.asarray(targets)]
    gain = np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)
    return float((gain * w).sum() / (w.sum() if normalize == "self" else r.size))


def tpme(times, params, memories, weights=(0.45, 0.1, 0.45)) -> np.ndarray:
    """Training-time, Parameter and GPU Memory Efficiency (IISAN, Fu et al., SIGIR 2024, §4;
    spec iisan.md §1.14): ``a1 t^ + a2 p^ + a3 m^`` of min-max normalised quantities over the
    K compared methods (lower is better; 0 = best on every axis).

    Args:
      times, params, memories: ``[K]`` per-method training time, trainable parameters and memory.
      weights: ``(a1, a2, a3)`` summing to 1; the paper's are (0.45, 0.1, 0.45).
    Returns:
      ``[K]`` float64 TPME values. A quantity equal across all methods contributes 0.
    """
    w = np.asarray(weights, np.float64)
    if w.shape != (3,) or not np.isclose(w.sum(), 1.0) or (w < 0).any():
        raise ValueError(f"tpme: weights must be 3 non-negative numbers summing to 1, got {weights}")
    cols = []
    for x in (times, params, memories):
        x = np.asarray(x, np.float64)
        span = x.max() - x.min()
        cols.append((x - x.min()) / span if span > 0 else np.zeros_like(x))
    return w[0] * cols[0] + w[1] * cols[1] + w[2] * cols[2]
