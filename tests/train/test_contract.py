"""The core v2 contract: SQN's step against a hand computation, the ranking evaluator on
hand-computed queries, the bookkeeping, the task builders, resume across an epoch
boundary, and the per-method / per-dataset config values pinned to the specs."""

import dataclasses
import math
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxrec import config_util, experiment
from jaxrec.data import examples
from jaxrec.data import prepare as prep
from jaxrec.data.events import ItemInfo
from jaxrec.data.tasks import EvalSet, Task, build_task
from jaxrec.evaluators import ranking
from jaxrec.methods import common, double_q, sqn
from jaxrec.train import loop
from jaxrec.train.data import BatchSource

from tests.numerics import assert_trees_close
from tests.train.helpers import ROOT, get_config, run_main


# ------------------------------------------------------------------ SQN, one step by hand
def _sqn_loss_by_hand(q_main_s, s_main_s, q_sel_next, q_tgt_next, batch, gamma=0.5):
    """NumPy SQN loss (rl.md §4) from given network outputs, float64."""
    a, buy, done = batch["action"], batch["is_buy"] > 0, batch["is_done"]
    r = np.where(buy, 1.0, 0.2)
    a_star = q_sel_next.argmax(1)                      # the main network picks ...
    boot = q_tgt_next[np.arange(len(a)), a_star]       # ... the target network values
    y = r + gamma * np.where(done, 0.0, boot)
    td = 0.5 * (y - q_main_s[np.arange(len(a)), a]) ** 2
    logp = s_main_s - s_main_s.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -logp[np.arange(len(a)), a]
    return td.mean() + ce.mean()


