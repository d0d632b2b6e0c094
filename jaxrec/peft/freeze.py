"""Which parameters train: regex patterns over parameter paths -> optimizer masks.

Fine-tuning regimes compared by IISAN (Fu et al., SIGIR 2024, §5.1 baselines; spec
``iisan.md`` §1.11–1.12) and used by PERSOMA / GazeReward (spec ``llm.md`` §1.3, §2.4, §3):

* full fine-tuning (FFT) — every parameter;
* LoRA (Hu et al., ICLR 2022) — the ``lora_a`` / ``lora_b`` factors of :class:`LoRADense`
  (optionally also the biases of the LoRA-carrying layers, as IISAN's reference code trains);
* Houlsby adapters (Houlsby et al., ICML 2019) — every ``adapter_*`` module;
* BitFit (Ben Zaken et al., ACL 2022, §2) — every bias term, LayerNorm biases included.

Freezing never mutates modules: a parameter tree gets a label per leaf,
``'trainable'`` or ``'frozen'``, from ``re.search`` over its '/'-joined path, and

* :func:`masked_optimizer` wraps an optax transform in ``optax.multi_transform`` with
  ``optax.set_to_zero()`` for frozen leaves, so they receive zero updates *and* the inner
  optimizer keeps no state for them (``optax.masked`` alone would pass raw gradients through
  for the unmasked leaves, ``ecosystem.md`` §11);
* :func:`split_trainable` / :func:`merge` let a train step differentiate only the trainable
  subtree, which is also what saves activation memory (``ecosystem.md`` §5).

A pattern that matches no parameter raises: a typo would otherwise silently freeze (or unfreeze)
a whole model.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import traverse_util

__all__ = [
    "TRAINABLE",
    "FROZEN",
    "PRESETS",
    "path_str",
    "lora_patterns",
    "param_labels",
    "group_labels",
    "masked_optimizer",
    "count_params",
    "split_trainable",
    "merge",
]

TRAINABLE = "trainable"
FROZEN = "frozen"

# Trainable-path presets for the backbone part of a model. A method adds its own patterns for
# the heads it always trains (e.g. ``PRESETS["bitfit"] + (r"^user_encoder/",)``).
PRESETS: dict[str, tuple[str, ...]] = {
    "full": (r".*",),
    "lora": (r"(^|/)lora_[ab]$",),
    "houlsby": (r"(^|/)adapter_",),
    "bitfit": (r"(^|/)bias$",),
}


def lora_patterns(bias_of: Sequence[str] = ()) -> tuple[str, ...]:
    """LoRA preset, optionally with the biases of the LoRA-carrying projections.

    The IISAN reference code (spec §1.12) swaps query/value for ``loralib.Linear``, whose bias
    stays trainable; ``lora_patterns(("query", "value"))`` reproduces that.

    Args:
      bias_of: projection names whose ``bias`` also trains (e.g. a config's ``lora_targets``).

    Returns:
      Regex patterns for :func:`param_labels`.
    """
    pats = PRESETS["lora"]
    if bias_of:
        names = "|".join(re.escape(n) for n in bias_of)
        pats = pats + (rf"(^|/)({names})/bias$",)
    return pats


def _key_name(k: Any) -> str:
    # jax.tree_util key entries: DictKey(.key), GetAttrKey(.name), SequenceKey(.idx),
    # FlattenedIndexKey(.key); plain strings/ints come from flax.traverse_util paths.
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_str(path: Sequence[Any]) -> str:
    """Joins a parameter path into ``'a/b/kernel'``.

    Args:
      path: a tuple of strings (``flax.traverse_util.flatten_dict``) or of jax key entries
        (``jax.tree_util.tree_flatten_with_path``).
    """
    return "/".join(_key_name(k) for k in path)


def _compile(patterns: Sequence[str], what: str) -> list[re.Pattern]:
    if isinstance(patterns, str):
        raise TypeError(f"{what} patterns must be a sequence of regexes, got the string {patterns!r}")
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"{what} pattern {p!r} is not a valid regex: {e}") from e
    return out


def group_labels(
    params: Any,
    groups: Mapping[str, Sequence[str]],
    default: str | None = None,
) -> Any:
    """Labels every leaf with the first group (in ``groups`` order) one of whose regexes matches.

    The general form behind :func:`param_labels`; use it directly for per-group learning rates
    (``optax.multi_transform({'bert': adam(5e-5), 'vit': adam(1e-4), ...}, labels)``, spec §1.11).

    Args:
      params: any pytree of arrays / ``jax.ShapeDtypeStruct`` (nested dicts for linen).
      groups: ``{label: regexes}``; ``re.search`` over the '/'-joined path.
      default: label of leaves no group matches; None makes such a leaf an error.

    Returns:
      A pytree of label strings with the structure of ``params``.

    Raises:
      ValueError: a pattern matches no parameter (names the pattern and its group), or a leaf
        matches no group and ``default`` is None (names up to 10 such paths).
    """
    compiled = [(label, pat, rx) for label, pats in groups.items()
                for pat, rx in zip(pats, _compile(pats, f"group {label!r}"))]
    used = set()
    unmatched = []

    def label_of(path, _leaf):
        s = path_str(path)
        # Record every matching pattern, not just the winner, so that only patterns that
        # match nothing at all are reported as typos.
        hits = [i for i, (_, _, rx) in enumerate(compiled) if rx.search(s)]
        used.update(hits)
        if hits:
            return compiled[hits[0]][0]
        if default is None:
            unmatched.append(s)
        return default

    labels = jax.tree_util.tree_map_with_path(label_of, params)
    unused = [(label, pat) for i, (label, pat, _) in enumerate(compiled) if i not in used]
    if unused:
        raise ValueError(
            "parameter patterns match no parameter (typo?): "
            + ", ".join(f"{pat!r} (group {label!r})" for label, pat in unused)
        )
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} parameters match no group and no default label is set, e.g. {unmatched[:10]}"
        )
    return labels


def param_labels(params: Any, trainable: Sequence[str], frozen: Sequence[str] = ()) -> Any:
    """``'trainable'`` / ``'frozen'`` label per parameter.

    A leaf is trainable iff some ``trainable`` regex matches its '/'-joined path and no
    ``frozen`` regex does (frozen wins, e.g. ``trainable=PRESETS["full"], frozen=(r"^embed",)``).

    Args:
      params: parameter pytree (arrays or ``jax.ShapeDtypeStruct``).
      trainable: regexes (``re.search``), e.g. ``PRESETS["lora"]``.
      frozen: regexes that override ``trainable``.

    Returns:
      Pytree of ``'trainable'`` / ``'frozen'`` with the structure of ``params``.

    Raises:
      ValueError: a ``trainable`` or ``frozen`` pattern matches no parameter path (named).
    """
    train_rx = _compile(trainable, "trainable")
    frozen_rx = _compile(frozen, "frozen")
    train_used = [False] * len(train_rx)
    frozen_used = [False] * len(frozen_rx)

    def label_of(path, _leaf):
        s = path_str(path)
        t = [bool(rx.search(s)) for rx in train_rx]
        f = [bool(rx.search(s)) for rx in frozen_rx]
        for i, hit in enumerate(t):
            train_used[i] |= hit
        for i, hit in enumerate(f):
            frozen_used[i] |= hit
        return TRAINABLE if any(t) and not any(f) else FROZEN

    labels = jax.tree_util.tree_map_with_path(label_of, params)
    unused = [f"trainable {p!r}" for p, u in zip(trainable, train_used) if not u]
    unused += [f"frozen {p!r}" for p, u in zip(frozen, frozen_used) if not u]
    if unused:
        raise ValueError(
            "parameter patterns match no parameter (typo, or the model lacks these modules, e.g. "
            "lora_rank=0 / adapter_size=0): " + ", ".join(unused)
        )
    return labels


def masked_optimizer(
    tx: optax.GradientTransformation,
    params: Any,
    trainable: Sequence[str],
    frozen: Sequence[str] = (),
) -> optax.GradientTransformation:
    """``tx`` on trainable leaves, zero updates and no optimizer state on frozen ones.

    Args:
      tx: the optimizer for trainable parameters (e.g. ``optax.adam(1e-4)``).
      params: the parameter pytree (only its paths are read).
      trainable / frozen: regexes as in :func:`param_labels`.

    Returns:
      ``optax.multi_transform({'trainable': tx, 'frozen': optax.set_to_zero()}, labels)``.
    """
    labels = param_labels(params, trainable, frozen)
    return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


def count_params(params: Any, labels: Any | None = None) -> tuple[int, int]:
    """Counts scalars.

    Args:
      params: pytree of arrays or ``jax.ShapeDtypeStruct`` (so ``jax.eval_shape`` of a
        billion-parameter init can be counted without allocating it).
      labels: matching pytree of ``'trainable'`` / ``'frozen'``; None counts everything as
        trainable.

    Returns:
      ``(trainable, total)`` numbers of scalars.
    """
    sizes = jax.tree.map(lambda x: int(np.prod(x.shape, dtype=np.int64)), params)
    total = sum(jax.tree.leaves(sizes))
    if labels is None:
        return total, total
    trainable = sum(
        s for s, lab in zip(jax.tree.leaves(sizes), jax.tree.leaves(labels)) if lab == TRAINABLE
    )
    return trainable, total


def _flat(tree: Any, what: str) -> dict:
    if not isinstance(tree, Mapping):
        raise TypeError(f"{what} must be a nested dict of parameters (linen 'params'), got {type(tree).__name__}")
    return traverse_util.flatten_dict(tree)


def split_trainable(params: Any, labels: Any) -> tuple[dict, dict]:
    """Splits a nested-dict parameter tree into its trainable and frozen parts.

    Differentiate only the first part::

        train, frozen = split_trainable(params, labels)
        grads = jax.grad(lambda t: loss(merge(t, frozen), batch))(train)

    so no gradient (and no backward activation) is computed for frozen leaves, and the
    optimizer can be built on ``train`` alone.

    Args:
      params: nested dict of arrays.
      labels: matching tree from :func:`param_labels`.

    Returns:
      ``(trainable, frozen)`` nested dicts holding disjoint subsets of the leaves (modules
      without leaves of a kind are omitted from that part).
    """
    flat_p = _flat(params, "params")
    flat_l = _flat(labels, "labels")
    if flat_p.keys() != flat_l.keys():
        diff = sorted(path_str(p) for p in flat_p.keys() ^ flat_l.keys())
        raise ValueError(f"params and labels have different paths: {diff[:10]}")
    train = {p: v for p, v in flat_p.items() if flat_l[p] == TRAINABLE}
    frozen = {p: v for p, v in flat_p.items() if flat_l[p] != TRAINABLE}
    return traverse_util.unflatten_dict(train), traverse_util.unflatten_dict(frozen)


def merge(trainable: Mapping, frozen: Mapping) -> dict:
    """Inverse of :func:`split_trainable`: the union of two disjoint nested dicts.

    Raises:
      ValueError: a path is present in both parts.
    """
    a = traverse_util.flatten_dict(trainable) if trainable else {}
    b = traverse_util.flatten_dict(frozen) if frozen else {}
    both = a.keys() & b.keys()
    if both:
        raise ValueError(f"paths in both trainable and frozen parts: {sorted(path_str(p) for p in both)[:10]}")
    return traverse_util.unflatten_dict({**a, **b})
