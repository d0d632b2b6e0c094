"""Latent intent (Chang et al., WWW '23 Companion; intent_pcrec.md §1) on REINFORCE with
the top-K off-policy correction (Chen et al., WSDM 2019): the Gaussian KL and the soft
clip by hand, capped importance weights, the top-K factor and one REINFORCE loss against
NumPy, the stop-gradient between the policy and the VAE, FiLM / gating starting as the
identity, losses that fall on the tiny synthetic data, the intent-recovery metrics on hand
examples, and both configs run through ``jaxrec.main`` in smoke mode."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.tasks import build_task
from jaxrec.evaluators import intent as ev
from jaxrec.methods import latent_intent as li
from jaxrec.methods import reinforce as rf
from jaxrec.train.data import BatchSource

from tests.train.helpers import get_config, run_main


@pytest.fixture(scope="module")
def task(tiny):
    """The 'intent' task of the smoke config on the tiny synthetic data."""
    return build_task(get_config("latent_intent.py", "smoke"), tiny)


@pytest.fixture(scope="module")
def li_state(task):
    """The latent-intent smoke config's initial state on ``task`` (shared: init traces)."""
    return li.init(jax.random.key(0), task, get_config("latent_intent.py", "smoke"))


# ------------------------------------------------------------------ pure pieces
def test_gaussian_kl_by_hand():
    # Unit Gaussians one apart: ½ (0 − 0 + (1 + 1) / 1 − 1) = 0.5.
    np.testing.assert_allclose(li.gaussian_kl(jnp.array([1.0]), jnp.array([0.0]),
                                              jnp.array([0.0]), jnp.array([0.0])), 0.5)
    # q = N(0.5, 0.25), p = N(−0.5, 4): ½ (ln 4 − ln 0.25 + (0.25 + 1) / 4 − 1).
    want = 0.5 * (math.log(4) - math.log(0.25) + 1.25 / 4 - 1)
    got = li.gaussian_kl(jnp.array([0.5]), jnp.log(jnp.array([0.25])), jnp.array([-0.5]),
                         jnp.log(jnp.array([4.0])))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # Sums over the latent axis, zero for q = p.
    two = li.gaussian_kl(jnp.array([[1.0, 0.5]]), jnp.array([[0.0, math.log(0.25)]]),
                         jnp.array([[0.0, -0.5]]), jnp.array([[0.0, math.log(4.0)]]))
    np.testing.assert_allclose(two, [0.5 + want], rtol=1e-6)
    np.testing.assert_allclose(li.gaussian_kl(jnp.ones(3), jnp.ones(3), jnp.ones(3),
                                              jnp.ones(3)), 0.0, atol=1e-7)


def test_soft_clip_bounds():
    x = jnp.array([-1e6, -50.0, -5.0, -0.01, 0.0, 0.01, 5.0, 50.0, 1e6])
    y = np.asarray(li.soft_clip(x, 5.0))
    assert np.all(np.abs(y) <= 5.0) and np.all(np.abs(y[[0, -1]]) > 4.999)
    np.testing.assert_allclose(y, -y[::-1])                       # odd
    np.testing.assert_allclose(y[[3, 5]], [-0.01, 0.01], rtol=1e-5)   # ≈ x near 0
    np.testing.assert_allclose(y[6], 5 * math.tanh(1.0), rtol=1e-6)
    assert np.all(np.diff(y) >= 0)                                # monotone


def test_vae_log_variances_stay_clipped(task, li_state):
    """Blow the μ/ℓ output layers up: every log-variance stays inside (−c, c)."""
    state = li_state
    p = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 1e4 if any(getattr(k, "key", "") in ("prior_out", "post_out")
                                       for k in path) else x, state.params)
    out = state.net.apply(p, task.example_batch(), train=True,
                          rngs={"latent": jax.random.key(1)})
    for k in ("logvar_p", "logvar_q"):
        v = np.asarray(out["vae"][k])
        assert np.abs(v).max() <= 5.0 and np.abs(v).max() > 4.9, k
    assert np.all(np.isfinite(np.asarray(out["vae"]["kl"])))


def test_importance_weights_capped():
    pi = np.array([0.2, 0.01, 0.5, 0.3])
    beta = np.array([0.1, 0.1, 0.01, 0.3])
    w = rf.importance_weights(jnp.log(pi), jnp.log(beta), 10.0)
    np.testing.assert_allclose(w, [2.0, 0.1, 10.0, 1.0], rtol=1e-5)   # 50 capped at 10
    # A stop-gradient: the weight scales the gradient and receives none.
    g = jax.grad(lambda lp: rf.importance_weights(lp, jnp.log(beta), 10.0).sum())(
        jnp.log(pi))
    np.testing.assert_array_equal(g, 0.0)


