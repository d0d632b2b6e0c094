"""Resuming all the way (a kill between two checkpoints), refusing a resume whose
hyperparameters changed, damaged checkpoints, and config validation before anything runs."""

import json
import os

import pytest

from jaxrec import validate
from jaxrec.train import loop

from tests.train.helpers import get_config, run_main

RUN = ["--config=configs/supervised.py:encoder=gru4rec,smoke", "--config.train.num_steps=8",
       "--config.train.eval_every=4", "--config.train.checkpoint_every=4",
       "--config.train.log_every=1"]


def _records(path):
    """metrics.jsonl without wall-clock fields."""
    out = []
    for line in open(path):
        r = json.loads(line)
        for k in ("time", "elapsed_s", "steps_per_sec"):
            r.pop(k, None)
        out.append(r)
    return out


def _error_line(out):
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    return errors[0]


def test_kill_between_checkpoints_replays_to_the_same_numbers(tmp_path):
    full = run_main(RUN, tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    # Killed abruptly after step 6: the last checkpoint is step 4; steps 5-6 are logged.
    killed = tmp_path / "killed"
    env_run = run_main(RUN, killed, env={"JAXREC_DEBUG_KILL_AFTER_STEP": "6"})
    assert env_run.returncode == 137, env_run.stderr[-3000:]
    assert not (killed / "results.json").exists()
    assert max(r["step"] for r in _records(killed / "metrics.jsonl")) == 6
    resumed = run_main(RUN, killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from checkpoint at step 4" in resumed.stdout
    a = json.load(open(tmp_path / "full" / "results.json"))
    b = json.load(open(killed / "results.json"))
    assert a == b
    ra, rb = _records(tmp_path / "full" / "metrics.jsonl"), _records(killed / "metrics.jsonl")
    keys = [(r["step"], r["split"]) for r in rb]
    assert len(keys) == len(set(keys)), "duplicate lines after the replay"
    assert ra == rb
    rt = json.load(open(killed / "runtime.json"))
    assert rt["platform"] == "cpu" and rt["steps_timed"] == 3 and rt["mean_step_s"] > 0


def test_resume_with_changed_hyperparameters_is_refused_then_allowed(tmp_path):
    args = RUN[:1] + ["--config.train.num_steps=2"]
    assert run_main(args, tmp_path).returncode == 0
    original = open(tmp_path / "config.json").read()
    line = _error_line(run_main(args + ["--config.optim.lr=0.5"], tmp_path))
    assert "optim.lr" in line and "0.5" in line and "allow_config_change" in line
    assert str(tmp_path) in line
    # run length may change; the original config.json stays
    more = run_main(RUN[:1] + ["--config.train.num_steps=3"], tmp_path)
    assert more.returncode == 0, more.stderr[-2000:]
    forced = run_main(RUN[:1] + ["--config.train.num_steps=4", "--config.optim.lr=0.5",
                                 "--config.train.allow_config_change=True"], tmp_path)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "optim.lr" in forced.stderr
    assert open(tmp_path / "config.json").read() == original
    assert json.load(open(tmp_path / "config.resumed-3.json"))["optim"]["lr"] == 0.5


def test_damaged_checkpoint_is_named_with_what_to_do(tmp_path):
    args = RUN[:1] + ["--config.train.num_steps=2"]
    assert run_main(args, tmp_path).returncode == 0
    step_dir = tmp_path / "checkpoints" / "2"
    damaged = 0
    for root, _, files in os.walk(step_dir / "state"):
        for f in files:
            p = os.path.join(root, f)
            if os.path.getsize(p) > 64 and not f.endswith(".json"):
                with open(p, "r+b") as fh:
                    fh.truncate(16)
                damaged += 1
    assert damaged
    line = _error_line(run_main(RUN[:1] + ["--config.train.num_steps=3"], tmp_path))
    assert str(step_dir) in line and "Move that step directory away" in line


def _set(section, field, value):
    def apply(c):
        c[section][field] = value
    return apply


@pytest.mark.parametrize("change,fragment", [
    (_set("train", "batch_size", 0), "config.train.batch_size=0"),
    (lambda c: (_set("train", "num_steps", 0)(c), _set("train", "num_epochs", -1)(c)),
     "config.train.num_epochs=-1"),
    (_set("train", "num_steps", -3), "config.train.num_steps=-3"),
    (_set("train", "log_every", 0), "config.train.log_every=0"),
    (_set("optim", "lr", -0.001), "config.optim.lr=-0.001"),
    (_set("optim", "b2", 1.0), "config.optim.b2=1.0"),
    (_set("train", "prng_impl", "mt19937"), "prng_impl"),
    (_set("model", "dropout", 1.5), "config.model.dropout=1.5"),
    (_set("mesh", "data", 0), "config.mesh.data=0"),
])
def test_bad_values_stop_before_anything_runs(change, fragment):
    c = get_config("sqn.py", "smoke")
    validate.check_config(c)            # the shipped config passes
    change(c)
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        validate.check_config(c)


def test_bad_value_through_main_and_workdir_that_is_a_file(tmp_path):
    data = tmp_path / "data"
    line = _error_line(run_main(RUN[:1] + ["--config.train.batch_size=0",
                                           f"--config.dataset.data_dir={data}"], tmp_path / "r"))
    assert "config.train.batch_size=0" in line
    assert not data.exists(), "a dataset was prepared before the config was checked"
    f = tmp_path / "afile"
    f.write_text("x")
    line = _error_line(run_main(RUN[:1], f))
    assert "exists and is a file" in line


def test_config_changes_lists_fields():
    a = {"train": {"num_steps": 2, "batch_size": 8}, "optim": {"lr": 0.1}}
    b = {"train": {"num_steps": 9, "batch_size": 8}, "optim": {"lr": 0.2}, "x": 1}
    assert loop.config_changes(a, b) == ["optim.lr: 0.1 -> 0.2", "x: '<absent>' -> 1"]


def test_deterministic_sets_xla_gpu_flags_before_the_backend_starts(tmp_path):
    import subprocess
    import sys
    code = ("import os, ml_collections, jax\n"
            "from jaxrec.train import sharding\n"
            "c = ml_collections.ConfigDict({'train': {'deterministic': True}})\n"
            "assert sharding.set_determinism(c)\n"
            "jax.numpy.ones(1).block_until_ready()\n"
            "print(os.environ['XLA_FLAGS'])\n"
            "assert not sharding.set_determinism(ml_collections.ConfigDict({'train': {}}))\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--xla_gpu_deterministic_ops=true" in out.stdout


def test_several_processes_with_the_default_mesh_use_every_device_for_data(monkeypatch):
    import jax
    import ml_collections
    from jaxrec.train import sharding
    c = ml_collections.ConfigDict({"mesh": {"data": 1, "model": 1}})
    assert sharding.mesh_shape(c, num_devices=8) == (1, 1)      # one process: unsharded
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert sharding.mesh_shape(c, num_devices=8) == (8, 1)
    c.mesh.model = 2
    with pytest.raises(ValueError, match="config.mesh.data=1 x config.mesh.model=2"):
        sharding.mesh_shape(c, num_devices=8)
