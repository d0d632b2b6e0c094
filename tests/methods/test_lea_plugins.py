"""LEA's plug points in SQN / SA2C (rl.md §8): with every switch off the losses and updates
are bit-identical to the recommender without a ``config.lea`` section; each switch changes
exactly its own term, checked against a NumPy computation from the networks' outputs.

The LE arrays here are random (the LLM is not needed to test the plug points): GRU4Rec has
no dropout, so the passes of two configurations on one batch and key are comparable."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxrec.data.tasks import build_task
from jaxrec.methods import common, double_q, sa2c, sqn
from jaxrec.methods import lea as lea_lib
from jaxrec.train.data import BatchSource

from tests.train.helpers import get_config

K, DE = 3, 6


def _config(name, with_lea=True, **lea):
    """The recommender's smoke config, with a ``config.lea`` section (``lea`` switches)."""
    c = get_config(f"{name}.py", "encoder=gru4rec,smoke")
    if with_lea:
        c.lea = lea_lib.default_section(**lea)
    return c


@pytest.fixture(scope="module")
def setup(tiny):
    """(task, a batch of 8 with random LE arrays); purchases and done rows included."""
    task = build_task(_config("sqn"), tiny)
    b = BatchSource(task.train, 8, seed=0)[0]
    b["is_done"][:2] = True
    b["is_buy"][2:4] = 1
    r = np.random.default_rng(0)
    n = task.num_items
    b.update(le_state=r.normal(size=(8, DE)).astype(np.float32),
             le_next_state=r.normal(size=(8, DE)).astype(np.float32),
             le_reward=r.uniform(size=8).astype(np.float32),
             aug_actions=r.integers(0, n, (8, K)).astype(np.int32),
             aug_reward=r.uniform(size=(8, K)).astype(np.float32),
             aug_weights=r.uniform(size=(8, K)).astype(np.float32))
    return task, b


def _init(module, config, task, batch):
    # init reads shapes from the task's first rows: give it the LE arrays too.
    t = dataclasses.replace(task, train={**task.train, **{k: np.repeat(v[:1], task.batch_size, 0)
                                                          for k, v in batch.items() if k not in task.train}})
    return module.init(jax.random.key(1), t, config)


def _members(state):
    return [jax.tree.map(lambda x: x[i], state.params) for i in (0, 1)]


def _trees_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("name", ["sqn", "sa2c"])
def test_switches_off_is_bit_identical(setup, name):
    task, batch = setup
    module = {"sqn": sqn, "sa2c": sa2c}[name]
    plain = {k: v for k, v in batch.items() if not k.startswith(("le_", "aug_"))}
    ref = _config(name, with_lea=False)
    off = _config(name)                       # config.lea with every switch off
    s_ref, s_off = _init(module, ref, task, plain), _init(module, off, task, batch)
    assert _trees_equal(s_ref.params, s_off.params)
    step = jax.jit(module.train_step)
    for i in range(2):                        # SA2C smoke: phase 1 then phase 2
        s_ref, m_ref = step(s_ref, plain, jax.random.key(10 + i), None)
        s_off, m_off = step(s_off, batch, jax.random.key(10 + i), None)
        assert float(m_ref["loss"]) == float(m_off["loss"])
        assert set(m_ref) == set(m_off)
        assert _trees_equal(s_ref.params, s_off.params)


def _terms(config, task, batch, state=None):
    """sqn.td_and_ce of network 0 as main: (td [B], ce, out, metrics), float64 numpy."""
    st = state or _init(sqn, config, task, batch)
    st = st.replace(hp=sqn.hyper(config))
    main, tgt = _members(st)
    td, ce, out, m = sqn.td_and_ce(main, tgt, st, batch, jax.random.key(5))
    return (np.asarray(td, np.float64), float(ce), {k: np.asarray(v, np.float64) for k, v in out.items()},
            {k: float(v) for k, v in m.items()}, st)


def test_reward_model_switch_changes_only_the_td_reward(setup):
    task, batch = setup
    td0, ce0, out0, _, st = _terms(_config("sqn"), task, batch)
    td1, ce1, out1, _, _ = _terms(_config("sqn", rewards="reward_model"), task, batch, st)
    assert ce1 == ce0
    # y moves by (r_model − r_fixed); the bootstrap and Q(s, a) are untouched.
    rows = np.arange(8)
    q = out0["q"][rows, batch["action"]]
    fixed = np.where(batch["is_buy"] > 0, 1.0, 0.2)
    main, tgt = _members(st)
    net = st.net
    q_sel = np.asarray(net.apply(main, batch["next_state"], batch["len_next_state"])["q"], np.float64)
    q_tgt = np.asarray(net.apply(tgt, batch["next_state"], batch["len_next_state"])["q"], np.float64)
    boot = np.where(batch["is_done"], 0.0, q_tgt[rows, q_sel.argmax(1)])
    y0 = fixed + 0.5 * boot
    np.testing.assert_allclose(td0, 0.5 * (y0 - q) ** 2, rtol=1e-4, atol=1e-6)
    y1 = batch["le_reward"] + 0.5 * boot
    np.testing.assert_allclose(td1, 0.5 * (y1 - q) ** 2, rtol=1e-4, atol=1e-6)
    assert np.abs(td1 - td0).max() > 1e-3


