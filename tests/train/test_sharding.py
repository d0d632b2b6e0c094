"""Scale-out (jaxrec.train.sharding) on 8 simulated CPU devices.

The checks run in one subprocess (tests/train/sharding_program.py), because the device
count must be forced before JAX starts; this module asserts on the numbers it reports:

- SASRec-SQN on one device, data parallel (8 x 1) and data x model (2 x 4), and
  supervised SASRec on one device and model sharded (1 x 8): the same losses and
  validation/test metrics, and the step traced (compiled) once;
- bf16 compute: every matmul of the lowered step carries the bf16 x bf16 -> f32
  algorithm (XLA:CPU ignores the algorithm, so CPU numbers cannot show it);
- a checkpoint written on the (8, 1) mesh restores onto (2, 4) and (1, 1), bit-exact,
  laid out on the new mesh;
- the compiled step's per-device argument memory shrinks by 7/8 of the item tables'
  bytes, and the item table alone is 1/8 per device;
- sharded target ranks and top-k equal the unsharded functions under every tie rule,
  with NaN scores, out-of-range targets, history exclusion and padding (N = 83); an
  evaluator's ``eval_consts`` output is split along its item axis.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.train.helpers import ROOT


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    work = tmp_path_factory.mktemp("sharding")
    out = os.path.join(str(work), "report.json")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "tests.train.sharding_program", out,
                           str(work)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with open(out) as f:
        return json.load(f)


def _metrics(d):
    return {k: v for k, v in d.items() if v is not None and not k.endswith("/count")}


@pytest.mark.parametrize("name,ref,others", [
    ("sqn.py", "1x1", ["8x1", "2x4"]),
    ("supervised.py", "1x1", ["1x8"]),
])
def test_same_losses_and_metrics_as_one_device(report, name, ref, others):
    assert report["devices"] == 8
    base = report["runs"][f"{name}:{ref}"]
    assert len(base["losses"]) == 4 and base["losses"][-1] < base["losses"][0]
    for mesh in others:
        run = report["runs"][f"{name}:{mesh}"]
        np.testing.assert_allclose(run["losses"], base["losses"], rtol=2e-5, err_msg=mesh)
        for split in ("validation", "test"):
            want, got = _metrics(base[split]), _metrics(run[split])
            assert sorted(want) == sorted(got) and len(want) > 10
            for k in want:
                assert got[k] == pytest.approx(want[k], abs=1e-6), (mesh, split, k)
            # some metric is not zero, so the comparison can fail
            assert max(abs(v) for v in want.values()) > 0.05
        assert run["traces"] == 1, f"{mesh}: the step was traced {run['traces']} times"
    assert base["traces"] == 1


def test_bf16_compute_puts_every_matmul_in_bf16(report):
    f32, bf16 = report["bf16"]["float32"], report["bf16"]["bfloat16"]
    assert f32["dots"] == bf16["dots"] > 10       # SQN's forward and backward matmuls
    assert f32["bf16_dots"] == 0
    assert bf16["bf16_dots"] == bf16["dots"]


@pytest.mark.parametrize("mesh,devices,shard", [("2x4", 8, [2, 81, 16]),
                                               ("1x1", 1, [2, 81, 64])])
def test_checkpoint_from_8x1_restores_on_another_mesh(report, mesh, devices, shard):
    r = report["restore"][mesh]
    assert r["step"] == 4 and r["meta_step"] == 4
    assert r["same_leaves"] and r["max_abs_diff"] == 0.0
    assert r["saved_embedding_devices"] == 8       # written replicated over 8 devices
    assert r["embedding_devices"] == devices
    assert r["embedding_shard_shape"] == shard     # the embedding width split over model=4


def test_item_tables_take_one_eighth_per_device(report):
    m = report["memory"]
    # The item table alone: 81 x 64 floats, 1/8 of it per device.
    assert m["table_per_device"] == m["table_bytes"] // 8
    # The whole step: per-device arguments shrink by 7/8 of the sharded leaves' bytes
    # (the table, the head and their two Adam moments: 9 leaves), the rest replicated.
    assert m["sharded_leaves"] == 9
    saved = m["1"]["argument"] - m["8"]["argument"]
    assert saved == pytest.approx(m["sharded_bytes"] * 7 / 8, rel=0.01)


def test_sharded_ranks_top_k_and_item_tower(report):
    checks = report["ranking_checks"]
    assert len(checks) == 10
    assert all(checks.values()), [k for k, v in checks.items() if not v]
