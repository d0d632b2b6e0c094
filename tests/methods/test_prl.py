"""PRL (Xin et al., SIGIR 2022; rl.md §6): the prompt tokens and the attention block
against NumPy, one training step against a NumPy weighted CE, the inference prompt, the ε
sweep evaluator against the default ranking evaluator, configs pinned to the reference
scripts, and a smoke run of every encoder."""

import types

import jax
import numpy as np
import pytest

from jaxrec import experiment
from jaxrec.data.tasks import build_task
from jaxrec.evaluators import make_evaluators, run_all
from jaxrec.methods import prl
from jaxrec.train.data import BatchSource

from tests.train.helpers import get_config

ENCODERS = ("gru4rec", "caser", "nextitnet", "sasrec")
MASK = float(-(2 ** 32) + 1)


@pytest.fixture(scope="module")
def task(tiny):
    """The 'prl' task of the smoke config on ``tiny`` (tests/methods/conftest.py); it does
    not depend on the encoder."""
    return build_task(get_config("prl.py", "smoke"), tiny)


def _config(encoder="gru4rec", **rl):
    c = get_config("prl.py", f"encoder={encoder},smoke")
    for k, v in rl.items():
        c.rl[k] = v
    return c


def _scaled_reward_embedding(state, scale=100.0):
    """w_r ~ N(0, 0.01) barely moves the scores at initialisation; scaled up, ε matters."""
    p = jax.tree.map(lambda x: x, state.params)
    p["params"]["reward_embed"] = p["params"]["reward_embed"] * scale
    return state.replace(params=p)


# ------------------------------------------------------------------ NumPy reference
def _ln(x, p, eps=1e-8):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * p["scale"] + p["bias"]


def _attend(q_in, kv_in, p, key_valid):
    """kang205's multihead_attention with one head, before the residual."""
    dense = lambda x, name: x @ p[name]["kernel"] + p[name]["bias"]
    q, k, v = dense(q_in, "query"), dense(kv_in, "key"), dense(kv_in, "value")
    logits = q @ np.swapaxes(k, 1, 2) / np.sqrt(q.shape[-1])
    logits = np.where(key_valid[:, None, :], logits, MASK)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ v


