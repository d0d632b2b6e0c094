"""Genre-set precision / recall / F1 of generated answers (PERSOMA, spec ``llm.md`` §1.1).

PERSOMA (Hebert et al., arXiv 2408.00960) and UEM (Doddapaneni et al., arXiv 2401.04858) score
"MovieLens genre prediction" by F1 over the predicted genre set. The model *generates* its answer
(a comma-separated genre list); :func:`parse_genres` reads it back into a set of genre ids (unknown
or repeated names are dropped), and :func:`set_prf` scores it against the target set.

Averaging [inferred, spec §1.1: configurable]: ``average='macro'`` (default) scores every example
and averages P, R and F1 over examples; ``'micro'`` pools true positives, predicted and gold counts
over all examples first.

:class:`GenreF1Evaluator` (registry type ``'genres'``) calls ``method.predict(state, batch,
consts) -> tokens [B, T]`` on every evaluation batch, decodes the tokens with
``task.extras['tokenizer']`` (whose ``decode`` stops at its end-of-sequence id) and compares with the split's
``target_genres [Q, G]`` multi-hot; genre names come from ``task.extras['genre_names']``.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import jax
import numpy as np

from jaxrec.runs import eval_batches

__all__ = ["parse_genres", "set_prf", "genre_scores", "GenreF1Evaluator"]

_SPLIT = re.compile(r"[,;|\n]")


def _norm(name: str) -> str:
    return " ".join(str(name).lower().replace("'", "").split())


def parse_genres(text: str, genre_names: Sequence[str]) -> set:
    """The genre ids named in a generated answer.

    Anything up to the last ``:`` is dropped (an echoed ``genres:`` label); the rest is split on ``,``/``;``/``|``/newlines; each part is lower-cased and
    whitespace-normalised and kept when it equals a genre name (also normalised). Unknown parts
    are ignored, duplicates count once.

    Returns:
      a set of ints in ``[0, G)``.
    """
    index = {_norm(g): i for i, g in enumerate(genre_names)}
    text = str(text).rpartition(":")[2]      # a leading "genres:" label is not a genre
    return {index[p] for p in (_norm(x) for x in _SPLIT.split(text)) if p in index}


def set_prf(pred: Iterable[int], gold: Iterable[int]) -> tuple[float, float, float]:
    """Set precision, recall and F1: ``P = |p & g| / |p|`` (0 when nothing is predicted),
    ``R = |p & g| / |g|`` (0 when the gold set is empty), ``F1 = 2PR / (P + R)`` (0 when both
    are 0)."""
    p, g = set(pred), set(gold)
    tp = len(p & g)
    prec = tp / len(p) if p else 0.0
    rec = tp / len(g) if g else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return prec, rec, f1


def genre_scores(preds: Sequence[set], golds: Sequence[set], average: str = "macro") -> dict:
    """``{'precision', 'recall', 'f1', 'pred_size'}`` over examples (see the module docstring)."""
    if len(preds) != len(golds):
        raise ValueError(f"genre_scores: {len(preds)} predictions for {len(golds)} targets")
    if not preds:
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan"), "pred_size": float("nan")}
    size = float(np.mean([len(p) for p in preds]))
    if average == "macro":
        prf = np.array([set_prf(p, g) for p, g in zip(preds, golds)])
        return {"precision": float(prf[:, 0].mean()), "recall": float(prf[:, 1].mean()),
                "f1": float(prf[:, 2].mean()), "pred_size": size}
    if average == "micro":
        tp = sum(len(set(p) & set(g)) for p, g in zip(preds, golds))
        n_p, n_g = sum(len(set(p)) for p in preds), sum(len(set(g)) for g in golds)
        prec = tp / n_p if n_p else 0.0
        rec = tp / n_g if n_g else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
        return {"precision": prec, "recall": rec, "f1": f1, "pred_size": size}
    raise ValueError(f"config.eval.average must be 'macro' or 'micro', got {average!r}")


class GenreF1Evaluator:
    """Generates each query's answer and scores its genre set (keys unprefixed).

    Options: ``batch_size`` (default ``config.eval.batch_size``), ``average`` (macro | micro).
    Metrics: ``f1``, ``precision``, ``recall``, ``pred_size`` (mean genres predicted) and
    ``parse_rate`` (share of answers with at least one known genre).
    """

    lower_is_better = ()

    def __init__(self, method, task, config, options):
        for key in ("tokenizer", "genre_names"):
            if key not in task.extras:
                raise ValueError(f"evaluator 'genres' needs task.extras[{key!r}] (data kind "
                                 f"{task.kind!r} does not provide it)")
        self.task, self.options = task, options
        self.tokenizer = task.extras["tokenizer"]
        self.genre_names = list(task.extras["genre_names"])
        self.batch_size = int(options.get("batch_size", config.eval.batch_size))
        self.average = str(options.get("average", "macro"))
        self._predict = jax.jit(method.predict)

    def metric_names(self, split: str) -> list:
        return ["f1", "precision", "recall", "pred_size", "parse_rate"]

    def answers(self, state, consts, split: str) -> list[str]:
        """The decoded answer of every query of ``split``."""
        out = []
        for batch, n in eval_batches(self.task.split(split).arrays, self.batch_size):
            toks = np.asarray(self._predict(state, batch, consts))[:n]
            out.extend(self.tokenizer.decode(t) for t in toks)
        return out

    def run(self, state, consts, split: str) -> dict:
        texts = self.answers(state, consts, split)
        gold = self.task.split(split).arrays["target_genres"]
        golds = [set(np.nonzero(row)[0].tolist()) for row in gold]
        preds = [parse_genres(t, self.genre_names) for t in texts]
        out = genre_scores(preds, golds, self.average)
        out["parse_rate"] = float(np.mean([bool(p) for p in preds])) if preds else float("nan")
        return out
