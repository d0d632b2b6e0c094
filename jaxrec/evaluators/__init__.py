"""Evaluators, named in ``config.evals`` (big_vision style).

``config.evals`` maps an evaluator *name* to its settings::

    config.evals.ranking = dict(type='ranking', prefix='')        # the default
    config.evals.cov = dict(type='coverage', ks=(10,))             # a method's own

``type`` is looked up, in order, in the method module's ``EVALUATORS`` dict, in
:data:`REGISTRY`, or imported as a dotted path to a class (``mypkg.evals.MyEvaluator``).
The settings an evaluator sees are ``config.eval`` (shared: ks, batch_size, ties,
exclude_history, ...) overridden by its own entry. Its metrics are reported under
``<prefix><key>``, where ``prefix`` defaults to ``'<name>/'``.

An evaluator is a class built once per run::

    Evaluator(method, task, config, options)          # options: the merged settings
    evaluator.run(state, consts, split) -> {metric: float}   # split: validation | test

It may list its keys in advance (``metric_names(split)``), so a misspelled
``config.eval.select_metric`` fails before training, and it may precompute once per call
of ``run`` (an item tower over all N items, through the
method's ``eval_consts``) instead of once per batch. ``lower_is_better`` (a tuple of
metric-name substrings) tells the trainer which metrics improve downwards when it keeps
the best value of every metric.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import ml_collections

REGISTRY = {
    "ranking": "jaxrec.evaluators.ranking.RankingEvaluator",
    "coverage": "jaxrec.evaluators.coverage.CoverageEvaluator",
    "genres": "jaxrec.evaluators.genres.GenreF1Evaluator",
}


def _import(path: str):
    module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import evaluator {path!r} ({e})") from e


def resolve(type_name: str, method: ModuleType):
    """The evaluator class of ``type_name`` (method's own, registry, or dotted path)."""
    own = getattr(method, "EVALUATORS", {}) or {}
    if type_name in own:
        return own[type_name]
    if type_name in REGISTRY:
        return _import(REGISTRY[type_name])
    if "." in type_name:
        return _import(type_name)
    raise ValueError(f"unknown evaluator type {type_name!r}; available: "
                     f"{', '.join(sorted(set(own) | set(REGISTRY)))} (or a dotted path)")


def options_for(config, name: str) -> ml_collections.ConfigDict:
    """``config.eval`` overridden by ``config.evals[name]``, plus its ``prefix``."""
    merged = ml_collections.ConfigDict(config.get("eval", ml_collections.ConfigDict()).to_dict())
    entry = config.evals[name]
    for k, v in entry.items():
        merged[k] = v
    if "prefix" not in entry:
        merged.prefix = f"{name}/"
    return merged


def make_evaluators(method: ModuleType, task, config) -> dict:
    """name -> evaluator instance for every entry of ``config.evals``."""
    evals = config.get("evals", None)
    if not evals:
        raise ValueError("config.evals is empty: name at least one evaluator, e.g. "
                         "config.evals.ranking = dict(type='ranking', prefix='')")
    out = {}
    for name in evals:
        opts = options_for(config, name)
        if "type" not in opts:
            raise ValueError(f"config.evals.{name} has no 'type'")
        out[name] = resolve(str(opts.type), method)(method, task, config, opts)
    return out


def run_all(evaluators: dict, state, consts, split: str) -> dict:
    """Runs every evaluator on one split; keys prefixed per evaluator."""
    out = {}
    for name, ev in evaluators.items():
        prefix = str(ev.options.get("prefix", f"{name}/"))
        for k, v in ev.run(state, consts, split).items():
            out[prefix + k] = v
    return out


def metric_names(evaluators: dict, task) -> "set | None":
    """Every (prefixed) key the evaluators will report, or None when one of them cannot
    say in advance (an evaluator may define ``metric_names(split) -> iterable``). Lets the
    trainer reject a misspelled ``select_metric`` before training."""
    out = set()
    for name, ev in evaluators.items():
        fn = getattr(ev, "metric_names", None)
        if fn is None:
            return None
        prefix = str(ev.options.get("prefix", f"{name}/"))
        out.update(prefix + k for k in fn("validation"))
    return out


def lower_is_better(evaluators: dict, metric: str) -> bool:
    """Whether ``metric`` (a prefixed key) improves downwards for the evaluator that made it."""
    for name, ev in evaluators.items():
        prefix = str(ev.options.get("prefix", f"{name}/"))
        if metric.startswith(prefix) and any(s in metric[len(prefix):]
                                             for s in getattr(ev, "lower_is_better", ())):
            return True
    return False