def _logits_by_hand(params, tokens, seq=None, items=None, pad=None):
    """rl.md §6: self-attention (queries LN(X), keys X, residual, LN) or, with SASRec's
    sequence ``seq``, cross-attention (queries X, keys seq, no LN; a pad key is masked
    when its vector sums to 0, the reference's test); token 0 -> dense."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    x = np.asarray(tokens, np.float64)
    if seq is None:
        q = _ln(x, p["ln_query"])
        h = _ln(_attend(q, x, p["attention"], np.ones(x.shape[:2], bool)) + q, p["ln_out"])
    else:
        s = np.asarray(seq, np.float64)
        h = _attend(x, s, p["attention"], (items != pad) | (s.sum(-1) != 0)) + x
    return h[:, 0] @ p["head"]["kernel"] + p["head"]["bias"]


def _log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


# ------------------------------------------------------------------ the prompt, by hand
@pytest.mark.parametrize("encoder", ["gru4rec", "caser", "sasrec"])   # 64-d, 112-d, cross
def test_prompt_tokens_and_attention_block_by_hand(task, encoder):
    config = _config(encoder)
    state = prl.init(jax.random.key(0), task, config)
    net, params = state.net, state.params
    n = task.num_items
    # Eight rows, the smoke batch size, so the eager ops compiled here serve the smoke run.
    items = np.full((8, 10), n, np.int32)               # right padding, pad = N
    items[0, :3] = [4, 7, 1]
    items[2, :10] = np.arange(10)
    items[3:, :1] = 5
    lengths = np.array([3, 1, 10, 1, 1, 1, 1, 1], np.int32)   # row 1: empty history
    steps = np.array([3, 0, 49, 7, 1, 2, 3, 4], np.int32)
    r_norm = np.array([0.5, 1.0, 2.5, 1.7, 0.1, 0.2, 3.0, 1.0], np.float32)

    tokens, seq = net.apply(params, items, lengths, steps, r_norm,
                            method=prl.PRLNet.prompt_tokens)
    width = 112 if encoder == "caser" else 64            # Caser's state; the prompt follows
    assert tokens.shape == (8, 3, width)
    encoder_state = net.apply(params, items, lengths,
                              method=lambda m, i, l: m.encoder(i, l))
    np.testing.assert_array_equal(tokens[:, 0], encoder_state)
    table = np.asarray(params["params"]["step_embed"])
    w_r = np.asarray(params["params"]["reward_embed"])
    assert table.shape == (50, width) and w_r.shape == (1, width)
    np.testing.assert_array_equal(tokens[:, 1], table[steps])
    np.testing.assert_allclose(tokens[:, 2], r_norm[:, None] * w_r, rtol=1e-6)

    logits = net.apply(params, items, lengths, steps, r_norm)
    assert logits.shape == (8, n)
    np.testing.assert_allclose(logits, _logits_by_hand(params, tokens, seq, items, n),
                               rtol=2e-4, atol=2e-5)
    assert (seq is not None) == (encoder == "sasrec")


def test_sasrec_key_mask_reference_sum_test_versus_ids(task):
    """The reference masks keys whose vector sums to 0: SASRec's pad outputs are LN(0) =
    β, masked while β = 0 and attendable once β moves; 'ids' always masks them."""
    state = prl.init(jax.random.key(1), task, _config("sasrec"))
    p = jax.tree.map(lambda x: x, state.params)
    p["params"]["encoder"]["final_ln"]["bias"] = p["params"]["encoder"]["final_ln"]["bias"] + 0.1
    batch = {k: v[:8] for k, v in task.train.items()}
    assert (batch["len_state"] < 10).any()               # some rows have pad keys
    args = (batch["state"], batch["len_state"], batch["step"], batch["reward_to_go_norm"])
    tokens, seq = state.net.apply(p, *args, method=prl.PRLNet.prompt_tokens)
    ref = state.net.apply(p, *args)
    np.testing.assert_allclose(ref, _logits_by_hand(p, tokens, seq, batch["state"],
                                                    task.num_items), rtol=2e-4, atol=2e-5)
    ids_net = prl.make_net(_config("sasrec", prl_key_mask="ids"), task.num_items)
    by_ids = ids_net.apply(p, *args)
    full = batch["len_state"] == 10                      # no pads: the two agree
    np.testing.assert_allclose(by_ids[full], ref[full], rtol=1e-5, atol=1e-6)
    assert not np.allclose(by_ids[~full], ref[~full])


# ------------------------------------------------------------------ one training step
def test_one_step_loss_equals_numpy_weighted_ce(task):
    state = prl.init(jax.random.key(3), task, _config("gru4rec"))   # prl_weight='reward'
    batch = BatchSource(task.train, 8, seed=0)[0]
    batch["is_buy"][:3] = [1, 0, 1]                      # both rewards present
    rng = jax.random.key(11)
    args = (batch["state"], batch["len_state"], batch["step"], batch["reward_to_go_norm"])

    @jax.jit
    def step_and_logits(state, batch, rng):
        """One train step, and the network's training-mode logits under the same key."""
        logits = state.net.apply(state.params, *args, train=True, rngs={"dropout": rng})
        return prl.train_step(state, batch, rng, None) + (logits,)

    new, metrics, logits = step_and_logits(state, batch, rng)
    logits = np.asarray(logits, np.float64)
    assert not np.allclose(logits, state.net.apply(state.params, *args))   # dropout is on
    ce = -_log_softmax(logits)[np.arange(8), batch["action"]]
    w = np.where(batch["is_buy"] > 0, 1.0, 0.2)
    assert abs((w * ce).mean() - ce.mean()) > 1e-3       # the weights matter
    assert float(metrics["loss"]) == pytest.approx((w * ce).mean(), rel=1e-5)
    assert float(metrics["ce_loss"]) == pytest.approx(ce.mean(), rel=1e-5)
    assert int(new.step) == 1
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
             zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params))]
    assert min(moved) > 0                                # every parameter is trained

    # The other weightings: R̃_t (RetailRocket GRU4Rec) and none (the paper's ablation).
    for weight, want in (("rtg", batch["reward_to_go_norm"]), ("none", np.ones(8)),
                         ("reward", w)):
        hp = prl.hyper(_config("gru4rec", prl_weight=weight))
        np.testing.assert_allclose(prl.loss_weights(batch, hp), want, rtol=1e-6)


