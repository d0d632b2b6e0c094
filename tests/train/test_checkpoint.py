"""Tests of jaxrec.train.checkpoint on small pytrees (no trainer): a state that does not
fit the checkpoint is a CheckpointMismatchError naming the leaf, and an incomplete step
directory is never taken for the latest checkpoint nor blocks later saves."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.train.checkpoint import COMMIT_FILE, CheckpointMismatchError, Checkpointer


def _state(dim=4, extra=False):
    s = {"params": {"dense": {"kernel": jnp.arange(3 * dim, dtype=jnp.float32).reshape(3, dim),
                              "bias": jnp.ones(dim)}},
         "step": jnp.int32(7), "rng": jax.random.key(3), "count": 2}
    if extra:
        s["params"]["dense"]["scale"] = jnp.ones(dim)
    return s


def _saved(tmp_path, step=5, state=None):
    c = Checkpointer(str(tmp_path))
    c.save(step, _state() if state is None else state, {"best": 0.5})
    c.close()
    return Checkpointer(str(tmp_path))  # a fresh one, as a resumed run has


def test_restore_round_trip(tmp_path):
    c = _saved(tmp_path)
    assert c.latest_step() == 5
    state, meta = c.restore(5, _state())
    np.testing.assert_array_equal(state["params"]["dense"]["kernel"],
                                  np.arange(12).reshape(3, 4))
    assert int(state["step"]) == 7 and meta == {"best": 0.5}
    np.testing.assert_array_equal(jax.random.key_data(state["rng"]),
                                  jax.random.key_data(jax.random.key(3)))


def test_restore_into_other_shapes_names_the_leaf(tmp_path):
    c = _saved(tmp_path)
    with pytest.raises(CheckpointMismatchError) as info:
        c.restore(5, _state(dim=6))
    err = info.value
    msg = str(err)
    assert isinstance(err, ValueError)
    assert err.leaf == "params.dense.kernel" and err.step == 5
    assert err.directory == os.path.join(str(tmp_path), "checkpoints", "5")
    for frag in (err.directory, "(step 5)",
                 "leaf 'params.dense.kernel' has shape (3, 4) in the checkpoint, (3, 6) "
                 "expected", "and 1 more mismatching leaves", "new --workdir",
                 "original config"):
        assert frag in msg, (frag, msg)


def test_restore_into_other_structure_names_the_leaf(tmp_path):
    c = _saved(tmp_path)
    with pytest.raises(CheckpointMismatchError,
                       match=r"leaf 'params\.dense\.scale' \(shape \(4,\)\) is expected but "
                             r"not in the checkpoint") as info:
        c.restore(5, _state(extra=True))
    assert info.value.leaf == "params.dense.scale"
    smaller = _state()
    del smaller["params"]["dense"]["bias"]
    with pytest.raises(CheckpointMismatchError,
                       match=r"leaf 'params\.dense\.bias' \(shape \(4,\)\) is in the "
                             r"checkpoint but not expected"):
        c.restore(5, smaller)


def test_latest_step_ignores_incomplete_step_directories(tmp_path):
    c = Checkpointer(str(tmp_path))
    c.save(1, _state(), {"at": 1})
    c.save(2, _state(), {"at": 2})
    c.close()
    ckpt = os.path.join(str(tmp_path), "checkpoints")
    # Step 3: a copy of step 2 without orbax's completion file (a half-written save).
    shutil.copytree(os.path.join(ckpt, "2"), os.path.join(ckpt, "3"))
    os.remove(os.path.join(ckpt, "3", COMMIT_FILE))
    # Step 4: only the start of a state directory.
    os.makedirs(os.path.join(ckpt, "4", "state"))
    # Step 9: orbax's temporary directory of a save that was killed.
    os.makedirs(os.path.join(ckpt, "9.orbax-checkpoint-tmp-1234", "state"))
    c = Checkpointer(str(tmp_path))
    assert c.latest_step() == 2
    assert c.restore(2, _state())[1] == {"at": 2}
    # They were moved aside (kept for inspection), so later saves are not skipped: orbax
    # skips a save whose step is below the largest step directory it sees.
    aside = sorted(os.listdir(ckpt + "_incomplete"))
    assert [n.split("-")[0] for n in aside] == ["3", "4"]
    c.save(3, _state(), {"at": 3})
    c.close()
    c = Checkpointer(str(tmp_path))
    assert c.latest_step() == 3 and c.restore(3, _state())[1] == {"at": 3}
    # Nothing complete at all: no step.
    for d in os.listdir(ckpt):
        if d.isdigit():
            os.remove(os.path.join(ckpt, d, COMMIT_FILE))
    assert Checkpointer(str(tmp_path)).latest_step() is None