def test_topk_correction_by_hand():
    pi = jnp.array([0.1, 0.5, 0.0])
    np.testing.assert_allclose(rf.topk_correction(pi, 3), [3 * 0.81, 3 * 0.25, 3.0],
                               rtol=1e-6)
    np.testing.assert_allclose(rf.topk_correction(pi, 10), 10 * (1 - np.asarray(pi)) ** 9,
                               rtol=1e-5)
    np.testing.assert_allclose(rf.topk_correction(pi, 1), 1.0)    # K = 1: no correction
    np.testing.assert_allclose(rf.topk_correction(pi, 0), 1.0)    # off


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("topk,off_policy", [(0, True), (4, True), (4, False)])
def test_reinforce_loss_against_numpy(topk, off_policy):
    rng = np.random.default_rng(0)
    pi_logits, beta_logits = rng.normal(size=(5, 7)) * 2, rng.normal(size=(5, 7)) * 2
    a = np.array([0, 3, 6, 2, 2])
    ret = np.array([0.2, 1.4, 0.3, 0.6, 2.0])
    hp = rf.Hyper(cap=3.0, topk=topk, off_policy=off_policy, beta_weight=0.5)
    loss, m = rf.reinforce_loss({"pi": jnp.asarray(pi_logits), "beta": jnp.asarray(beta_logits)},
                                {"action": jnp.asarray(a), "return": jnp.asarray(ret)}, hp)
    lp = _log_softmax(pi_logits)[np.arange(5), a]
    lb = _log_softmax(beta_logits)[np.arange(5), a]
    w = np.minimum(np.exp(lp - lb), 3.0) if off_policy else np.ones(5)
    lam = topk * (1 - np.exp(lp)) ** (topk - 1) if topk else np.ones(5)
    want = -np.mean(w * lam * ret * lp) + 0.5 * -np.mean(lb)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(m["weight"], w.mean(), rtol=1e-5)


# ------------------------------------------------------------------ the network
def test_rl_gradient_never_reaches_the_vae(task, li_state):
    """L_RL's gradient is zero on every VAE parameter (the stop-gradient on z̄), while the
    −ELBO's is not; the policy does read z̄ (its head has Z extra input rows)."""
    config = get_config("latent_intent.py", "smoke")
    state = li_state
    batch = task.example_batch()

    def rl(p):
        out = state.net.apply(p, batch, train=True, rngs={"latent": jax.random.key(2)})
        return rf.reinforce_loss(out, batch, state.hp)[0]

    def elbo(p):
        out = state.net.apply(p, batch, train=True, rngs={"latent": jax.random.key(2)})
        return li.vae_loss(out["vae"], batch, state.hp)[0]

    g_rl, g_vae = jax.jit(jax.grad(rl))(state.params), jax.jit(jax.grad(elbo))(state.params)
    vae_rl = jax.tree.leaves(g_rl["params"]["vae"])
    assert vae_rl and all(np.all(np.asarray(x) == 0) for x in vae_rl)
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(g_vae["params"]["vae"]))
    h, z = config.model.hidden, config.intent.latent_dim
    assert state.params["params"]["pi_head"]["kernel"].shape == (h + z, task.num_items)


@pytest.mark.parametrize("conditioning", ["film", "gate"])
def test_film_and_gate_start_as_identity(task, conditioning):
    """Zero-initialised FiLM / gate layers: at initialisation the policy reads s itself,
    so its scores equal the head applied to the GRU state."""
    config = get_config("latent_intent.py", f"smoke,conditioning={conditioning}")
    state = li.init(jax.random.key(0), task, config)
    batch = task.example_batch()
    out = state.net.apply(state.params, batch, train=False)
    head = state.params["params"]["pi_head"]
    np.testing.assert_allclose(out["pi"], out["state"] @ head["kernel"] + head["bias"],
                               rtol=1e-5, atol=1e-6)


def test_serving_needs_no_behaviour_signals(task, li_state):
    """predict reads the prior only: the same scores with and without the y arrays."""
    state = li_state
    batch = task.example_batch()
    bare = {k: v for k, v in batch.items() if not k.startswith("y_")}
    np.testing.assert_allclose(li.predict(state, batch), li.predict(state, bare), rtol=1e-6)


def test_kl_starts_near_zero(task, li_state):
    """Small-init μ/ℓ layers: KL ≈ 0 at initialisation (the paper's stability advice)."""
    state = li_state
    out = state.net.apply(state.params, task.example_batch(32), train=True,
                          rngs={"latent": jax.random.key(3)})
    assert float(out["vae"]["kl"].mean()) < 1e-2


@pytest.mark.parametrize("method,config_name", [(rf, "reinforce.py"),
                                                (li, "latent_intent.py")])
