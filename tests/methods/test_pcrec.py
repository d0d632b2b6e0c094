"""PCRec (Sun et al., SIGIR 2022; intent_pcrec.md §2): the entropy against NumPy's
histogram and the reference's bin rule, μ = 0.5·b for equal peers, the layer-wise convex
combination against a NumPy computation, the parameter-wise mask fraction, the noise
scale, the per-peer learning rates, vmapped peers equal to separately trained networks
step for step, the cooperation at the epoch boundary, the §2.6 loaders on hand examples,
the SASRec conv-FFN option and YouTube-DNN pooling, and the configs through jaxrec.main."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import experiment
from jaxrec.data import pcrec as pcrec_data
from jaxrec.data.sessions import Sessions
from jaxrec.data.tasks import build_task
from jaxrec.encoders import EncoderConfig, SASRec, YouTubeDNN
from jaxrec.methods import pcrec

from tests.train.helpers import get_config, run_main


def np_entropy_reference(x, n=10):
    """The reference's ``entropy()`` (SASRec_LW.py) in NumPy, float32 edges (on these
    test tensors min + 10·scale rounds to at least the maximum, which is thus dropped)."""
    x = np.asarray(x, np.float32).reshape(-1)
    lo, hi = x.min(), x.max()
    scale = np.float32((hi - lo) / np.float32(n))
    h = 0.0
    for i in range(n):
        p = np.sum((x >= lo + np.float32(i) * scale) & (x < lo + np.float32(i + 1) * scale)) / len(x)
        if p:
            h -= p * np.log(p)
    return h


def np_hist_entropy(x, n=10):
    counts, _ = np.histogram(np.asarray(x, np.float64).reshape(-1), bins=n)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def tree(rng, scale=1.0):
    k1, k2, k3 = jax.random.split(rng, 3)
    return {"embed": {"embedding": scale * jax.random.normal(k1, (30, 8))},
            "block_0": {"kernel": scale * jax.random.normal(k2, (8, 8)),
                        "bias": scale * jax.random.normal(k3, (8,))}}


# ------------------------------------------------------------------ criteria
def test_entropy_on_a_hand_example():
    x = jnp.array([0.0, 0.0, 1.0, 1.0])
    # Two bins: NumPy closes the last one (p = ½, ½ -> ln 2); the reference loses the
    # maximum (only the two zeros are counted, p = ½ -> ½ ln 2).
    np.testing.assert_allclose(pcrec.entropy(x, 2, include_max=True), np.log(2), rtol=1e-6)
    np.testing.assert_allclose(pcrec.entropy(x, 2), 0.5 * np.log(2), rtol=1e-6)
    assert float(pcrec.entropy(jnp.ones((5, 3)))) == 0.0                   # constant
    assert float(pcrec.entropy(jnp.ones((5, 3)), include_max=True)) == 0.0


@pytest.mark.parametrize("shape", [(1000,), (64, 48), (7, 3, 5)])
def test_entropy_equals_numpy_histogram(shape):
    x = np.random.RandomState(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(pcrec.entropy(x, 10, include_max=True), np_hist_entropy(x),
                               rtol=1e-5)
    np.testing.assert_allclose(pcrec.entropy(x), np_entropy_reference(x), rtol=1e-5)
    # the same under jit (XLA may fuse the edge arithmetic; the two ends are explicit)
    np.testing.assert_allclose(jax.jit(pcrec.entropy)(x), pcrec.entropy(x), rtol=1e-6)
    # the dropped maximum: one element out of numel
    assert pcrec.entropy(x) < pcrec.entropy(x, 10, include_max=True)


def test_l1_contrast_by_hand():
    np.testing.assert_allclose(pcrec.l1_contrast(jnp.array([1.0, -2.0]), jnp.array([1.0])),
                               (3 - 1) / (3 + 1))
    assert float(pcrec.l1_contrast(jnp.zeros(3), jnp.zeros(3))) == 0.0


# ------------------------------------------------------------------ transplanting
@pytest.mark.parametrize("criterion", ["entropy", "l1"])
def test_mu_is_half_b_for_equal_peers(criterion):
    p = tree(jax.random.key(0))
    new, mus = pcrec.layerwise(p, p, criterion, a=30.0, b=0.8)
    for mu in jax.tree.leaves(mus):
        np.testing.assert_allclose(mu, 0.4, rtol=1e-6)
    # 0.4·W + 0.6·W = W
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new, p)


def test_layerwise_is_the_convex_combination():
    p, q = tree(jax.random.key(1)), tree(jax.random.key(2), scale=0.3)
    q["block_0"]["kernel"] = q["block_0"]["kernel"].at[0, 0].set(5.0)   # a skewed histogram
    a, b = 2.0, 1.0
    new, mus = pcrec.layerwise(p, q, "entropy", a=a, b=b)
    for path in (("embed", "embedding"), ("block_0", "kernel"), ("block_0", "bias")):
        w, v = p[path[0]][path[1]], q[path[0]][path[1]]
        d = np_entropy_reference(w) - np_entropy_reference(v)
        mu = b / (1 + np.exp(-a * d))
        np.testing.assert_allclose(mus[path[0]][path[1]], mu, rtol=1e-5)
        np.testing.assert_allclose(new[path[0]][path[1]], mu * np.asarray(w)
                                   + (1 - mu) * np.asarray(v), rtol=1e-5, atol=1e-6)
        assert 0.0 < mu < 1.0
    # a different μ per tensor (not the reference's reuse of the previous one)
    assert len({round(float(m), 6) for m in jax.tree.leaves(mus)}) == 3
    # select: only matching paths change
    new, mus = pcrec.layerwise(p, q, "l1", a=a, b=b, select="embed")
    np.testing.assert_array_equal(new["block_0"]["kernel"], p["block_0"]["kernel"])
    assert np.isnan(mus["block_0"]["kernel"])
    d = (np.abs(p["embed"]["embedding"]).sum() - np.abs(q["embed"]["embedding"]).sum()) / (
        np.abs(p["embed"]["embedding"]).sum() + np.abs(q["embed"]["embedding"]).sum())
    np.testing.assert_allclose(mus["embed"]["embedding"], 1 / (1 + np.exp(-a * d)), rtol=1e-5)


@pytest.mark.parametrize("percent", [50.0, 30.0])
def test_parameterwise_mask_fraction(percent):
    p, q = tree(jax.random.key(3)), tree(jax.random.key(4))
    big = jax.random.normal(jax.random.key(5), (100, 50))
    p["block_0"]["kernel"], q["block_0"]["kernel"] = big, big + 100.0
    new = pcrec.parameterwise(p, q, percent)
    w, out = np.asarray(big), np.asarray(new["block_0"]["kernel"])
    replaced = out != w
    assert abs(replaced.mean() - percent / 100) < 1e-3
    tau = np.percentile(np.abs(w), percent)
    np.testing.assert_array_equal(replaced, np.abs(w) <= tau)
    np.testing.assert_array_equal(out[replaced], w[replaced] + 100.0)     # the peer's entries
    np.testing.assert_array_equal(new["block_0"]["bias"], p["block_0"]["bias"])  # ndim 1


def test_noise_scale_and_mask():
    w = jax.random.normal(jax.random.key(6), (200, 100))
    for epoch, std in ((0, 0.05), (29, 0.05), (30, 0.05 ** 2)):
        out = pcrec.add_noise({"k": w}, jax.random.key(7), jnp.int32(epoch), 0.05, 30)["k"]
        low = np.abs(np.asarray(w)) < np.percentile(np.abs(np.asarray(w)), 50)
        delta = np.asarray(out) - np.asarray(w)
        assert np.all(delta[~low] == 0)
        np.testing.assert_allclose(delta[low].std(), std, rtol=0.05)


# ------------------------------------------------------------------ schedule
def test_learning_rate_schedule():
    np.testing.assert_allclose(pcrec.peer_lr_scales(2), [0.5, 1.0], atol=1e-12)
    np.testing.assert_allclose(pcrec.peer_lr_scales(1), [1.0])
    np.testing.assert_allclose(pcrec.peer_lr_scales(4),
                               [(1 + np.cos(np.pi * 3 / 4)) / 2, 0.5,
                                (1 + np.cos(np.pi / 4)) / 2, 1.0], atol=1e-12)
    lr = lambda s, cos=True: np.asarray(pcrec.peer_learning_rates(s, 1e-3, [0.5, 1.0], 100, cos))
    np.testing.assert_allclose(lr(0), [5e-4, 1e-3], rtol=1e-6)
    np.testing.assert_allclose(lr(50), [2.5e-4, 5e-4], rtol=1e-5)
    np.testing.assert_allclose(lr(25), np.array([5e-4, 1e-3]) * (1 + np.cos(np.pi / 4)) / 2,
                               rtol=1e-5)
    np.testing.assert_allclose(lr(100), [0, 0], atol=1e-12)
    np.testing.assert_allclose(lr(70, cos=False), [5e-4, 1e-3], rtol=1e-6)


# ------------------------------------------------------------------ the method
@pytest.fixture(scope="module")
def seq_task(tiny):
    return build_task(get_config("pcrec.py", "variant=none,peers=2,smoke"), tiny)


def _config(arg, **pc):
    c = get_config("pcrec.py", arg + ",smoke")
    for k, v in pc.items():
        c.pcrec[k] = v
    return c


def _run_steps(config, task, n):
    state = pcrec.init(jax.random.key(0), task, config)
    consts = pcrec.make_consts(config, task)
    step = jax.jit(pcrec.train_step)
    out = [state]
    for i in range(n):
        state, m = step(state, task.example_batch(), jax.random.fold_in(jax.random.key(1), i),
                        consts)
        out.append(state)
    return out, m


def test_peers_vmapped_equal_separate_models(seq_task):
    both, m = _run_steps(_config("variant=none,peers=2"), seq_task, 3)
    np.testing.assert_allclose([m["lr/peer0"] / m["lr/peer1"]], [0.5], rtol=1e-6)
    for k, (seed, scale) in enumerate(((10, 0.5), (11, 1.0))):
        alone, _ = _run_steps(_config("variant=none,peers=1", shuffle_seeds=(seed,),
                                      lr_scales=(scale,)), seq_task, 3)
        # Float32 round-off differs between the batched and the single matmuls: atol is
        # 0.1% of one step's update (lr 1e-3), while a wrong lr, batch or key would be off
        # by a whole update.
        # The key bias is skipped: it shifts every logit of a query alike, so its true
        # gradient is 0 and Adam turns pure round-off into full-size steps.
        for s_both, s_alone in zip(both, alone):
            for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(s_both.params)[0],
                                    jax.tree.leaves(s_alone.params)):
                if "key/bias" in pcrec.path_str(path):
                    continue
                np.testing.assert_allclose(x[k], y[0], rtol=1e-5, atol=1e-6,
                                           err_msg=pcrec.path_str(path))
    # and the peers did train apart, by much more than the tolerance
    p0 = both[0].params["params"]["head_s"]["kernel"]
    p = both[-1].params["params"]["head_s"]["kernel"]
    assert not np.allclose(p[0], p[1])
    assert np.abs(p - p0).max() > 1e-3


@pytest.mark.parametrize("variant", ["lw", "pw"])
def test_cooperation_runs_at_the_epoch_boundary(seq_task, variant):
    """With zero learning rates only the cooperation moves the weights: nothing before
    the first step of epoch 2, exactly one transplant of the initial weights after it."""
    spe = seq_task.steps_per_epoch
    states, _ = _run_steps(_config(f"variant={variant}", lr_scales=(0.0, 0.0)), seq_task,
                           spe + 1)
    p0 = states[0].params
    jax.tree.map(np.testing.assert_array_equal, states[spe].params, p0)
    hp = states[0].hp
    # jitted like the step: a value within an ulp of an interior bin edge may fall on
    # either side depending on how XLA fuses the edge arithmetic, and with a = 30 one
    # element moves μ by a few percent.
    expected = jax.jit(pcrec.cooperate, static_argnums=1)(p0, hp, jnp.int32(0),
                                                          jax.random.key(0))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6),
                 states[spe + 1].params, expected)
    # peer 0 moved towards peer 1 and vice versa
    e0 = p0["params"]["encoder"]["item_embed"]["embedding"]
    e1 = states[spe + 1].params["params"]["encoder"]["item_embed"]["embedding"]
    assert not np.allclose(e0, e1)
    if variant == "lw":
        mu = jax.jit(pcrec.layerwise, static_argnums=(2, 3, 4))(
            pcrec.common.tree_index(p0, 0), pcrec.common.tree_index(p0, 1),
            "entropy", 30.0, 1.0)[1]
        mu = mu["params"]["encoder"]["item_embed"]["embedding"]
        np.testing.assert_allclose(e1[0], mu * e0[0] + (1 - mu) * e0[1], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ data (§2.6)
def _sessions(seqs):
    items = np.concatenate([np.asarray(s, np.int32) for s in seqs])
    lens = [len(s) for s in seqs]
    n = len(seqs)
    return Sessions(items=items, is_buy=np.zeros(len(items), np.int8),
                    timestamps=np.arange(len(items), dtype=np.int64),
                    offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                    session_ids=np.arange(n, dtype=np.int64),
                    raw_session_ids=np.array([str(i) for i in range(n)]))


class _Dataset:
    def __init__(self, seqs):
        self._s = _sessions(seqs)

    def all_sessions(self):
        return self._s


def test_dedup_keeps_last_occurrences():
    np.testing.assert_array_equal(pcrec_data.dedup_keep_last(np.array([1, 2, 1, 3, 2, 4])),
                                  [1, 3, 2, 4])


def test_loaders_on_a_hand_example():
    import ml_collections
    seqs = [[0, 1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 2], [3, 4], [5, 6, 5, 7, 8, 6]]
    c = ml_collections.ConfigDict({"data": {"state_len": 3, "loo_min_len": 5,
                                            "min_unique": 0, "padding": "left",
                                            "loo_train": "windows"}})
    parts = pcrec_data.sequence_task(_Dataset(seqs), c)
    # users 0, 1, 3 kept (len >= 5); test of user 0 predicts 6 from [3, 4, 5] (+1 shifted)
    np.testing.assert_array_equal(parts.test.arrays["session"], [0, 1, 3])
    np.testing.assert_array_equal(parts.test.arrays["state"][0], [4, 5, 6])
    np.testing.assert_array_equal(parts.test.arrays["target"], [6, 2, 6])
    np.testing.assert_array_equal(parts.validation.arrays["target"], [5, 1, 8])
    np.testing.assert_array_equal(parts.validation.arrays["state"][2], [7, 6, 8])
    # user 1 trains on t = [1, 1, 1]: one window, left-padded, next-item targets (dense)
    row = np.flatnonzero((parts.train["state"] == [0, 2, 2]).all(1))
    assert len(row) == 1
    np.testing.assert_array_equal(parts.train["targets"][row[0]], [-1, 1, 1])
    c.data.min_unique = 4                 # user 1 has 2 distinct items
    parts = pcrec_data.sequence_task(_Dataset(seqs), c)
    np.testing.assert_array_equal(parts.test.arrays["session"], [0, 3])

    c.data.min_unique = 4
    parts = pcrec_data.bpr_task(_Dataset(seqs), c)
    # user 3: dedup [5, 7, 8, 6] -> train (5, 7), valid 8, test 6
    np.testing.assert_array_equal(parts.test.arrays["target"], [6, 6])
    np.testing.assert_array_equal(parts.validation.arrays["target"], [5, 8])
    np.testing.assert_array_equal(parts.train["user"], [0] * 5 + [1] * 2)
    np.testing.assert_array_equal(parts.train["item"], [0, 1, 2, 3, 4, 5, 7])
    np.testing.assert_array_equal(parts.test.arrays["state"][1], [0, 0, 0, 6, 8])
    np.testing.assert_array_equal(parts.extras["history"], parts.test.arrays["state"])


def test_negatives_avoid_the_history():
    from jaxrec.encoders.bpr import sample_negatives
    hist = jnp.array([[0, 1, 2, 3], [5, 6, 7, 8]])          # shifted ids: items 0-2 / 4-7
    neg = sample_negatives(jax.random.key(0), jnp.repeat(hist, 500, axis=0), 10, tries=8)
    neg = np.asarray(neg).reshape(2, 500)
    assert not np.isin(neg[0], [0, 1, 2]).any() and not np.isin(neg[1], [4, 5, 6, 7]).any()
    assert set(neg[0]) == set(range(3, 10))


# ------------------------------------------------------------------ encoders
def test_sasrec_conv_ffn_is_the_dense_map():
    cfg = EncoderConfig(embed_dim=8, ffn_dim=8, state_len=5, padding="left",
                        norm_style="post_ln", attn_bias=True, attn_out_proj=False,
                        input_ln=False, dropout=0.0)
    items = jnp.array([[0, 0, 3, 1, 2], [4, 1, 2, 3, 1]])
    dense = SASRec(6, cfg)
    conv = SASRec(6, cfg.replace(ffn_conv=True))
    p = dense.init(jax.random.key(0), items)
    pc = conv.init(jax.random.key(0), items)
    assert pc["params"]["block_0"]["ffn"]["inner_cnn"]["kernel"].shape == (1, 8, 8)
    ffn = p["params"]["block_0"]["ffn"]
    pc = jax.tree.map(lambda x: x, pc)
    pc["params"]["block_0"]["ffn"] = {
        "inner_cnn": {"kernel": ffn["inner"]["kernel"][None], "bias": ffn["inner"]["bias"]},
        "readout_cnn": {"kernel": ffn["outer"]["kernel"][None], "bias": ffn["outer"]["bias"]}}
    for k in ("item_embed", "pos_embed"):
        pc["params"][k] = p["params"][k]
    pc["params"]["block_0"]["attention"] = p["params"]["block_0"]["attention"]
    pc["params"]["block_0"]["ln_attn"] = p["params"]["block_0"]["ln_attn"]
    pc["params"]["block_0"]["ln_ffn"] = p["params"]["block_0"]["ln_ffn"]
    np.testing.assert_allclose(conv.apply(pc, items), dense.apply(p, items), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("over_pads", [False, True])
def test_youtube_dnn_pooling(over_pads):
    cfg = EncoderConfig(embed_dim=4, state_len=4, padding="left", mlp_layers=1,
                        mean_over_pads=over_pads)
    enc = YouTubeDNN(5, cfg)
    items = jnp.array([[0, 0, 2, 3]])
    p = enc.init(jax.random.key(0), items)
    table = np.asarray(p["params"]["item_embed"]["embedding"])
    w, b = (np.asarray(p["params"]["fc_0"][k]) for k in ("kernel", "bias"))
    h = lambda x: np.maximum(x @ w + b, 0)
    real = (h(table[2]) + h(table[3])) / 2
    want = (2 * real + 2 * h(np.zeros(4))) / 4 if over_pads else real
    np.testing.assert_allclose(enc.apply(p, items)[0], want, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ end to end
@pytest.mark.parametrize("arg", ["base=youtube,variant=noise", "base=bpr,variant=pw",
                                 "base=sasrec,variant=lw,criterion=l1"])
def test_configs_run_in_smoke_mode(tiny, tmp_path, arg):
    c = get_config("pcrec.py", arg + ",smoke")
    res = experiment.run(c, str(tmp_path), dataset=tiny, progress=False)
    assert res["steps_done"] == res["num_steps"] >= 2 * res["steps_per_epoch"]
    assert 0.0 <= res["test"]["all/mrr@20"] <= res["test"]["all/hr@20"] <= 1.0
    assert set(res["best_validation"]) >= {"all/mrr@5", "all/ndcg@20", "all/hr@5"}


def test_main_entry_point_smoke(tmp_path):
    proc = run_main(["--config=configs/pcrec.py:smoke"], str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.load(open(os.path.join(tmp_path, "results.json")))
    assert res["label"] == "sasrec-lw" and res["steps_done"] > res["steps_per_epoch"]
