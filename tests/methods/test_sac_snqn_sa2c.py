"""SAC, SNQN and SA2C (rl.md §4-5): one step's loss against a NumPy computation from the
networks' outputs (GRU4Rec: no dropout, so every pass is reproducible), the optimizer
switch at T (which state moves, which stays bit-identical, and the second Adam's first
step from fresh moments), a resume through a checkpoint across the switch, and every
config x encoder for two smoke steps through ``experiment.run``."""

import functools

import jax
import numpy as np
import optax
import pytest

from jaxrec import experiment
from jaxrec.data.tasks import build_task
from jaxrec.methods import double_q, sa2c, sac, snqn
from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.data import BatchSource

from tests.train.helpers import get_config

ENCODERS = ("gru4rec", "caser", "nextitnet", "sasrec")


# ------------------------------------------------------------------ hand computations
def _member(tree, i):
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)


def _keys(rng):
    """(main's index, the negatives' key) of a step, derived as the methods do: the coin
    and the loss key from ``rng``; (positive, negative) keys from the loss key; the
    negatives' own key first of three from the negative key."""
    k_coin, k_loss = jax.random.split(rng)
    main_i = 0 if bool(jax.random.bernoulli(k_coin)) else 1
    return main_i, jax.random.split(jax.random.split(k_loss)[1], 3)[0]


@functools.lru_cache
def _forward(net):
    """The network's inference pass, jitted once per network (eager passes recompile)."""
    return jax.jit(net.apply)


def _by_hand(state, batch, main_i, negatives=None, r_neg=0.0, gamma=0.5):
    """Per-row float64 terms from the two networks' outputs (rl.md §3-5): L_q⁺, CE,
    Q_main(s, a), and with ``negatives`` [B, k] Σ_j L_q⁻,j and Q_main(s, a⁻) [B, k]."""
    fwd = _forward(state.net)
    out = lambda i, s, l: {h: np.asarray(v, np.float64) for h, v in
                           fwd(_member(state.params, i), batch[s], batch[l]).items()}
    main_s, tgt_s = out(main_i, "state", "len_state"), out(1 - main_i, "state", "len_state")
    q_sel_next = out(main_i, "next_state", "len_next_state")["q"]
    q_tgt_next = out(1 - main_i, "next_state", "len_next_state")["q"]
    a, rows = batch["action"], np.arange(len(batch["action"]))
    r = np.where(batch["is_buy"] > 0, 1.0, 0.2)
    y = r + gamma * np.where(batch["is_done"], 0.0, q_tgt_next[rows, q_sel_next.argmax(1)])
    q_s = main_s["q"]
    t = {"td": 0.5 * (y - q_s[rows, a]) ** 2, "q_sa": q_s[rows, a]}
    logits = main_s["s"] - main_s["s"].max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    t["ce"], t["pi"] = -logp[rows, a], np.exp(logp[rows, a])
    if negatives is not None:
        # A negative leaves the state as it is: bootstrap from s, never done-masked.
        y_neg = r_neg + gamma * tgt_s["q"][rows, q_s.argmax(1)]
        t["q_neg"] = q_s[rows[:, None], negatives]
        t["td_neg"] = (0.5 * (y_neg[:, None] - t["q_neg"]) ** 2).sum(1)
    return t


def _batch(task, seed=0):
    """A training batch of 8 with done rows and purchases, both exercised."""
    b = BatchSource(task.train, 8, seed=seed)[0]
    b["is_done"][:2] = True
    b["is_buy"][2:4] = 1
    return b


def _negatives(key, batch, task, k=10):
    return np.asarray(double_q.sample_negatives(key, batch["action"], task.num_items, k))