@pytest.mark.parametrize("aug_q", ["reward", "logged_next", "none"])
def test_augmented_positives_add_exactly_their_terms(setup, aug_q):
    task, batch = setup
    td0, ce0, out, m0, st = _terms(_config("sqn"), task, batch)
    cfg = _config("sqn", aug=True, aug_weight=0.7, aug_q=aug_q)
    td1, ce1, _, m1, _ = _terms(cfg, task, batch, st)
    a, w = batch["aug_actions"], 0.7 * batch["aug_weights"].astype(np.float64)
    s = out["s"] - out["s"].max(1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(1, keepdims=True))
    want_ce = -(w * np.take_along_axis(logp, a, 1)).sum(1).mean()
    assert ce1 - ce0 == pytest.approx(want_ce, rel=1e-4)
    assert m1["aug_ce"] == pytest.approx(want_ce, rel=1e-4)
    q_aug = np.take_along_axis(out["q"], a, 1)
    r = np.full(a.shape, 0.2)                             # rewards 'fixed': the click reward
    if aug_q == "logged_next":
        rows = np.arange(8)
        fixed = np.where(batch["is_buy"] > 0, 1.0, 0.2)
        q_sa = out["q"][rows, batch["action"]]
        # y0 − r_fixed from td0 = ½ (y0 − Q(s, a))²: the sign comes from a direct target.
        main, tgt = _members(st)
        q_sel = np.asarray(st.net.apply(main, batch["next_state"], batch["len_next_state"])["q"], np.float64)
        q_tgt = np.asarray(st.net.apply(tgt, batch["next_state"], batch["len_next_state"])["q"], np.float64)
        y0_minus_r = 0.5 * np.where(batch["is_done"], 0.0, q_tgt[rows, q_sel.argmax(1)])
        np.testing.assert_allclose(td0, 0.5 * (fixed + y0_minus_r - q_sa) ** 2, rtol=1e-4, atol=1e-6)
        r = r + y0_minus_r[:, None]
    want_td = (w * 0.5 * (r - q_aug) ** 2).sum(1) if aug_q != "none" else np.zeros(8)
    np.testing.assert_allclose(td1 - td0, want_td, rtol=1e-4, atol=1e-6)