def test_sqn_step_equals_hand_computation_and_leaves_target_untouched(tiny):
    config = get_config("sqn.py", "encoder=gru4rec,smoke")      # GRU4Rec: no dropout
    task = build_task(config, tiny)
    state = sqn.init(jax.random.key(3), task, config)
    batch = BatchSource(task.train, 8, seed=0)[0]
    batch["is_done"][:2] = True                       # exercise the done mask
    batch["is_buy"][2:4] = 1
    rng = jax.random.key(11)
    main_i = 0 if bool(jax.random.bernoulli(jax.random.split(rng)[0])) else 1
    net = state.net
    member = lambda i: jax.tree.map(lambda x: x[i], state.params)
    out = lambda i, s, l: jax.tree.map(np.asarray, net.apply(member(i), batch[s], batch[l]))
    main_s = out(main_i, "state", "len_state")
    main_next = out(main_i, "next_state", "len_next_state")["q"].astype(np.float64)
    tgt_next = out(1 - main_i, "next_state", "len_next_state")["q"].astype(np.float64)
    want = _sqn_loss_by_hand(main_s["q"].astype(np.float64), main_s["s"].astype(np.float64),
                             main_next, tgt_next, batch)
    swapped = _sqn_loss_by_hand(main_s["q"].astype(np.float64),
                                main_s["s"].astype(np.float64), tgt_next, main_next, batch)
    assert abs(want - swapped) > 1e-4, "the example must tell selector from target apart"

    before = jax.tree.map(np.asarray, state.params)
    new, metrics = jax.jit(sqn.train_step)(state, batch, rng, None)
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
    assert float(metrics["loss"]) != pytest.approx(swapped, rel=1e-5)
    after = jax.tree.map(np.asarray, new.params)
    for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a[1 - main_i], b[1 - main_i])   # target: bit-identical
    moved = max(float(np.abs(a[main_i] - b[main_i]).max())
                for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    assert moved > 0
    np.testing.assert_array_equal(np.asarray(new.updates), [main_i == 0, main_i == 1])

    # The update is one Adam step of the main network on the hand-checked loss.
    grads = jax.grad(lambda p: sqn.loss_fn(p, member(1 - main_i), state, batch,
                                           jax.random.split(rng)[1])[0])(member(main_i))
    upd, _ = state.tx.update(grads, jax.tree.map(lambda x: x[main_i], state.opt),
                             member(main_i))
    expect = optax.apply_updates(member(main_i), upd)
    for e, a in zip(jax.tree.leaves(expect), jax.tree.leaves(after)):
        np.testing.assert_allclose(a[main_i], np.asarray(e), rtol=1e-5, atol=1e-7)


def test_sqn_predict_uses_network_one_and_rank_head(tiny):
    config = get_config("sqn.py", "encoder=gru4rec,smoke")
    task = build_task(config, tiny)
    state = sqn.init(jax.random.key(0), task, config)
    batch = task.example_batch()
    outs = [state.net.apply(jax.tree.map(lambda x: x[i], state.params), batch["state"],
                            batch["len_state"]) for i in (0, 1)]
    np.testing.assert_array_equal(np.asarray(sqn.predict(state, batch)), outs[0]["s"])
    assert not np.allclose(np.asarray(outs[0]["s"]), np.asarray(outs[1]["s"]))
    config.rl.rank_head = "q"
    state_q = sqn.init(jax.random.key(0), task, config)
    np.testing.assert_array_equal(np.asarray(sqn.predict(state_q, batch)), outs[0]["q"])


def test_sqn_stacked_step_equals_the_two_tree_formulation(tiny):
    """Same numbers as the former formulation (select main/target among two full trees
    with a coin, update, write back), over several steps.

    Both run SGD with momentum instead of the config's Adam: Adam divides each entry by its
    own running magnitude, so an entry whose true gradient is ~0 (the attention key bias, a
    sum that cancels) turns round-off into a full ±lr step whose sign depends on the CPU's
    reduction order. Momentum still has a state that the stacked step must select and write
    back; parameters are compared relative to their leaf's and the tree's scale."""
    config = get_config("sqn.py", "encoder=sasrec,smoke")
    task = build_task(config, tiny)
    state = sqn.init(jax.random.key(5), task, config)
    sgd = optax.sgd(0.05, momentum=0.9)
    state = state.replace(tx=sgd, opt=common.stack_trees(
        *(sgd.init(jax.tree.map(lambda x: x[i], state.params)) for i in (0, 1))))
    src = BatchSource(task.train, 8, seed=1)
    p = [jax.tree.map(lambda x: x[i], state.params) for i in (0, 1)]
    o = [jax.tree.map(lambda x: x[i], state.opt) for i in (0, 1)]

    @jax.jit
    def old_step(p0, p1, o0, o1, batch, rng):
        k_coin, k_loss = jax.random.split(rng)
        first = jax.random.bernoulli(k_coin)
        sel = lambda a, b: jax.tree.map(lambda x, y: jnp.where(first, x, y), a, b)
        main, tgt, mo = sel(p0, p1), sel(p1, p0), sel(o0, o1)

        def loss(m):
            net, hp = state.net, state.hp
            k_s, k_next, k_tgt = jax.random.split(k_loss, 3)
            out = net.apply(m, batch["state"], batch["len_state"], True, rngs={"dropout": k_s})
            qs = net.apply(m, batch["next_state"], batch["len_next_state"], True,
                           rngs={"dropout": k_next})["q"]
            qt = net.apply(tgt, batch["next_state"], batch["len_next_state"], True,
                           rngs={"dropout": k_tgt})["q"]
            r = double_q.rewards(batch["is_buy"], hp.r_click, hp.r_buy)
            y = double_q.double_q_target(qt, qs, r, batch["is_done"], hp.gamma)
            td = 0.5 * jnp.square(y - jnp.take_along_axis(out["q"], batch["action"][:, None],
                                                           1)[:, 0])
            ce = optax.softmax_cross_entropy_with_integer_labels(out["s"], batch["action"])
            return td.mean() + ce.mean()

        g = jax.grad(loss)(main)
        u, mo = state.tx.update(g, mo, main)
        main = optax.apply_updates(main, u)
        return sel(main, p0), sel(p1, main), sel(mo, o0), sel(o1, mo)

    step = jax.jit(sqn.train_step)
    for i in range(4):
        rng = jax.random.key(100 + i)
        state, _ = step(state, src[i], rng, None)
        p[0], p[1], o[0], o[1] = old_step(p[0], p[1], o[0], o[1], src[i], rng)
    for i in (0, 1):
        got = jax.tree.map(lambda x: x[i], state.params)
        assert_trees_close(got, p[i], rtol=1e-4)
        # the run moved the parameters by much more than the tolerance
        start = jax.tree.map(lambda x: x[i], sqn.init(jax.random.key(5), task, config).params)
        moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(got),
                                                                  jax.tree.leaves(start)))
        assert moved > 1e-2