# ------------------------------------------------------------------ inference prompt
def test_predict_uses_epsilon_at_the_true_position(task):
    state = _scaled_reward_embedding(prl.init(jax.random.key(0), task, _config()))
    batch = {k: v[:8].copy() for k, v in task.validation.arrays.items()}
    batch["position"][:4] = [0, 5, 49, 60]               # 60: clipped to the last row
    mean = task.extras["reward_mean"]
    t = np.minimum(batch["position"], 49)
    # R̃ = ε: the requested return ε · reward_mean[t], normalised by the same mean.
    r_norm = (2.0 * mean[t]) / mean[t]
    want = state.net.apply(state.params, batch["state"], batch["len_state"], t, r_norm)
    got = np.asarray(prl.predict(state, batch))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(got, prl.predict(state, batch, prl.with_epsilon(None, 2.0)))
    other = np.asarray(prl.predict(state, batch, prl.with_epsilon(None, 1.0)))
    assert not np.allclose(other, got, atol=1e-4)        # ε changes the scores
    moved = dict(batch, position=np.where(np.arange(8) == 1, 6, batch["position"]))
    changed = np.asarray(prl.predict(state, moved))
    assert not np.allclose(changed[1], got[1], atol=1e-4)   # the step is the query's own
    np.testing.assert_allclose(changed[[0, 2, 3]], got[[0, 2, 3]], rtol=1e-6)
    at_49 = dict(batch, position=np.where(batch["position"] == 60, 49, batch["position"]))
    np.testing.assert_allclose(prl.predict(state, at_49), got, rtol=1e-6)


# ------------------------------------------------------------------ the ε sweep
def test_sweep_evaluator_one_metric_set_per_epsilon(task):
    config = _config()
    state = _scaled_reward_embedding(prl.init(jax.random.key(0), task, config))
    evs = make_evaluators(prl, task, config)
    assert set(evs) == {"ranking", "prl_sweep"}
    sweep = evs["prl_sweep"]
    assert sweep.epsilons == (0.1, 1.0, 1.5, 2.0, 3.0)
    got = run_all(evs, state, None, "validation")
    base = {k: v for k, v in got.items() if not k.startswith("prl_sweep/")}
    assert "purchase/ndcg@1" in base and "click/hr@20" in base      # k = 1, 5, 10, 20
    per_eps = {}
    for e in sweep.epsilons:
        tag = f"prl_sweep/eps={e!r}/"
        per_eps[e] = {k[len(tag):]: v for k, v in got.items() if k.startswith(tag)}
        assert set(per_eps[e]) == set(base)
    assert sum(len(v) for v in per_eps.values()) + len(base) == len(got)
    assert set(sweep.metric_names("validation")) == {
        k[len("prl_sweep/"):] for k in got if k.startswith("prl_sweep/")}
    # ε = 2.0, the configured prompt, gives the default evaluator's numbers exactly.
    np.testing.assert_equal(per_eps[2.0], base)
    assert per_eps[0.1] != per_eps[3.0]                  # the sweep is not one number


