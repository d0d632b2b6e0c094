"""Checkpointing with orbax: a killed run resumes where it stopped.

What is saved at a step: the method state's arrays (parameters, optimizer state(s), step
counters and any RNG keys it holds), turned into a plain nested dict with
``flax.serialization.to_state_dict`` so that static fields (apply functions, optimizers,
hyperparameters) never enter the file; and a JSON document with the trainer's bookkeeping
(data position, best validation score and step, test metrics at that step).

orbax writes each step into a temporary directory and renames it when complete, so a kill
mid-save leaves no step that looks complete; ``latest_step`` only sees finished ones.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from flax import serialization


class Checkpointer:
    """Saves and restores (state, meta) under ``<workdir>/checkpoints``.

    Args:
      workdir: run directory.
      max_to_keep: how many recent steps to keep.
    """

    def __init__(self, workdir: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(serialization.to_state_dict(state)),
            meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, template: Any) -> tuple[Any, dict]:
        """Restores into the structure of ``template`` (a freshly initialised state)."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                              serialization.to_state_dict(template))
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return serialization.from_state_dict(template, out["state"]), dict(out["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