# ------------------------------------------------------------------ the ranking evaluator
N = 5
# Five session-protocol queries; scores are looked up by query id from the consts.
SCORES = np.array([
    [0.1, 0.9, 0.3, 0.5, 0.2],    # q0 t=2 buy:   above 1, 3 -> 3; window {1} removed -> 2
    [0.5, 0.5, 0.5, 0.1, 0.0],    # q1 t=1 click: reference ties: later item 2 above -> 2
    [0.0, 0.1, 0.2, 0.3, 0.4],    # q2 t=4 click: 1
    [0.4, 0.3, 0.2, 0.1, 0.0],    # q3 t=4 buy:   5; window {0, 1} removed -> 3
    [0.9, 0.1, 0.2, 0.3, 0.4],    # q4 t=0 buy:   1; target in its window -> miss
], np.float32)
PAD = N


def _eval_task():
    state = np.full((5, 4), PAD, np.int32)
    state[0, 0] = 1
    state[3, :2] = [0, 1]
    state[4, 0] = 0
    is_buy = np.array([1, 0, 0, 1, 1], np.int8)
    arrays = {"qid": np.arange(5, dtype=np.int32), "state": state,
              "len_state": np.ones(5, np.int32), "target": np.array([2, 1, 4, 4, 0], np.int32),
              "is_buy": is_buy, "group": is_buy.astype(np.int32),
              "reward": np.where(is_buy > 0, 1.0, 0.2).astype(np.float32)}
    ev = EvalSet(arrays, "session", ("click", "purchase"))
    return Task(name="hand", kind="replay", num_items=N, batch_size=2, train={},
                validation=ev, test=ev, item_freq=np.ones(N, np.int64), items=ItemInfo(),
                stats={}, extras={})


LOOKUP = types.SimpleNamespace(__name__="lookup",
                               predict=lambda state, batch, consts: consts[batch["qid"]])


def _evaluate(**options):
    opts = ml_collections.ConfigDict({"ks": (1, 3), "batch_size": 2, **options})
    ev = ranking.RankingEvaluator(LOOKUP, _eval_task(), None, opts)
    return ev.run(None, jnp.asarray(SCORES), "validation")