def test_augmented_rewards_follow_the_reward_switch(setup):
    task, batch = setup
    td0, _, out, _, st = _terms(_config("sqn", aug=True, aug_q="reward"), task, batch)
    td1, _, _, _, _ = _terms(_config("sqn", aug=True, aug_q="reward", rewards="reward_model"), task, batch, st)
    q_aug = np.take_along_axis(out["q"], batch["aug_actions"], 1)
    w = batch["aug_weights"].astype(np.float64) * 0.2          # default aug_weight
    # Both switches: the difference is the logged term's reward and the augmented rewards.
    aug0 = (w * 0.5 * (0.2 - q_aug) ** 2).sum(1)
    aug1 = (w * 0.5 * (batch["aug_reward"] - q_aug) ** 2).sum(1)
    rows = np.arange(8)
    q = out["q"][rows, batch["action"]]
    main, tgt = _members(st)
    q_sel = np.asarray(st.net.apply(main, batch["next_state"], batch["len_next_state"])["q"], np.float64)
    q_tgt = np.asarray(st.net.apply(tgt, batch["next_state"], batch["len_next_state"])["q"], np.float64)
    boot = 0.5 * np.where(batch["is_done"], 0.0, q_tgt[rows, q_sel.argmax(1)])
    fixed = np.where(batch["is_buy"] > 0, 1.0, 0.2)
    np.testing.assert_allclose(td0, 0.5 * (fixed + boot - q) ** 2 + aug0, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(td1, 0.5 * (batch["le_reward"] + boot - q) ** 2 + aug1, rtol=1e-4, atol=1e-6)


def test_state_switch_feeds_the_heads(setup):
    task, batch = setup
    base = _init(sqn, _config("sqn"), task, batch)
    cat = _init(sqn, _config("sqn", state="concat"), task, batch)
    rep = _init(sqn, _config("sqn", state="replace"), task, batch)
    p0, pc, pr = (_members(s)[0] for s in (base, cat, rep))
    kb = np.asarray(p0["params"]["head_q"]["kernel"])
    kc = np.asarray(pc["params"]["head_q"]["kernel"])
    d = kb.shape[0]
    assert kc.shape == (d + DE, kb.shape[1])
    assert np.asarray(pr["params"]["head_q"]["kernel"]).shape == (DE, kb.shape[1])
    # concat: h·W[:d] + s^e·W[d:] + b — with the encoder and W[:d] of the base network, the
    # scores move by exactly s^e·W[d:].
    mixed = jax.tree.map(lambda x: x, pc)
    mixed["params"] = dict(pc["params"], encoder=p0["params"]["encoder"])
    for h in ("head_q", "head_s"):
        k = np.asarray(pc["params"][h]["kernel"]).copy()
        k[:d] = np.asarray(p0["params"][h]["kernel"])
        mixed["params"][h] = {"kernel": k, "bias": p0["params"][h]["bias"]}
    o0 = base.net.apply(p0, batch["state"], batch["len_state"])
    oc = cat.net.apply(mixed, batch["state"], batch["len_state"], le=batch["le_state"])
    for h in ("q", "s"):
        extra = batch["le_state"] @ np.asarray(mixed["params"][f"head_{h}"]["kernel"])[d:]
        np.testing.assert_allclose(np.asarray(oc[h]), np.asarray(o0[h]) + extra, rtol=1e-4, atol=1e-5)
    # replace: the heads read s^e alone.
    orp = rep.net.apply(pr, batch["state"], batch["len_state"], le=batch["le_state"])
    want = batch["le_state"] @ np.asarray(pr["params"]["head_s"]["kernel"]) + np.asarray(pr["params"]["head_s"]["bias"])
    np.testing.assert_allclose(np.asarray(orp["s"]), want, rtol=1e-4, atol=1e-5)
    # The LE state of s′ feeds the target passes: the TD term moves, the CE does not.
    cfg = _config("sqn", state="concat")
    td_a, ce_a, _, _, st = _terms(cfg, task, batch, cat)
    shifted = dict(batch, le_next_state=batch["le_next_state"] + 1.0)
    td_b, ce_b, _, _, _ = _terms(cfg, task, shifted, st)
    assert ce_a == ce_b and np.abs(td_a - td_b).max() > 1e-4


def test_state_switch_needs_the_arrays_and_names_bad_values(setup):
    task, batch = setup
    plain = {k: v for k, v in batch.items() if not k.startswith(("le_", "aug_"))}
    with pytest.raises(ValueError, match="le_state"):
        _init(sqn, _config("sqn", state="concat"), task, plain)
    with pytest.raises(ValueError, match="config.lea.state"):
        common.make_net(_config("sqn", state="sum"), task.num_items)
    with pytest.raises(ValueError, match="config.lea.rewards"):
        sqn.hyper(_config("sqn", rewards="model"))


@pytest.mark.parametrize("aug_advantage", [True, False])
def test_sa2c_phase2_augmented_ce_weights(setup, aug_advantage):
    """Phase 2: each augmented CE is weighted by its own advantage over the step's sampled
    negatives (aug_advantage) or by its fixed weight only; nothing else moves."""
    task, batch = setup
    c0, c1 = _config("sa2c"), _config("sa2c", aug=True, aug_advantage=aug_advantage)
    s0 = _init(sa2c, c0, task, batch)
    s0 = s0.replace(step=s0.step + 5)                     # phase 2 (smoke T = 1)
    s1 = s0.replace(hp=sa2c.hyper(c1))
    main, tgt = _members(s0)
    key = jax.random.key(3)
    l0, m0 = sa2c.loss_fn(main, tgt, s0, batch, key)
    l1, m1 = sa2c.loss_fn(main, tgt, s1, batch, key)
    assert float(m1["advantage"]) == float(m0["advantage"])
    # The step's negatives, drawn as sa2c.loss_fn / double_q.negative_td draw them.
    k_neg = jax.random.split(jax.random.split(key)[1], 3)[0]
    negs = np.asarray(double_q.sample_negatives(k_neg, batch["action"], task.num_items, 10))
    out = {h: np.asarray(v, np.float64) for h, v in s0.net.apply(main, batch["state"], batch["len_state"]).items()}
    rows, a = np.arange(8), batch["aug_actions"]
    q = out["q"]
    base = (q[rows, batch["action"]] + q[rows[:, None], negs].sum(1)) / 11
    adv = np.clip(q[rows[:, None], a] - base[:, None], 0.0, 10.0) if aug_advantage else 1.0
    if aug_advantage:                     # some weights are neither 0 (clipped) nor 1
        assert np.any((adv > 0) & (np.abs(adv - 1) > 1e-3))
    s = out["s"] - out["s"].max(1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(1, keepdims=True))
    want = -(0.2 * batch["aug_weights"] * adv * np.take_along_axis(logp, a, 1)).sum(1).mean()
    assert float(m1["weighted_ce"]) - float(m0["weighted_ce"]) == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert float(l1) - float(l0) == pytest.approx(want + float(m1["aug_td"]), rel=1e-4, abs=1e-7)
