"""The training core: SQN's double-Q target, the trainer's resume / non-finite guard,
every config's smoke run, and SASRec vs popularity on real MovieLens-100K."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import experiment
from jaxrec.data.tasks import build_task
from jaxrec.methods import double_q, sqn
from jaxrec.train import loop
from jaxrec.train.data import BatchSource
from tests.train import raw_writers

from tests.train.helpers import ROOT, get_config, run_main


# ------------------------------------------------------------------ SQN
def test_double_q_target_hand_example():
    # Row 0: main picks action 2 on s' (argmax of q_sel), the target net values it 5.0.
    # Row 1: done -> no bootstrap. Row 2: main picks action 0, target value -1.0.
    q_tgt = jnp.array([[1.0, 9.0, 5.0], [7.0, 7.0, 7.0], [-1.0, 3.0, 0.0]])
    q_sel = jnp.array([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0], [4.0, 1.0, 2.0]])
    r = jnp.array([0.2, 1.0, 0.2])
    done = jnp.array([False, True, False])
    y = double_q.double_q_target(q_tgt, q_sel, r, done, 0.5)
    np.testing.assert_allclose(y, [0.2 + 0.5 * 5.0, 1.0, 0.2 + 0.5 * -1.0], rtol=1e-6)
    # Not the max of the target network (that would be 9.0 in row 0): double Q, not Q.
    assert float(y[0]) != pytest.approx(0.2 + 0.5 * 9.0)


def test_sqn_rewards_and_both_networks_update(tiny):
    config = get_config("sqn.py", "smoke")
    task = build_task(config, tiny)
    src = BatchSource(task.train, 8, seed=0)
    state = sqn.init(jax.random.key(0), task, config)
    np.testing.assert_allclose(double_q.rewards(jnp.array([1, 0]), state.hp.r_click,
                                                state.hp.r_buy), [1.0, 0.2])
    p1, p2 = (jax.tree.map(lambda x: x[i], state.params) for i in (0, 1))
    step = jax.jit(sqn.train_step)
    losses = []
    for i in range(30):
        state, m = step(state, src[i], jax.random.key(i), None)
        losses.append(float(m["loss"]))
    assert int(state.updates.sum()) == 30
    assert int(state.updates[0]) > 0 and int(state.updates[1]) > 0
    moved = lambda a, b: max(float(jnp.abs(x - y).max()) for x, y in
                             zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert moved(p1, jax.tree.map(lambda x: x[0], state.params)) > 1e-4
    assert moved(p2, jax.tree.map(lambda x: x[1], state.params)) > 1e-4
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


# ------------------------------------------------------------------ smoke runs
SYNTHETIC_SMOKE = ([("supervised.py", f"encoder={e},smoke") for e in
                    ("gru4rec", "caser", "nextitnet", "sasrec")]
                   + [("sqn.py", f"encoder={e},smoke") for e in
                      ("gru4rec", "caser", "nextitnet", "sasrec")]
                   + [("popularity.py", "smoke"),
                      ("supervised.py", "encoder=sasrec,protocol=loo,smoke")])


@pytest.mark.parametrize("cfg,arg", SYNTHETIC_SMOKE)
def test_every_config_runs_two_smoke_steps(cfg, arg, tmp_path):
    config = get_config(cfg, arg)
    res = experiment.run(config, str(tmp_path), progress=False)
    assert res["steps_done"] == 2
    lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    train = [l for l in lines if l["split"] == "train"]
    assert [l["step"] for l in train] == [1, 2] and all(np.isfinite(l["loss"]) for l in train)
    assert res["test"] and os.path.exists(tmp_path / "results.json")


@pytest.fixture(scope="module")
def real_raw_dirs(tmp_path_factory, tiny):
    """The tiny synthetic log written out in RetailRocket, YooChoose and ML-1M formats."""
    from jaxrec.data import synthetic
    log = synthetic.generate(synthetic.SyntheticConfig.small(num_sessions=300, num_items=80))
    base = tmp_path_factory.mktemp("raw")
    raw_writers.write_retailrocket(log, str(base / "retailrocket"))
    raw_writers.write_yoochoose(log, str(base / "yoochoose"))
    raw_writers.write_movielens_1m(log, str(base / "movielens_1m"))
    return base


@pytest.mark.parametrize("cfg", ["supervised.py", "sqn.py"])
@pytest.mark.parametrize("dataset", ["retailrocket", "yoochoose", "movielens_1m"])
def test_real_dataset_configs_smoke(cfg, dataset, real_raw_dirs, tmp_path):
    config = get_config(cfg, f"dataset={dataset},encoder=gru4rec,smoke,"
                              f"raw_dir={real_raw_dirs / dataset}")
    res = experiment.run(config, str(tmp_path), progress=False)
    assert res["steps_done"] == 2 and res["stats"]["dataset"] == dataset
    assert res["stats"]["interactions"] > 1000


def test_unknown_config_argument_is_named():
    with pytest.raises(ValueError, match="unknown config argument 'encodr'"):
        get_config("sqn.py", "encodr=sasrec")


# ------------------------------------------------------------------ trainer
def _resume_config():
    c = get_config("supervised.py", "encoder=gru4rec,smoke")
    c.train.num_steps = 8
    c.train.eval_every = 4
    c.train.checkpoint_every = 2
    return c


def test_resume_after_interruption_equals_uninterrupted(tmp_path, tiny):
    full = experiment.run(_resume_config(), str(tmp_path / "full"), progress=False)
    part = experiment.run(_resume_config(), str(tmp_path / "killed"), progress=False,
                          stop_after=6)
    assert part["steps_done"] == 6 and not os.path.exists(tmp_path / "killed" / "results.json")
    resumed = experiment.run(_resume_config(), str(tmp_path / "killed"), progress=False)
    assert resumed["steps_done"] == 8
    for a, b in zip(jax.tree.leaves(full["state"].params),
                    jax.tree.leaves(resumed["state"].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert full["test"] == resumed["test"] and full["best_step"] == resumed["best_step"]
    assert full["validation"] == resumed["validation"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    c = get_config("popularity.py", "smoke")
    c.method = "tests.train.nan_method"
    c.train.num_steps = 10
    c.train.eval_every = 5
    c.train.log_every = 2
    c.train.checkpoint_every = 2
    with pytest.raises(loop.NonFiniteLossError, match=r"step 4 .*Last good checkpoint: step 2"):
        experiment.run(c, str(tmp_path), progress=False)
    from jaxrec.train.checkpoint import Checkpointer
    assert Checkpointer(str(tmp_path)).latest_step() == 2


# ------------------------------------------------------------------ real data
@pytest.mark.parametrize("unused", [None])
def test_sasrec_beats_popularity_on_movielens_100k(unused, tmp_path):
    """Real MovieLens-100K (shipped in the recbole package), leave-one-out."""
    results = {}
    for name, arg in (("popularity.py", "dataset=ml100k_recbole,protocol=loo"),
                      ("supervised.py", "dataset=ml100k_recbole,encoder=sasrec,protocol=loo")):
        c = get_config(name, arg)
        if name == "supervised.py":
            c.train.batch_size = 128
            c.train.num_epochs = 4
            c.train.eval_every = 0
        results[name] = experiment.run(c, str(tmp_path / name), progress=False)
    assert results["popularity.py"]["stats"]["sessions"] == 943
    assert results["popularity.py"]["stats"]["items"] == 1682
    pop = results["popularity.py"]["test"]["all/ndcg@10"]
    sas = results["supervised.py"]["test"]["all/ndcg@10"]
    assert pop > 0.005          # popularity is a real baseline, not noise
    assert sas > pop * 1.1, (sas, pop)


def test_config_trainable_patterns_freeze_the_rest(tiny):
    """config.optim.trainable turns into optimizer masks: only the head moves."""
    from jaxrec.methods import supervised
    config = get_config("supervised.py", "encoder=gru4rec,smoke")
    config.optim.trainable = ("head_s/",)
    task = build_task(config, tiny)
    src = BatchSource(task.train, 8, seed=0)
    state = supervised.init(jax.random.key(0), task, config)
    before = state.params
    step = jax.jit(supervised.train_step)
    for i in range(3):
        state, _ = step(state, src[i], jax.random.key(i), None)
    flat_b = jax.tree_util.tree_flatten_with_path(before)[0]
    flat_a = jax.tree.leaves(state.params)
    for (path, b), a in zip(flat_b, flat_a):
        name = jax.tree_util.keystr(path)
        if "head_s" in name:
            assert float(jnp.abs(a - b).max()) > 0, name
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def test_main_entry_point_with_overrides(tmp_path):
    """python -m jaxrec.main --config=...:args --config.x=y, as the README shows."""
    out = run_main(["--config=configs/sqn.py:encoder=gru4rec,smoke",
                    "--config.train.num_steps=3", "--config.rl.gamma=0.3"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sqn/gru4rec" in out.stdout and "NG@10" in out.stdout
    res = json.load(open(tmp_path / "results.json"))
    saved = json.load(open(tmp_path / "config.json"))
    assert res["steps_done"] == 3 and saved["rl"]["gamma"] == 0.3


def _main_error(args, tmp_path):
    """Runs jaxrec.main expecting a user error: exit 2, one 'error:' line, no traceback."""
    out = run_main(args, tmp_path / "run")
    errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    return errors[0]


def test_main_errors_are_one_line_with_status_2(tmp_path):
    line = _main_error(["--config=configs/sqn.py:encoder=bogus"], tmp_path)
    assert "configs/sqn.py" in line and "bogus" in line
    line = _main_error(["--config=configs/sqn.py:smoke", "--config.train.nope=1"], tmp_path)
    assert "train.nope" in line
    # A data error: a RetailRocket file with a malformed line, named with its line number.
    raw = tmp_path / "rr"
    raw.mkdir()
    good = open(os.path.join(ROOT, "tests/data/raw/retailrocket/events.csv")).read().splitlines()
    (raw / "events.csv").write_text("\n".join(good[:3] + ["123,not-a-visitor,view,7,"]
                                              + good[3:]) + "\n")
    line = _main_error([f"--config=configs/sqn.py:dataset=retailrocket,raw_dir={raw},smoke",
                        f"--config.dataset.data_dir={tmp_path}/data"], tmp_path)
    assert "events.csv:4" in line, line
    # A checkpoint written by another config is named, not a traceback.
    ok = ["--config=configs/sqn.py:encoder=gru4rec,smoke", "--config.train.num_steps=2"]
    assert run_main(ok, tmp_path / "run").returncode == 0
    line = _main_error(ok + ["--config.model.embed_dim=32"], tmp_path)
    assert "checkpoint" in line and f"{tmp_path}/run" in line