def test_ranking_evaluator_groups_rewards_and_last_batch_padding():
    got = _evaluate()          # ranks 3, 2, 1, 5, 1; batches of 2: the last one is padded
    assert got["click/count"] == 2 and got["purchase/count"] == 3
    assert got["click/hr@1"] == pytest.approx(0.5)
    assert got["click/hr@3"] == pytest.approx(1.0)
    assert got["click/ndcg@3"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert got["purchase/hr@1"] == pytest.approx(1 / 3)
    assert got["purchase/hr@3"] == pytest.approx(2 / 3)
    assert got["purchase/ndcg@3"] == pytest.approx((0.5 + 1) / 3)
    assert got["purchase/mrr@3"] == pytest.approx((1 / 3 + 1) / 3)
    assert got["click/reward@3"] == pytest.approx(0.4)
    assert got["purchase/reward@3"] == pytest.approx(2.0)
    assert got["total/reward@1"] == pytest.approx(1.2)
    assert got["total/reward@3"] == pytest.approx(2.4)
    pess = _evaluate(ties="pessimistic")               # q1: items 0 and 2 above -> 3
    assert pess["click/ndcg@3"] == pytest.approx((0.5 + 1) / 2)


def test_ranking_evaluator_history_exclusion():
    got = _evaluate(exclude_history=True)              # ranks 2, 2, 1, 3, miss
    assert got["purchase/hr@1"] == 0.0
    assert got["purchase/hr@3"] == pytest.approx(2 / 3)
    assert got["purchase/ndcg@3"] == pytest.approx((1 / math.log2(3) + 0.5) / 3)
    assert got["click/hr@1"] == pytest.approx(0.5)
    keep = _evaluate(exclude_history=True, mask_target_if_in_history=False)
    assert keep["purchase/hr@1"] == pytest.approx(1 / 3)   # q4 keeps its score: rank 1


def test_history_mask_id_shift():
    # Right padding: ids are items, the pad is N. Left padding: ids are items + 1, pad 0.
    right = ranking.history_mask(jnp.array([[1, 3, PAD, PAD]]), N, id_shift=0)
    left = ranking.history_mask(jnp.array([[0, 0, 2, 4]]), N, id_shift=1)
    np.testing.assert_array_equal(np.asarray(right), [[0, 1, 0, 1, 0]])
    np.testing.assert_array_equal(np.asarray(left), [[0, 1, 0, 1, 0]])
    none = ranking.history_mask(jnp.array([[0, 0, 0, 0]]), N, id_shift=1)
    assert not np.asarray(none).any()                   # the pad marks nothing


# ------------------------------------------------------------------ bookkeeping
def test_bookkeeping_best_per_metric_and_selection():
    lower = lambda m: m.endswith("repetition")
    book = loop.Bookkeeping("purchase/ndcg@10", lower)
    assert book.update(100, {"purchase/ndcg@10": 0.2, "click/hr@5": 0.5,
                             "repetition": 0.3, "purchase/count": 7})
    assert not book.update(200, {"purchase/ndcg@10": 0.1, "click/hr@5": 0.7,
                                 "repetition": 0.1, "purchase/count": 7})
    assert book.update(300, {"purchase/ndcg@10": 0.3, "click/hr@5": 0.6,
                             "repetition": 0.2, "purchase/count": 7})
    r = book.record
    assert r["best_step"] == 300 and r["best_value"] == 0.3
    assert r["validation"]["click/hr@5"] == 0.6          # at the selected step
    assert r["best_validation"]["click/hr@5"] == {"value": 0.7, "step": 200}
    assert r["best_validation"]["repetition"] == {"value": 0.1, "step": 200}
    assert r["best_validation"]["purchase/ndcg@10"] == {"value": 0.3, "step": 300}
    assert "purchase/count" not in r["best_validation"]
    # An empty group (NaN) is recorded as null and never counts as an improvement.
    book2 = loop.Bookkeeping("purchase/ndcg@10")
    assert book2.update(1, {"purchase/ndcg@10": float("nan")})      # first: selected
    assert book2.record["best_value"] is None
    assert book2.update(2, {"purchase/ndcg@10": 0.01})
    assert not book2.update(3, {"purchase/ndcg@10": float("nan")})
    with pytest.raises(KeyError, match="select_metric"):
        book2.update(4, {"all/ndcg@10": 0.5})


# ------------------------------------------------------------------ task builders
def test_prl_task_builder(tiny):
    config = get_config("sqn.py", "smoke")
    config.data.kind = "prl"
    config.data.prl_max_length = 12
    task = build_task(config, tiny)
    mean, mx = examples.prl_reward_stats(tiny.all_sessions(), 12, 0.2, 1.0)
    np.testing.assert_array_equal(task.extras["reward_mean"], mean)
    np.testing.assert_array_equal(task.extras["reward_max"], mx)
    tr = task.train
    np.testing.assert_allclose(tr["reward_to_go_norm"], tr["reward_to_go"] / mean[tr["step"]],
                               rtol=1e-6)
    assert tr["step"].max() < 12
    # Only sessions of at most 12 events, in training and in evaluation.
    short = tiny.splits["train"].filter_lengths(1, 12)
    assert task.num_train == short.num_events
    val_len = tiny.splits["validation"].filter_lengths(1, 12)
    full = build_task(config.copy_and_resolve_references(), tiny)   # max_queries applies
    assert full.validation.size == min(val_len.num_events, 64)
    v = task.validation.arrays
    assert v["position"].max() < 12 and set(np.unique(v["group"])) <= {0, 1}
    np.testing.assert_allclose(v["reward"], np.where(v["is_buy"] > 0, 1.0, 0.2))


def test_task_facts(tiny):
    config = get_config("sqn.py", "smoke")
    task = build_task(config, tiny)
    all_items = tiny.all_sessions().items
    np.testing.assert_array_equal(task.item_freq, np.bincount(all_items, minlength=task.num_items))
    assert task.steps_per_epoch == task.num_train // 8
    assert task.item_popularity.sum() == pytest.approx(1.0)
    v = task.validation.arrays
    s = tiny.splits["validation"]
    assert v["session"][0] == s.session_ids[0] and v["position"][0] == 0
    loo = build_task(get_config("supervised.py", "protocol=loo,smoke"), tiny)
    assert loo.validation.id_shift == 1 and loo.validation.groups == ("all",)
    users = tiny.all_sessions()
    lens = dict(zip(users.session_ids, users.lengths))
    a = loo.test.arrays
    assert all(a["position"][i] == lens[a["session"][i]] - 1 for i in range(len(a["session"])))


def test_unknown_task_kind_is_named(tiny):
    config = get_config("sqn.py", "smoke")
    config.data.kind = "replay_typo"
    with pytest.raises(ValueError, match="unknown config.data.kind 'replay_typo'"):
        build_task(config, tiny)


# ------------------------------------------------------------------ resume, SQN
def test_sqn_resume_across_an_epoch_boundary_is_bit_equal(tmp_path, tiny):
    def cfg():
        c = get_config("sqn.py", "encoder=sasrec,smoke")
        c.train.batch_size = 64
        c.train.checkpoint_every = 3
        c.train.eval_every = 100
        return c
    task = build_task(cfg(), tiny)
    spe = task.steps_per_epoch
    stop = spe - 1                                       # killed just before the boundary
    total = spe + 3
    full_c, part_c = cfg(), cfg()
    for c in (full_c, part_c):
        c.train.num_steps = total
    full = experiment.run(full_c, str(tmp_path / "full"), task=task, progress=False)
    experiment.run(part_c, str(tmp_path / "killed"), task=task, progress=False, stop_after=stop)
    resumed = experiment.run(part_c, str(tmp_path / "killed"), task=task, progress=False)
    assert resumed["steps_done"] == total > spe
    for a, b in zip(jax.tree.leaves(full["state"]), jax.tree.leaves(resumed["state"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert full["test"] == resumed["test"]


# ------------------------------------------------------------------ configs vs specs
@pytest.mark.parametrize("cfg", ["sqn.py", "supervised.py"])
@pytest.mark.parametrize("dataset,lr", [("retailrocket", 0.005), ("yoochoose", 0.01)])
def test_rl_config_values_pinned_to_rl_spec(cfg, dataset, lr):
    """rl.md §3-4: Adam lr 0.005 (RetailRocket) / 0.01 (RC15), γ 0.5, rewards 0.2 / 1.0,
    batch 256, 30 epochs, validation every 2,000 steps, state of the last 10 items, φ_s
    ranks, purchase NDCG@10 selects."""
    c = get_config(cfg, f"dataset={dataset}")
    assert c.optim.lr == lr and c.rl.gamma == 0.5
    assert (c.data.r_click, c.data.r_buy) == (0.2, 1.0)
    assert c.train.batch_size == 256 and c.train.num_epochs == 30
    assert c.train.eval_every == 2000 and c.data.state_len == 10
    assert c.rl.rank_head == "s" and c.data.kind == "replay"
    assert c.eval.select_metric == "purchase/ndcg@10" and tuple(c.eval.ks) == (5, 10, 20)
    assert c.eval.exclude_history is False and c.eval.ties == "reference"
    assert c.model.dropout is None                     # encoder default
    caser = get_config(cfg, f"dataset={dataset},encoder=caser").model.dropout
    assert caser == (0.0 if cfg == "sqn.py" else None)     # None: Caser's default, 0.0


def test_popularity_and_loo_config_values():
    pop = get_config("popularity.py", "dataset=retailrocket")
    assert pop.train.num_epochs == 1 and pop.train.eval_every == 0
    loo = get_config("supervised.py", "dataset=ml100k_recbole")
    assert loo.data.kind == "sequence" and loo.data.padding == "left"
    assert loo.eval.select_metric == "all/ndcg@10" and loo.eval.exclude_history is False
    assert loo.data.loo_train == "windows" and loo.model.tie_head is False


def test_method_defaults_layer_pinned_to_rl_spec():
    """SA2C (rl.md §5): 50 epochs, validation every 4,000 steps, phase 1 of 15,000 steps,
    second Adam lr 0.001, 10 negatives, r_neg 0, advantage clip 0; Caser dropout 0.1.
    SAC warm-up (rl.md §4): 15,000 steps for GRU on RetailRocket, 30,000 for SASRec.
    SNQN ranks with the Q head on RC15 only."""
    c = config_util.base_config("sa2c", "retailrocket", "caser", False)
    assert (c.train.num_epochs, c.train.eval_every, c.rl.phase1_steps) == (50, 4000, 15000)
    assert (c.rl.lr2, c.rl.num_negatives, c.rl.r_negative) == (0.001, 10, 0.0)
    assert c.rl.advantage_clip == 0.0 and c.model.dropout == 0.1 and c.optim.lr == 0.005
    syn = config_util.base_config("sa2c", "synthetic", "gru4rec", False)
    assert syn.train.num_epochs == 10 and "phase1_steps" not in syn.rl   # paper steps only
    sac = lambda ds, enc: config_util.base_config("sac", ds, enc, False).rl.warmup_steps
    assert sac("retailrocket", "gru4rec") == 15000 and sac("yoochoose", "gru4rec") == 0
    assert sac("retailrocket", "sasrec") == 30000 == sac("yoochoose", "sasrec")
    assert sac("retailrocket", "caser") == 0
    snqn = lambda ds: config_util.base_config("snqn", ds, "gru4rec", False).rl.rank_head
    assert snqn("yoochoose") == "q" and snqn("retailrocket") == "s"


def test_every_encoder_field_is_in_the_config():
    import dataclasses
    from jaxrec.encoders.common import EncoderConfig
    c = get_config("supervised.py", "")
    for f in dataclasses.fields(EncoderConfig):
        if f.name not in ("padding", "state_len", "pad_id"):
            assert f.name in c.model, f.name
    c.model.num_blocks = 2                              # typed fields accept overrides
    c.model.dropout = 0.2
    with pytest.raises(TypeError):
        c.model.num_blocks = "two"


def test_eval_every_in_epochs(tiny):
    c = get_config("supervised.py", "smoke")
    c.train.num_steps = 0
    c.train.num_epochs = 2
    c.train.eval_every_epochs = 0.5
    task = build_task(c, tiny)
    plan = loop.schedule(c, task)
    assert plan["num_steps"] == 2 * task.steps_per_epoch
    assert plan["eval_every"] == round(0.5 * task.steps_per_epoch)


# ------------------------------------------------------------------ a method from outside
def test_toy_method_with_own_consts_and_evaluator_runs_through_main(tmp_path):
    import json
    out = run_main(["--config=tests/train/toy_config.py:smoke", "--config.train.num_steps=6",
                    "--config.train.eval_every=3"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.load(open(tmp_path / "results.json"))
    tiny = prep.load("synthetic", preset="tiny")
    freq = np.bincount(tiny.all_sessions().items, minlength=tiny.num_items)
    assert res["method"] == "tests.train.toy_method" and res["steps_done"] == 6
    assert res["test"]["toy/prior_sum"] == pytest.approx(float(np.log1p(freq).sum()), rel=1e-5)
    assert res["test"]["toy/queries"] == 64                 # smoke: max_queries
    assert res["test"]["toy/top_is_most_frequent"] == 1.0
    assert res["test"]["purchase/count"] > 0                # the default ranking evaluator too
    assert res["best_validation"]["toy/prior_gap"]["step"] == 3     # lower is better
    lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    losses = [l["loss"] for l in lines if l["split"] == "train"]
    assert losses[-1] < losses[0]


def test_early_stopping_stops_and_stays_stopped(tmp_path):
    """With lr 0 the toy model never changes, so the selection metric never improves after
    the first evaluation: patience 2 stops the run at the third evaluation."""
    c = config_util.load_config_file(os.path.join(ROOT, "tests", "train", "toy_config.py"),
                                     "smoke")
    c.optim.lr = 0.0
    c.train.num_steps = 20
    c.train.eval_every = 2
    c.train.patience = 2
    res = experiment.run(c, str(tmp_path), progress=False)
    assert res["steps_done"] == 6 and res["best_step"] == 2
    assert os.path.exists(tmp_path / "results.json")
    again = experiment.run(c, str(tmp_path), progress=False)     # resume: nothing to do
    assert again["steps_done"] == 6 and again["test"] == res["test"]


def test_config_mistakes_fail_before_training(tmp_path, tiny):
    c = get_config("supervised.py", "encoder=gru4rec,smoke")
    c.eval.select_metric = "all/ndcg@10"                 # session protocol: no 'all' group
    with pytest.raises(ValueError, match="select_metric='all/ndcg@10' is not a metric"):
        experiment.run(c, str(tmp_path / "a"), dataset=tiny, progress=False)
    assert not os.path.exists(tmp_path / "a" / "checkpoints")
    c = get_config("supervised.py", "encoder=caser,smoke")
    c.model.tie_head = True                              # Caser's state is 112-d, not 64
    with pytest.raises(ValueError, match="tie_head=True needs the caser state"):
        experiment.run(c, str(tmp_path / "b"), dataset=tiny, progress=False)
    c = get_config("supervised.py", "encoder=gru4rec,smoke")
    c.train.prng_impl = "philox"
    with pytest.raises(ValueError, match="prng_impl='philox'"):
        experiment.run(c, str(tmp_path / "c"), dataset=tiny, progress=False)


def test_resume_with_another_prng_is_refused(tmp_path, tiny):
    c = get_config("supervised.py", "encoder=gru4rec,smoke")
    c.train.prng_impl = "unsafe_rbg"
    experiment.run(c, str(tmp_path), dataset=tiny, progress=False, stop_after=1)
    c.train.prng_impl = "threefry2x32"
    # refused as a changed hyperparameter, naming the field ...
    with pytest.raises(ValueError, match="train.prng_impl: 'unsafe_rbg' -> 'threefry2x32'"):
        experiment.run(c, str(tmp_path), dataset=tiny, progress=False)
    # ... and even with allow_config_change, since the random streams would switch mid-run
    c.train.allow_config_change = True
    with pytest.raises(ValueError, match="written with 'unsafe_rbg'"):
        experiment.run(c, str(tmp_path), dataset=tiny, progress=False)
    c.train.allow_config_change = False
    c.train.prng_impl = "unsafe_rbg"
    assert experiment.run(c, str(tmp_path), dataset=tiny, progress=False)["steps_done"] == 2


def test_sample_negatives_never_the_positive_and_uniform():
    pos = jnp.array([0, 3, 4] * 2000, jnp.int32)
    neg = np.asarray(double_q.sample_negatives(jax.random.key(0), pos, 5, 10))
    assert neg.shape == (6000, 10) and neg.min() >= 0 and neg.max() <= 4
    assert not (neg == np.asarray(pos)[:, None]).any()
    # Each of the 4 other items equally likely: 1/4 of the draws, within sampling error.
    rows = neg[np.asarray(pos) == 3]
    freq = np.bincount(rows.ravel(), minlength=5) / rows.size
    np.testing.assert_allclose(freq, [0.25, 0.25, 0.25, 0, 0.25], atol=0.01)


def test_ranking_evaluator_on_an_empty_split():
    """A split with no queries (a tiny dataset) reports count 0, NaN means and zero reward
    sums instead of failing on the missing reward keys."""
    task = _eval_task()
    empty = EvalSet({k: v[:0] for k, v in task.validation.arrays.items()}, "session",
                    ("click", "purchase"))
    task = dataclasses.replace(task, validation=empty)
    opts = ml_collections.ConfigDict({"ks": (1, 3), "batch_size": 2})
    got = ranking.RankingEvaluator(LOOKUP, task, None, opts).run(
        None, jnp.asarray(SCORES), "validation")
    assert got["click/count"] == 0 and got["purchase/count"] == 0
    assert math.isnan(got["purchase/ndcg@3"])
    assert got["click/reward@3"] == 0.0 and got["total/reward@3"] == 0.0
    assert set(got) == set(ranking.RankingEvaluator(LOOKUP, task, None, opts)
                           .metric_names("validation"))
