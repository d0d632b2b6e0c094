"""What the trainer, the evaluators and the methods share about a run, without the trainer.

Not tied to a paper. Methods must not import :mod:`jaxrec.train` (the trainer imports them
through the contract, never the other way round), yet some need a piece of run arithmetic or
another run's output:

* :func:`schedule` — the step counts of a run (PCRec's learning-rate schedule is defined over
  the run's length);
* :func:`eval_batches` — fixed-shape evaluation batches (every evaluator and GazeReward's
  accuracy pass);
* :func:`latest_saved_state` — the state saved by another run's latest finished checkpoint
  (SMORL's pretrained item table), read from the run-directory layout that
  :class:`jaxrec.train.checkpoint.Checkpointer` writes: ``<workdir>/checkpoints/<step>/state``,
  finished when the step directory holds orbax's ``commit_success.txt``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import numpy as np

# orbax's completion marker, written into a step directory as its last file.
COMMIT_FILE = "commit_success.txt"


def schedule(config, task) -> dict:
    """Step counts of a run: ``num_steps`` (``train.num_steps`` or ``num_epochs`` passes),
    ``eval_every`` (``train.eval_every_epochs`` epochs when set, else ``train.eval_every``
    steps; 0 = only at the end), ``log_every`` and ``checkpoint_every`` (0 = at every
    evaluation)."""
    tc = config.train
    spe = task.steps_per_epoch
    steps = int(tc.get("num_steps", 0) or 0)
    if steps <= 0:
        steps = int(math.ceil(float(tc.num_epochs) * spe))
    every_epochs = float(tc.get("eval_every_epochs", 0) or 0)
    eval_every = (max(int(round(every_epochs * spe)), 1) if every_epochs > 0
                  else int(tc.get("eval_every", 0) or steps))
    return {"num_steps": steps, "steps_per_epoch": spe, "eval_every": eval_every,
            "log_every": max(1, int(tc.get("log_every", 100))),
            "checkpoint_every": int(tc.get("checkpoint_every", 0) or eval_every)}


def eval_batches(arrays: dict, batch_size: int):
    """Yields (batch dict of [b, ...] arrays, number of real rows) over ``[Q, ...]`` arrays,
    the last batch padded to ``batch_size`` by repeating row 0, so a jitted predict
    compiles once."""
    n = len(next(iter(arrays.values())))
    for a in range(0, n, batch_size):
        b = min(n, a + batch_size)
        batch = {k: v[a:b] for k, v in arrays.items()}
        if b - a < batch_size:
            fill = batch_size - (b - a)
            batch = {k: np.concatenate([v, np.repeat(v[:1], fill, axis=0)])
                     for k, v in batch.items()}
        yield batch, b - a


def checkpoints_dir(workdir: str) -> str:
    """``<workdir>/checkpoints`` (absolute)."""
    return os.path.abspath(os.path.join(workdir, "checkpoints"))


def finished_steps(workdir: str) -> list[int]:
    """Steps of ``workdir`` whose checkpoint is complete (has :data:`COMMIT_FILE`), sorted."""
    d = checkpoints_dir(workdir)
    if not os.path.isdir(d):
        return []
    return sorted(int(n) for n in os.listdir(d)
                  if n.isdigit() and os.path.isfile(os.path.join(d, n, COMMIT_FILE)))


def latest_saved_state(workdir: str, where: str) -> tuple[int, Any]:
    """(step, state tree) of the latest finished checkpoint of another run, as plain nested
    dicts of numpy arrays (no template needed).

    Args:
      workdir: the other run's directory.
      where: the config field that named it, for error messages.
    Raises:
      ValueError: no ``checkpoints/`` directory, or no finished checkpoint in it.
    """
    import orbax.checkpoint as ocp

    d = checkpoints_dir(workdir)
    if not os.path.isdir(d):
        raise ValueError(f"{where}: no checkpoints/ directory in {workdir}")
    steps = finished_steps(workdir)
    if not steps:
        raise ValueError(f"{where}: {d} holds no complete checkpoint")
    step: Optional[int] = steps[-1]
    return step, ocp.StandardCheckpointer().restore(os.path.join(d, str(step), "state"))
