"""Checkpointing with orbax: a killed run resumes where it stopped.

What is saved at a step: the method state's arrays (parameters, optimizer state(s), step
counters and any RNG keys it holds), turned into a plain nested dict with
``flax.serialization.to_state_dict`` so that static fields (apply functions, optimizers,
hyperparameters) never enter the file; and a JSON document with the trainer's bookkeeping
(data position, best validation score and step, test metrics at that step).

orbax writes each step into a temporary directory and renames it when complete, so a kill
mid-save leaves no step that looks complete; ``latest_step`` only sees finished ones. A
step directory without orbax's completion file ``commit_success.txt`` (written last, before
the rename: such a directory was copied or written half-way by other means) is moved aside
when a Checkpointer opens the directory (:func:`set_aside_incomplete`).

Restoring into a state of another shape (the workdir holds a run of a different config)
raises :class:`CheckpointMismatchError`, naming the checkpoint, the first leaf that differs
and what to do, before orbax reads any array.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import serialization

from jaxrec.runs import COMMIT_FILE  # orbax's completion marker (the run-directory layout)

log = logging.getLogger(__name__)

_MISSING = object()


class CheckpointMismatchError(ValueError):
    """The saved state does not fit the state the current config builds.

    Attributes:
      directory: the step's checkpoint directory.
      step: the step.
      leaf: dotted path of the first mismatching leaf (e.g. ``params.encoder.kernel``).
    """

    def __init__(self, directory: str, step: int, leaf: str, problem: str):
        self.directory, self.step, self.leaf = directory, step, leaf
        super().__init__(
            f"checkpoint {directory} (step {step}) does not match the state this config "
            f"builds: {problem}. The workdir holds a run with a different config; use a new "
            "--workdir, or rerun with the original config.")


class CorruptCheckpointError(ValueError):
    """A step directory exists and looks finished, but its files cannot be read."""

    def __init__(self, directory: str, step: int, cause: BaseException):
        self.directory, self.step = directory, step
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(
            f"checkpoint {directory} (step {step}) cannot be read ({type(cause).__name__}: "
            f"{first[:300]}). It is damaged or was not written by jaxrec. Move that step "
            f"directory away to resume from the previous checkpoint (if any), or use a new "
            f"--workdir.")


def flatten_dotted(tree, prefix: str = "") -> dict:
    """Nested dicts -> {dotted path: leaf}, in insertion order."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flatten_dotted(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _shape(x) -> Optional[tuple]:
    """Shape of an array, scalar or orbax value metadata, as stored (a typed PRNG key is
    stored as its key data, e.g. [..., 2] uint32); None for a None leaf."""
    if x is None:
        return None
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        return tuple(jax.random.key_data(x).shape)
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else np.shape(x)


def first_mismatch(saved: dict, expected: dict) -> Optional[tuple[str, str, int]]:
    """Compares a saved tree with the expected one, leaf by leaf.

    Args:
      saved: nested dicts of orbax metadata (anything with ``.shape``) or values.
      expected: nested dicts of arrays or scalars (``to_state_dict`` of the template).
    Returns:
      None if every leaf path and shape agree, else (leaf path, what differs, number of
      mismatching leaves). Expected leaves come first, in the template's order.
    """
    s, e = flatten_dotted(saved), flatten_dotted(expected)
    problems = []
    for path, want in e.items():
        got = s.get(path, _MISSING)
        if got is _MISSING:
            problems.append((path, f"leaf {path!r} (shape {_shape(want)}) is expected but "
                                   "not in the checkpoint"))
        elif _shape(got) != _shape(want):
            problems.append((path, f"leaf {path!r} has shape {_shape(got)} in the "
                                   f"checkpoint, {_shape(want)} expected"))
    for path, got in s.items():
        if path not in e:
            problems.append((path, f"leaf {path!r} (shape {_shape(got)}) is in the "
                                   "checkpoint but not expected"))
    if not problems:
        return None
    path, what = problems[0]
    if len(problems) > 1:
        what += f" (and {len(problems) - 1} more mismatching leaves)"
    return path, what, len(problems)


def set_aside_incomplete(directory: str) -> list[str]:
    """Moves step directories without :data:`COMMIT_FILE` out of ``directory``.

    orbax lists any directory named by a number as a finished step: it would resume from
    such a half-written one and, worse, skip every later save with a smaller step number.
    They go to ``<directory>_incomplete/<step>-<unix time>`` (kept for inspection), with a
    warning. Returns the new paths.
    """
    moved = []
    if not os.path.isdir(directory):
        return moved
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.isdigit() and os.path.isdir(path) and \
                not os.path.exists(os.path.join(path, COMMIT_FILE)):
            dest = os.path.join(f"{directory}_incomplete", f"{name}-{int(time.time())}")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.move(path, dest)
            log.warning("checkpoint %s is incomplete (no %s); moved it to %s", path,
                        COMMIT_FILE, dest)
            moved.append(dest)
    return moved


class Checkpointer:
    """Saves and restores (state, meta) under ``<workdir>/checkpoints``.

    Args:
      workdir: run directory.
      max_to_keep: how many recent steps to keep.
    """

    def __init__(self, workdir: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        if jax.process_index() == 0:
            set_aside_incomplete(self.directory)
        if jax.process_count() > 1:
            # Every process lists the steps only after process 0 has moved the incomplete
            # ones aside; otherwise one host could resume from a step another host skips.
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("jaxrec checkpoint listing")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def step_dir(self, step: int) -> str:
        """The directory of ``step`` (orbax's default step naming: the bare number)."""
        return os.path.join(self.directory, str(step))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(serialization.to_state_dict(state)),
            meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, template: Any) -> tuple[Any, dict]:
        """Restores into the structure of ``template`` (a freshly initialised state).

        Raises:
          CheckpointMismatchError: the saved tree's leaf paths or shapes differ from the
            template's (naming the first such leaf, saved vs expected shape).
        """
        expected = serialization.to_state_dict(template)
        where = self.step_dir(step)
        try:
            saved = ocp.StandardCheckpointHandler().metadata(epath.Path(where) / "state")
            saved = getattr(saved, "tree", saved)
        except Exception as e:  # unreadable metadata: let orbax's restore report it
            log.warning("could not read the metadata of %s: %s", where, e)
            saved = None
        if isinstance(saved, dict):
            found = first_mismatch(saved, expected)
            if found is not None:
                raise CheckpointMismatchError(where, step, found[0], found[1])
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, expected)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        except Exception as e:      # truncated / corrupted / foreign files
            raise CorruptCheckpointError(where, step, e) from e
        return serialization.from_state_dict(template, out["state"]), dict(out["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