def test_losses_fall(task, method, config_name):
    """60 steps of batch 64 on the tiny data: the training loss falls by a clear margin
    (for the latent-intent model the −ELBO and the RL loss both fall)."""
    config = get_config(config_name, "smoke")
    config.train.batch_size = 64
    state = method.init(jax.random.key(0), task, config)
    source = BatchSource(task.train, 64, seed=0)
    step = jax.jit(method.train_step)
    hist = []
    for i in range(60):
        state, m = step(state, source[i], jax.random.key(i), None)
        hist.append(jax.device_get(m))
    first = {k: np.mean([h[k] for h in hist[:8]]) for k in hist[0]}
    last = {k: np.mean([h[k] for h in hist[-8:]]) for k in hist[0]}
    assert last["loss"] < 0.9 * first["loss"], (first["loss"], last["loss"])
    assert last["beta_loss"] < first["beta_loss"]
    if method is li:
        assert last["neg_elbo"] < 0.95 * first["neg_elbo"], (first, last)
        assert last["recon"] < first["recon"]


# ------------------------------------------------------------------ recovery metrics
def test_nmi_by_hand():
    a = np.array([0, 0, 1, 1])
    assert ev.nmi(a, np.array([5, 5, 7, 7])) == pytest.approx(1.0)   # relabelled
    assert ev.nmi(a, np.array([0, 1, 0, 1])) == pytest.approx(0.0)   # independent
    # a = [0,0,1,1], b = [0,0,0,1]: I = ½ ln 2 + ¼ ln(4/3)·... computed from the joint.
    b = np.array([0, 0, 0, 1])
    p = np.array([[0.5, 0.0], [0.25, 0.25]])
    pa, pb = p.sum(1), p.sum(0)
    mi = sum(p[i, j] * math.log(p[i, j] / (pa[i] * pb[j])) for i in range(2)
             for j in range(2) if p[i, j] > 0)
    h = lambda q: -sum(x * math.log(x) for x in q if x > 0)
    assert ev.nmi(a, b) == pytest.approx(mi / (0.5 * (h(pa) + h(pb))))


def test_roc_auc_with_ties_by_hand():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4, 0.8>0.1, 0.4=0.4, 0.4>0.1)
    assert ev.roc_auc(np.array([0.8, 0.4, 0.4, 0.1]),
                      np.array([True, True, False, False])) == pytest.approx(3.5 / 4)
    assert math.isnan(ev.roc_auc(np.array([0.1, 0.2]), np.array([True, True])))
    # class 0: 0.5 vs (0.6, 0.1) -> 1/2; class 1: (0.3, 0.8) vs 0.3 -> (½ + 1) / 2;
    # class 2 has no positive and is left out of the mean.
    probs = np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    assert ev.macro_auc(probs, np.array([0, 1, 1])) == pytest.approx((0.5 + 0.75) / 2)


def test_recovery_metrics_separate_clear_clusters():
    rng = np.random.default_rng(0)
    intent = rng.integers(0, 3, 600)
    centres = np.array([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    z = centres[intent] + rng.normal(size=(600, 2)) * 0.3
    m = ev.recovery_metrics(z, intent, 3, steps=200)
    assert m["probe_auc"] > 0.99 and m["probe_acc"] > 0.97 and m["nmi"] > 0.95
    noise = ev.recovery_metrics(rng.normal(size=(600, 2)), intent, 3, steps=200)
    assert 0.4 < noise["probe_auc"] < 0.6 and noise["nmi"] < 0.05


# ------------------------------------------------------------------ the entry point
@pytest.mark.parametrize("arg", ["reinforce.py:smoke,variant=plain",
                                 "latent_intent.py:smoke,conditioning=film"])
def test_configs_run_through_main(arg, tmp_path):
    proc = run_main([f"--config=configs/{arg}"], str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.load(open(os.path.join(tmp_path, "results.json")))
    assert np.isfinite(res["test"]["purchase/ndcg@10"])
    names = ("state",) if arg.startswith("reinforce") else li.LATENTS
    for n in names:
        assert 0.0 <= res["test"][f"intent/{n}/probe_auc"] <= 1.0
        assert 0.0 <= res["test"][f"intent/{n}/nmi"] <= 1.0


def test_intent_evaluator_needs_ground_truth(raw_dir):
    """On data without true intents the evaluator refuses with a message naming the fix."""
    from jaxrec.data import prepare as prep
    c = get_config("reinforce.py", f"smoke,dataset=retailrocket,raw_dir={raw_dir}/retailrocket")
    assert "intent" not in c.evals           # the config leaves it out on logged data
    c.evals.intent = {"type": "intent"}
    c.train.batch_size = 2
    t = build_task(c, prep.load("retailrocket", raw_dir=f"{raw_dir}/retailrocket"))
    from jaxrec.evaluators import make_evaluators
    with pytest.raises(ValueError, match="gt_intent.*remove config.evals.intent"):
        make_evaluators(rf, t, c)