# ------------------------------------------------------------------ configs
def test_configs_pinned_to_the_reference_scripts():
    c = get_config("prl.py", "dataset=retailrocket,encoder=gru4rec")
    assert (c.method, c.data.kind, c.data.prl_max_length) == ("prl", "prl", 50)
    assert (c.rl.prl_weight, c.rl.prl_dropout, c.rl.prl_epsilon) == ("rtg", 0.3, 2.0)
    assert (c.optim.lr, c.train.batch_size, c.train.num_epochs) == (0.005, 256, 30)
    assert c.train.eval_every == 2000 and tuple(c.eval.ks) == (1, 5, 10, 20)
    assert c.evals.ranking.type == "ranking" and c.eval.select_metric == "purchase/ndcg@10"
    assert tuple(c.evals.prl_sweep.epsilons) == (0.1, 1.0, 1.5, 2.0, 3.0)
    for enc in ("caser", "nextitnet", "sasrec"):
        assert get_config("prl.py", f"dataset=retailrocket,encoder={enc}").rl.prl_weight \
            == "reward"
    rc = get_config("prl.py", "dataset=yoochoose,encoder=caser")
    assert (rc.optim.lr, rc.rl.prl_dropout, rc.rl.prl_weight) == (0.01, 0.1, "reward")
    assert get_config("prl.py", "dataset=yoochoose,encoder=gru4rec").rl.prl_dropout == 0.3
    sas = get_config("prl.py", "dataset=yoochoose,encoder=sasrec")
    assert sas.model.dropout == 0.3                      # SASRec_PRL.py: one dropout rate
    assert get_config("prl.py", "encoder=caser").model.dropout is None   # Caser: 0


def test_bad_settings_are_named(task):
    with pytest.raises(ValueError, match="prl_weight"):
        prl.init(jax.random.key(0), task, _config(prl_weight="cumulative"))
    with pytest.raises(ValueError, match="prl_key_mask"):
        prl.init(jax.random.key(0), task, _config("sasrec", prl_key_mask="sum"))
    replay = types.SimpleNamespace(kind="replay", train={"state": np.zeros((2, 10))})
    with pytest.raises(ValueError, match="data.kind='prl'"):
        prl.init(jax.random.key(0), replay, _config())
    # ML-100K is read as session data (users as sessions, ratings as clicks), as ML-1M.
    ml = get_config("prl.py", "dataset=ml100k_recbole")
    assert ml.data.kind == "prl" and ml.eval.select_metric == "click/ndcg@10"


# ------------------------------------------------------------------ smoke, every encoder
@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_encoder_trains_two_steps_through_experiment_run(tmp_path, tiny, encoder):
    config = _config(encoder)
    # The sweep goes through the same evaluator machinery in the test above; here it would
    # only add a compilation per encoder.
    del config.evals["prl_sweep"]
    res = experiment.run(config, str(tmp_path), dataset=tiny, progress=False)
    assert res["steps_done"] == 2
    test = res["test"]
    assert np.isfinite(test["purchase/ndcg@1"]) and np.isfinite(test["click/hr@20"])


def test_unknown_choice_names_the_field_and_the_accepted_values():
    c = get_config("prl.py", "smoke")
    c.rl.prl_weight = "rewrd"
    with pytest.raises(ValueError, match=r"config\.rl\.prl_weight must be one of "
                                         r".*reward.*got 'rewrd'"):
        prl.hyper(c)


def test_eval_sessions_all_scores_every_held_out_session(tiny):
    """'short' (the reference) keeps held-out sessions of at most prl_max_length events;
    'all' keeps every one, so PRL is scored on the same queries as the replay methods."""
    c = get_config("prl.py", "smoke")
    c.data.prl_max_length = 4
    short = build_task(c, tiny)
    c.data.prl_eval_sessions = "all"
    every = build_task(c, tiny)
    replay = build_task(get_config("sqn.py", "smoke"), tiny)
    lengths = tiny.splits["test"].lengths
    assert short.test.size == int(lengths[lengths <= 4].sum()) < every.test.size
    np.testing.assert_array_equal(every.test.arrays["target"], replay.test.arrays["target"])
    # The training buffer is the same either way (only the evaluation scope changes).
    np.testing.assert_array_equal(every.train["action"], short.train["action"])
    c.data.prl_eval_sessions = "everything"
    with pytest.raises(ValueError, match=r"config\.data\.prl_eval_sessions must be one of"):
        build_task(c, tiny)