def _assert_fresh_adam_step(before, after, opt2, main_i, lr):
    """The main network moved by the first step of an Adam at ``lr`` from zero moments:
    its stored moments are (1−β1)·g and (1−β2)·g², its count 1, and each parameter moved
    by −lr·g/(|g|+ε) (bias-corrected first step); the other member's count is 0."""
    count = np.asarray(optax.tree_utils.tree_get(opt2, "count"))
    np.testing.assert_array_equal(count, [main_i == 0, main_i == 1])
    mu = jax.tree.leaves(_member(optax.tree_utils.tree_get(opt2, "mu"), main_i))
    nu = jax.tree.leaves(_member(optax.tree_utils.tree_get(opt2, "nu"), main_i))
    p0 = jax.tree.leaves(_member(before, main_i))
    p1 = jax.tree.leaves(_member(after, main_i))
    for m, v, b, a in zip(mu, nu, p0, p1):
        g = m.astype(np.float64) / 0.1
        np.testing.assert_allclose(v, 0.001 * g ** 2, rtol=1e-4, atol=1e-30)
        np.testing.assert_allclose(a, b - lr * g / (np.abs(g) + 1e-8), rtol=1e-5, atol=1e-7)


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _assert_trees_differ(a, b):
    assert any(not np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# ------------------------------------------------------------------ SAC
def test_sac_warmup_then_q_weighted_ce_with_a_fresh_adam(tiny):
    config = get_config("sac.py", "encoder=gru4rec,smoke")       # warm-up: 1 step
    assert config.rl.warmup_steps == 1
    task = build_task(config, tiny)
    s0 = sac.init(jax.random.key(3), task, config)
    # A fresh wrapper: jax.jit(f) shares its compile cache with every other jit of the same
    # f in the process (other test files jit these steps too), and this counts our compiles.
    step = jax.jit(lambda *a: sac.train_step(*a))
    batch = _batch(task)

    # Step 0 (warm-up): SQN's loss, first Adam; the second Adam's state stays initial.
    rng = jax.random.key(11)
    main_i, _ = _keys(rng)
    t = _by_hand(s0, batch, main_i)
    s1, m = step(s0, batch, rng, None)
    assert float(m["phase"]) == 1.0
    assert float(m["loss"]) == pytest.approx((t["td"] + t["ce"]).mean(), rel=1e-5)
    _assert_trees_equal(s1.extra["opt2"], s0.extra["opt2"])
    _assert_trees_differ(s1.opt, s0.opt)

    # Step 1 (= T): mean(L_q + sg(Q(s,a))·CE), raw Q weight, second Adam from fresh
    # moments at the same lr; the first Adam's state is frozen from now on.
    rng = jax.random.key(12)
    main_i, _ = _keys(rng)
    t = _by_hand(s1, batch, main_i)
    want = (t["td"] + t["q_sa"] * t["ce"]).mean()
    assert abs(want - (t["td"] + t["ce"]).mean()) > 1e-3, "the two phases must differ here"
    s2, m = step(s1, batch, rng, None)
    assert float(m["phase"]) == 2.0
    assert float(m["loss"]) == pytest.approx(want, rel=1e-5)
    _assert_trees_equal(s2.opt, s1.opt)
    _assert_fresh_adam_step(s1.params, s2.params, s2.extra["opt2"], main_i, config.optim.lr)
    _assert_trees_equal(_member(s2.params, 1 - main_i), _member(s1.params, 1 - main_i))
    assert step._cache_size() == 1                               # compiled once


def test_sac_without_warmup_keeps_one_optimizer(tiny):
    config = get_config("sac.py", "encoder=gru4rec,smoke")
    config.rl.warmup_steps = 0                   # as RC15's GRU / RetailRocket's Caser
    state = sac.init(jax.random.key(0), build_task(config, tiny), config)
    assert state.extra is None and state.tx2 is None


# ------------------------------------------------------------------ SNQN
def test_snqn_step_equals_hand_computation(tiny):
    config = get_config("snqn.py", "encoder=gru4rec,smoke")
    config.rl.r_negative, config.rl.q_weight = -0.5, 0.7      # both exercised
    task = build_task(config, tiny)
    state = snqn.init(jax.random.key(5), task, config)
    batch = _batch(task, seed=1)
    rng = jax.random.key(21)
    main_i, k_neg = _keys(rng)
    neg = _negatives(k_neg, batch, task)
    assert neg.shape == (8, 10) and not (neg == batch["action"][:, None]).any()
    t = _by_hand(state, batch, main_i, neg, r_neg=-0.5)
    want = (0.7 * (t["td"] + t["td_neg"]) + t["ce"]).mean()
    # The negatives matter, and done rows are not masked for them.
    assert abs(want - (0.7 * t["td"] + t["ce"]).mean()) > 1e-3
    new, m = jax.jit(snqn.train_step)(state, batch, rng, None)
    assert float(m["loss"]) == pytest.approx(want, rel=1e-5)
    assert float(m["neg_td_loss"]) == pytest.approx(t["td_neg"].mean(), rel=1e-5)
    _assert_trees_equal(_member(new.params, 1 - main_i), _member(state.params, 1 - main_i))
    np.testing.assert_array_equal(np.asarray(snqn.predict(new, batch)),
                                  np.asarray(new.net.apply(_member(new.params, 0),
                                                           batch["state"],
                                                           batch["len_state"])["s"]))


# ------------------------------------------------------------------ SA2C
def _sa2c_by_hand(state, batch, rng, task, pop, smooth, w, phase2):
    main_i, k_neg = _keys(rng)
    t = _by_hand(state, batch, main_i, _negatives(k_neg, batch, task))
    adv_raw = t["q_sa"] - (t["q_sa"] + t["q_neg"].sum(1)) / 11
    adv = np.clip(adv_raw, 0.0, 10.0)
    ips = np.clip(t["pi"] / pop[batch["action"]], 0.1, 10.0) ** smooth
    q_terms = t["td"] + t["td_neg"]
    loss = (w * q_terms + adv * ips * t["ce"]).mean() if phase2 else (q_terms + t["ce"]).mean()
    return main_i, loss, adv_raw, ips


def test_sa2c_phases_switch_at_T_with_second_adam_and_resume(tiny, tmp_path):
    config = get_config("sa2c.py", "encoder=gru4rec,smoke")
    config.rl.phase1_steps, config.rl.ips_smooth, config.rl.q_weight = 2, 0.5, 0.7
    task = build_task(config, tiny)
    consts = sa2c.make_consts(config, task)
    pop = consts["pop"].astype(np.float64)
    np.testing.assert_allclose(pop, task.item_freq / task.item_freq.sum(), rtol=1e-6)
    state = sa2c.init(jax.random.key(7), task, config)
    opt2_init = jax.tree.map(np.asarray, state.extra["opt2"])
    step = jax.jit(lambda *a: sa2c.train_step(*a))   # a fresh cache (see the SAC test)
    states, batches = [state], [_batch(task, seed=k) for k in range(4)]
    for k in range(4):
        rng = jax.random.key(30 + k)
        phase2 = k >= 2
        main_i, want, adv_raw, ips = _sa2c_by_hand(states[-1], batches[k], rng, task, pop,
                                                   0.5, 0.7, phase2)
        new, m = step(states[-1], batches[k], rng, consts)
        assert float(m["phase"]) == (2.0 if phase2 else 1.0), k
        assert float(m["loss"]) == pytest.approx(want, rel=1e-5), k
        if k == 2:       # the formula changes exactly at T: the other one is far off
            _, other, _, _ = _sa2c_by_hand(states[-1], batches[k], rng, task, pop, 0.5, 0.7,
                                           False)
            assert abs(other - want) > 1e-3
            assert (adv_raw < 0).any() and (adv_raw > 0).any(), "the clip at 0 is exercised"
            assert not np.allclose(ips, 1.0), "the IPS factor is exercised"
        if not phase2:   # phase-2 Adam untouched before T, phase-1 Adam moving
            _assert_trees_equal(new.extra["opt2"], opt2_init)
            _assert_trees_differ(new.opt, states[-1].opt)
        else:            # phase-1 Adam frozen from T on
            _assert_trees_equal(new.opt, states[2].opt)
        if k == 2:       # the second Adam's first step: lr2 from fresh moments
            _assert_fresh_adam_step(states[-1].params, new.params, new.extra["opt2"], main_i,
                                    config.rl.lr2)
        states.append(new)
    assert step._cache_size() == 1                               # one compile, both phases

    # Resume: a state saved at T (after step 2) and restored continues bit-exactly.
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(2, states[2], {})
    ckpt.wait()
    restored, _ = ckpt.restore(2, states[0])
    ckpt.close()
    for k in (2, 3):
        restored, _ = step(restored, batches[k], jax.random.key(30 + k), consts)
    _assert_trees_equal(restored, states[4])


def test_sa2c_bad_settings_are_named(tiny):
    config = get_config("sa2c.py", "encoder=gru4rec,smoke")
    del config.rl["phase1_steps"]
    with pytest.raises(ValueError, match="phase1_steps"):
        sa2c.hyper(config)


def test_sa2c_advantage_clip():
    q_pos = np.array([1.0, 0.0, 30.0], np.float32)
    q_neg = np.array([[0.0, 2.0], [3.0, -6.0], [0.0, 0.0]], np.float32)
    # A = q⁺ − (q⁺ + Σq⁻)/3: 1 − 1 = 0, 0 − (−1) = 1, 30 − 10 = 20
    np.testing.assert_allclose(sa2c.advantage(q_pos, q_neg, 0.0), [0.0, 1.0, 10.0])
    np.testing.assert_allclose(sa2c.advantage(q_pos, q_neg, 0.5), [0.5, 1.0, 10.0])
    np.testing.assert_allclose(sa2c.advantage(q_pos, q_neg, -1.0), [0.0, 1.0, 20.0])


# ------------------------------------------------------------------ configs
def test_configs_pinned_to_rl_spec():
    """Paper values from METHOD_DEFAULTS on the papers' datasets; the synthetic defaults
    [inferred] scaled to its ~580-step run; the smoke switch inside the two steps."""
    assert get_config("sa2c.py", "dataset=retailrocket").rl.phase1_steps == 15000
    assert get_config("sa2c.py", "dataset=yoochoose").rl.lr2 == 0.001
    assert get_config("sa2c.py", "").rl.phase1_steps == 120
    assert get_config("sac.py", "dataset=yoochoose,encoder=sasrec").rl.warmup_steps == 30000
    assert get_config("sac.py", "dataset=yoochoose,encoder=gru4rec").rl.warmup_steps == 0
    assert get_config("sac.py", "encoder=gru4rec").rl.warmup_steps == 80
    assert get_config("sac.py", "encoder=nextitnet").rl.warmup_steps == 0
    rc15 = get_config("snqn.py", "dataset=yoochoose")
    assert rc15.rl.rank_head == "q" and rc15.rl.num_negatives == 10
    assert (rc15.train.num_epochs, rc15.train.eval_every) == (50, 4000)
    assert get_config("snqn.py", "dataset=retailrocket").rl.rank_head == "s"
    for name in ("sac.py", "sa2c.py"):
        smoke = get_config(name, "smoke")
        assert smoke.rl.get("warmup_steps", smoke.rl.get("phase1_steps")) == 1


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("name", ["sac.py", "snqn.py", "sa2c.py"])
def test_every_config_and_encoder_trains_two_smoke_steps(tmp_path, tiny, name, encoder):
    config = get_config(name, f"encoder={encoder},smoke")
    config.train.prng_impl = "rbg"     # cheaper to compile dropout on CPU than threefry
    res = experiment.run(config, str(tmp_path), dataset=tiny, progress=False)
    assert res["steps_done"] == 2
    assert np.isfinite(res["test"]["purchase/ndcg@10"])
