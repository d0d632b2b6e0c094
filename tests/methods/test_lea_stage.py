"""LEA's stage boundaries (rl.md §8): the frozen decoder is an argument of every stage's jitted
step (the lowered program does not grow with the decoder's size); the environment stage writes
an artefact directory atomically that the data kind only reads (checked against its replay
data); data code never imports a method module."""

import ast
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.backbones import decoder_lm
from jaxrec.data import lea as lea_data
from jaxrec.data import tasks
from jaxrec.methods import lea
from jaxrec.peft import freeze
from tests.train.helpers import ROOT, get_config

TEXTS = ["toy story | genres: animation, comedy", "heat | genres: crime, thriller", "jumanji | genres: adventure"]


def _lowered(width: int, stage: str):
    """(lowered step of ``stage`` for an LE over a decoder of ``width``, frozen bytes)."""
    section = decoder_lm.default_section(hidden_size=width, intermediate_size=2 * width, num_layers=1,
                                         num_heads=2, pretrain_steps=0, max_len=16)
    dec = decoder_lm.pretrain(TEXTS, section)
    s = lea.default_section()
    model = lea.build_model(dec, 3, s)
    params = lea.init_params(model, dec, 0)
    train, frozen = freeze.split_trainable(params, freeze.param_labels(params, lea.TRAINABLE[stage]))
    loss = {"items": lea._item_loss(model), "state": lea._state_loss(model, 1.0),
            "reward": lea._reward_loss(model)}[stage]
    ids, mask = np.ones((2, 5), np.int32), np.ones((2, 5), np.int32)
    batch = {"items": (ids, mask, mask), "state": (ids, mask, np.zeros(2, np.int32)),
             "reward": (ids, mask, ids, mask)}[stage]
    tx = optax.adam(1e-3)
    step = lea.stage_step(loss, tx)
    low = step.lower(train, tx.init(train), frozen, batch, jax.random.key(0))
    return low, sum(np.asarray(x).nbytes for x in jax.tree.leaves(frozen))


def _constant_bytes(text: str) -> int:
    """Bytes of the hex-encoded dense constants of a StableHLO module's text."""
    return sum(len(m) // 2 for m in re.findall(r'dense<"0x([0-9A-Fa-f]+)">', text))


@pytest.mark.parametrize("stage", lea.STAGES)
def test_stage_step_does_not_hold_the_frozen_weights(stage):
    """A closed-over decoder would be embedded as constants (~its bytes, twice in hex); as an
    argument the program is the same size for a 16-wide and a 64-wide decoder."""
    small, small_bytes = _lowered(16, stage)
    big, big_bytes = _lowered(64, stage)
    assert big_bytes > 10 * small_bytes / 2 and big_bytes > 100_000
    t_small, t_big = small.as_text(), big.as_text()
    assert _constant_bytes(t_small) < 1024 and _constant_bytes(t_big) < 1024
    assert abs(len(t_big) - len(t_small)) < 0.02 * len(t_small), (len(t_small), len(t_big))
    assert len(t_big) < big_bytes              # closed over, the hex alone would be 2 x big_bytes


def test_data_code_never_imports_methods():
    """No module under jaxrec/data imports jaxrec.methods, and importing them all loads none."""
    data_dir = pathlib.Path(ROOT) / "jaxrec" / "data"
    for path in data_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("jaxrec.methods") for n in names), (path, names)
    mods = sorted("jaxrec.data." + ".".join(p.relative_to(data_dir).with_suffix("").parts)
                  for p in data_dir.rglob("*.py") if p.name != "__init__.py")
    code = ("import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods) +
            "print(sorted(m for m in sys.modules if m.startswith('jaxrec.methods')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _config(cache):
    c = get_config("lea.py", "smoke")
    c.lea.cache_dir = c.decoder.cache_dir = str(cache)
    return c


def _listing(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_stage_writes_an_artefact_the_data_kind_reads(tiny, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    config = _config(cache)
    # A build that fails after the environment is trained leaves no artefact directory behind.
    def boom(*a, **k):
        raise RuntimeError("augmentation failed")
    with monkeypatch.context() as m:
        m.setattr(lea, "augment", boom)
        with pytest.raises(RuntimeError, match="augmentation failed"):
            tasks.build_task(config, tiny)
    names = os.listdir(cache)
    assert not [n for n in names if n.startswith(("aug-", ".incomplete"))], names
    env_dirs = [n for n in names if n.startswith("env-")]
    assert len(env_dirs) == 1
    # The environment cache keeps only the trained leaves (no decoder weights).
    trained = np.load(cache / env_dirs[0] / "state.npz")
    assert not any(k.startswith("decoder/") and "lora" not in k for k in trained.files), trained.files

    task = tasks.build_task(config, tiny)                 # reuses the environment
    path = task.extras["lea"]["source"]
    assert os.path.basename(path).startswith("aug-")
    assert sorted(os.listdir(path)) == [lea_data.ARRAYS_FILE, lea_data.INFO_FILE]
    info = json.load(open(os.path.join(path, lea_data.INFO_FILE)))
    assert info["fingerprint"] == lea_data.fingerprint(tasks.replay_task(tiny, config))
    assert info["environment"].endswith(env_dirs[0])
    with np.load(os.path.join(path, lea_data.ARRAYS_FILE)) as z:
        np.testing.assert_array_equal(z["aug_actions"], task.train["aug_actions"])
        q = task.test.size                                  # the smoke config keeps the first queries
        np.testing.assert_array_equal(z["test_le_state"][:q], task.test.arrays["le_state"])
    files = _listing(cache)
    # Built once: the stage finds its artefact without even loading the decoder.
    with monkeypatch.context() as m:
        m.setattr(lea.frozen_decoder, "load", boom)
        reused = tasks.build_task(config, tiny)
    assert reused.extras["lea"]["source"] == path and _listing(cache) == files

    # The data kind with config.lea.artefact reads that directory and runs no stage.
    c2 = _config(cache)
    c2.lea.artefact, c2.lea.build = path, "no.such.stage"
    again = tasks.build_task(c2, tiny)
    np.testing.assert_array_equal(again.train["le_reward"], task.train["le_reward"])
    assert _listing(cache) == files
    # ... and refuses an artefact of other replay data, or a directory that is not one.
    c3 = _config(cache)
    c3.lea.artefact = path
    c3.data.state_len = int(c3.data.state_len) + 1
    with pytest.raises(ValueError, match=f"{re.escape(path)}/info.json: .*other replay data"):
        tasks.build_task(c3, tiny)
    c2.lea.artefact = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="info.json"):
        tasks.build_task(c2, tiny)
    c2.lea.artefact = ""
    with pytest.raises(ValueError, match="config.lea.build='no.such.stage'"):
        tasks.build_task(c2, tiny)
