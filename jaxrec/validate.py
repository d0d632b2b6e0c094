"""Checks of a run's config and workdir before anything runs (no dataset, no compile).

Not tied to a paper. Each problem raises ``ValueError`` naming the field (``config.train.
batch_size=0: must be a positive integer``), which ``jaxrec.cli`` prints as one ``error:``
line with exit status 2. What is checked:

* the trainer's sections: ``config.train`` (batch size, steps, epochs, cadences, patience,
  checkpoints kept, PRNG and compute dtype choices), ``config.optim`` (learning rate,
  Adam's betas and eps, weight decay, clipping), ``config.mesh`` and ``config.seed``;
* anywhere in the config, by field name: every learning rate (``lr`` / ``*_lr``) is finite and
  not negative (0 evaluates a frozen model), every dropout / noise *rate* (``*dropout*``, ``*_rate``) lies in [0, 1);
* the workdir is not an existing file.

Method-specific fields are checked by each method when it reads them (``hyper`` /
``init``), before the first step, with the same kind of message.
"""

from __future__ import annotations

import math
import os
from typing import Any

PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
COMPUTE_DTYPES = ("float32", "bfloat16")


def _num(path: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"config.{path}={v!r}: must be a number")
    if not math.isfinite(float(v)):
        raise ValueError(f"config.{path}={v!r}: must be finite")
    return float(v)


def _int(path: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"config.{path}={v!r}: must be {what}")
    return v


def check_train(t, path: str = "train") -> None:
    """``config.train`` (see :func:`jaxrec.config_util.train_section`)."""
    _int(f"{path}.batch_size", t.batch_size, 1)
    steps = _int(f"{path}.num_steps", t.get("num_steps", 0) or 0, 0)
    if steps == 0 and _num(f"{path}.num_epochs", t.num_epochs) <= 0:
        raise ValueError(f"config.{path}.num_epochs={t.num_epochs!r}: must be positive "
                         f"(or set config.{path}.num_steps)")
    for k in ("eval_every", "checkpoint_every", "patience"):
        if k in t:
            _int(f"{path}.{k}", t[k] or 0, 0)
    if "eval_every_epochs" in t and _num(f"{path}.eval_every_epochs", t.eval_every_epochs) < 0:
        raise ValueError(f"config.{path}.eval_every_epochs={t.eval_every_epochs!r}: must be >= 0")
    for k in ("log_every", "max_checkpoints"):
        if k in t:
            _int(f"{path}.{k}", t[k], 1)
    if "prng_impl" in t and str(t.prng_impl) not in PRNG_IMPLS:
        raise ValueError(f"config.{path}.prng_impl={t.prng_impl!r}: one of {', '.join(PRNG_IMPLS)}")
    if "compute_dtype" in t and str(t.compute_dtype) not in COMPUTE_DTYPES:
        raise ValueError(f"config.{path}.compute_dtype={t.compute_dtype!r}: one of "
                         f"{', '.join(COMPUTE_DTYPES)}")


def check_optim(o, path: str = "optim") -> None:
    """``config.optim``: Adam(W) with optional clipping (jaxrec.methods.common)."""
    for k in ("b1", "b2"):
        if k in o and not 0 <= _num(f"{path}.{k}", o[k]) < 1:
            raise ValueError(f"config.{path}.{k}={o[k]!r}: must lie in [0, 1)")
    if "eps" in o and _num(f"{path}.eps", o.eps) <= 0:
        raise ValueError(f"config.{path}.eps={o.eps!r}: must be positive")
    for k in ("weight_decay", "clip_norm"):
        if k in o and _num(f"{path}.{k}", o[k] or 0) < 0:
            raise ValueError(f"config.{path}.{k}={o[k]!r}: must be >= 0")


def check_mesh(m, path: str = "mesh") -> None:
    for k in ("data", "model"):
        if k in m:
            v = m[k]
            if isinstance(v, bool) or not isinstance(v, int) or (v < 1 and v != -1):
                raise ValueError(f"config.{path}.{k}={v!r}: a device count >= 1, or -1 for "
                                 "the remaining devices")


def _walk(section, prefix: str = ""):
    for k in section.keys():
        v = section[k]
        p = f"{prefix}{k}"
        if hasattr(v, "keys") and hasattr(v, "get"):
            yield from _walk(v, p + ".")
        else:
            yield p, str(k), v


def check_names(config) -> None:
    """Learning rates positive and finite; dropout / noise rates in [0, 1)."""
    for path, key, v in _walk(config):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if key == "lr" or key.endswith("_lr"):
            # 0 is allowed: a run that only evaluates (or a frozen-model control) trains at lr 0
            if _num(path, v) < 0:
                raise ValueError(f"config.{path}={v!r}: a learning rate must be >= 0")
        elif "dropout" in key or key.endswith("_rate"):
            if not 0 <= _num(path, v) < 1:
                raise ValueError(f"config.{path}={v!r}: a rate must lie in [0, 1)")


def check_config(config, workdir: str | None = None) -> None:
    """Everything above; raises ValueError on the first problem."""
    if "seed" in config:
        _int("seed", config.seed, 0)
    if "train" in config:
        check_train(config.train)
    if "optim" in config:
        check_optim(config.optim)
    if "mesh" in config:
        check_mesh(config.mesh)
    check_names(config)
    if workdir is not None and os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir}: exists and is a file, not a directory")
