"""GazeReward (spec llm.md §2): <eye/> wrapping, GazeAdd shape, last-non-pad pooling, BT loss
value and gradient sign, pairwise accuracy by hand, regimes, the BiLSTM imitating the proxy,
and a smoke run through the trainer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.configs import gaze_reward as gaze_config
from jaxrec import experiment
from jaxrec.backbones import et_predictors as etp
from jaxrec.backbones.llama import LlamaConfig
from jaxrec.data import preferences as prefs
from jaxrec.methods import gaze_reward as gr
from jaxrec.peft import freeze

CFG = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                  with_lm_head=False)
B, T, M = 2, 7, 4


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3], np.int32)
    et_mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.int32)
    return dict(ids=rng.integers(6, 40, (B, T)).astype(np.int32) * mask, mask=mask,
                gaze=rng.random((B, T, 5)).astype(np.float32),
                et=rng.random((B, M, 5)).astype(np.float32), et_mask=et_mask)


def _init(variant, **kw):
    m = gr.GazeRewardModel(CFG, variant, **kw)
    b = _batch()
    return m, m.init(jax.random.key(0), b["ids"], b["mask"], b["gaze"], b["et"], b["et_mask"])


def test_concat_wraps_eye_block():
    m, params = _init("concat", features=(0, 1, 0, 1, 0))
    b = _batch()
    emb, mask = m.apply(params, *b.values(), method=gr.GazeRewardModel.inputs)
    assert emb.shape == (B, M + 2 + T, 16)
    np.testing.assert_array_equal(np.asarray(mask),
                                  np.concatenate([np.ones((B, 1)), b["et_mask"], np.ones((B, 1)), b["mask"]], 1))
    eye = params["params"]["eye_tokens"]
    np.testing.assert_allclose(emb[:, 0], np.broadcast_to(eye[0], (B, 16)))
    np.testing.assert_allclose(emb[:, M + 1], np.broadcast_to(eye[1], (B, 16)))
    proj = gr.ETProjector(16).apply({"params": params["params"]["et_proj"]}, b["et"][..., [1, 3]])
    np.testing.assert_allclose(emb[:, 1:M + 1], proj, rtol=1e-6)
    text = m.apply(params, b["ids"], method=lambda mod, i: mod.decoder.embed(i))
    np.testing.assert_allclose(emb[:, M + 2:], text, rtol=1e-6)


def test_add_keeps_shape_and_adds():
    m, params = _init("add")
    b = _batch()
    emb, mask = m.apply(params, *b.values(), method=gr.GazeRewardModel.inputs)
    assert emb.shape == (B, T, 16)
    np.testing.assert_array_equal(np.asarray(mask), b["mask"])
    text = m.apply(params, b["ids"], method=lambda mod, i: mod.decoder.embed(i))
    proj = gr.ETProjector(16).apply({"params": params["params"]["et_proj"]}, b["gaze"])
    np.testing.assert_allclose(emb, text + proj * b["mask"][..., None], rtol=1e-5, atol=1e-6)
    # the gaze moves the reward (the features reach the score)
    r1 = m.apply(params, *b.values())
    b2 = dict(b, gaze=b["gaze"] + 1.0)
    assert not np.allclose(r1, m.apply(params, *b2.values()))


@pytest.mark.parametrize("variant", ["none", "concat", "add"])
def test_pooled_at_last_real_token(variant):
    """Row 1 (4 real tokens + 3 pads) scores as its unpadded self: pooling ignores the pads."""
    m, params = _init(variant)
    b = _batch()
    full = m.apply(params, *b.values())
    one = {k: v[1:2] for k, v in b.items()}
    one.update(ids=one["ids"][:, :4], mask=one["mask"][:, :4], gaze=one["gaze"][:, :4])
    np.testing.assert_allclose(full[1], m.apply(params, *one.values())[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(gr.last_real_index(jnp.asarray(b["mask"]))), [6, 3])


def test_bt_loss_value_and_gradient_sign():
    r_c, r_r = jnp.array([1.0, 0.0]), jnp.array([0.0, 0.0])
    want = (np.log1p(np.exp(-1.0)) + np.log(2.0)) / 2
    np.testing.assert_allclose(gr.bt_loss(r_c, r_r), want, rtol=1e-6)
    g_c, g_r = jax.grad(gr.bt_loss, argnums=(0, 1))(r_c, r_r)
    # d/dr_c = -sigmoid(r_r - r_c) / B < 0: a descent step raises the chosen reward
    np.testing.assert_allclose(g_c, -np.array([1 / (1 + np.e), 0.5]) / 2, rtol=1e-6)
    assert (np.asarray(g_r) > 0).all()


def test_pairwise_accuracy_by_hand():
    assert gr.pairwise_accuracy([3, 1, 2, 2], [1, 2, 2, 0]) == 0.5   # the tie counts as wrong
    assert gr.pairwise_accuracy([1.0], [0.0]) == 1.0


@pytest.fixture(scope="module")
def smoke_task():
    c = gaze_config.get_config("smoke")
    from jaxrec.data import tasks
    parts = gr.preference_task(None, c)
    task = tasks.Task(name="synthetic", kind=c.data.kind, num_items=1, batch_size=c.train.batch_size,
                      train=parts.train, validation=parts.validation, test=parts.test,
                      item_freq=np.zeros(1, np.int64), items=None, stats={}, extras=parts.extras)
    return c, task


def test_lora_regime_freezes_the_decoder(smoke_task):
    c, task = smoke_task
    c = gaze_config.get_config("smoke,regime=lora")
    state = gr.init(jax.random.key(0), task, c)
    consts = gr.make_consts(c, task)
    step = jax.jit(gr.train_step)
    new = state
    for s in range(3):   # the warm-up's first learning rate is 0
        new, metrics = step(new, task.example_batch(8), jax.random.key(s), consts)
    # the frozen decoder weights are consts, not state: neither trained nor checkpointed
    assert "embed_tokens" not in state.params["decoder"]
    assert "kernel" not in state.params["decoder"]["layers_0"]["self_attn"]["q_proj"]
    flat0 = {freeze.path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(gr.full_params(state, consts))}
    flat1 = {freeze.path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(gr.full_params(new, consts))}
    q = "decoder/layers_0/self_attn/q_proj/"
    assert np.array_equal(flat0["params/" + q + "kernel"], flat1["params/" + q + "kernel"])
    assert not np.array_equal(flat0["params/" + q + "lora_b"], flat1["params/" + q + "lora_b"])   # starts at 0
    assert not np.array_equal(flat0["params/et_proj/Dense_0/kernel"], flat1["params/et_proj/Dense_0/kernel"])
    assert np.isfinite(float(metrics["loss"]))


def test_bt_training_loss_falls(smoke_task):
    _, task = smoke_task
    c = gaze_config.get_config("smoke,variant=add")
    c.train.num_steps = 40
    c.model.p1 = c.model.p2 = 0.0     # fitting 16 pairs: measure the optimiser, not dropout noise
    state = gr.init(jax.random.key(0), task, c)
    step = jax.jit(gr.train_step)
    batch = task.example_batch(16)
    consts = gr.make_consts(c, task)        # once: rebuilding the frozen leaves every step cost minutes
    losses = []
    for s in range(40):
        state, m = step(state, batch, jax.random.key(s), consts)
        losses.append(float(m["loss"]))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


def test_bilstm_imitates_the_proxy():
    pairs = prefs.synthetic_pairs(60, seed=2)
    texts = pairs.chosen + pairs.rejected
    tok = prefs.PieceTokenizer(texts, 5)
    ids = np.zeros((len(texts), 16), np.int32)
    mask = np.zeros_like(ids)
    y = np.zeros((len(texts), 16, 5), np.float32)
    for i, t in enumerate(texts):
        e, w = tok.encode_words(t.split())
        e, w = e[:16], w[:16]
        ids[i, :len(e)], mask[i, :len(e)] = e, 1
        y[i, :len(e)] = prefs.words_to_tokens(prefs.proxy_features(t.split()), w)
    cfg, params, losses = etp.train_et_bilstm(ids, mask, y, tok.vocab_size, steps=60, batch_size=32)
    assert losses[-5:].mean() < 0.3 * losses[:3].mean()
    m = int(mask[0].sum())
    pred = etp.bilstm_predictor(cfg, params, tok, 16)(texts[0].split(), ids[0][:m], None)
    assert pred.shape == (m, 5)


def test_smoke_run_through_the_trainer(tmp_path, smoke_task):
    c, task = smoke_task
    res = experiment.run(c, str(tmp_path), task=task, progress=False)
    assert 0.0 <= res["test"]["accuracy"] <= 1.0 and np.isfinite(res["test"]["bt_loss"])


def test_bad_config_values(smoke_task):
    _, task = smoke_task
    with pytest.raises(ValueError, match="variant"):
        gaze_config.get_config("variant=sum")
    c = gaze_config.get_config("smoke")
    c.model.regime = "half"
    with pytest.raises(ValueError, match="regime"):
        gr.init(jax.random.key(0), task, c)


def test_pretrained_decoder_is_loaded(tmp_path):
    """pretrain_steps > 0: the task pretrains the decoder once (cached under cache_dir), the
    reward model starts from it, and a second build loads the same weights from the cache."""
    import os
    from jaxrec.data import tasks
    c = gaze_config.get_config("smoke,regime=lora")
    c.model.pretrain_steps = 30
    os.environ["JAXREC_DATA_DIR"], old = str(tmp_path), os.environ["JAXREC_DATA_DIR"]
    try:
        task = tasks.build_task(c)
        cached = os.listdir(tmp_path / "decoders")
        task_again = tasks.build_task(c)
    finally:
        os.environ["JAXREC_DATA_DIR"] = old
    assert len(cached) == 1 and cached[0].startswith("decoder-")
    assert os.listdir(tmp_path) == ["decoders"]      # the kind loads no interaction dataset
    assert task.name == "preferences/synthetic" and task.num_items == 0
    pre = task.extras["pretrained_decoder"]
    assert "lm_head" not in pre
    first, last = task.extras["pretrain_loss"]
    assert last < 0.8 * first                      # the LM loss falls
    np.testing.assert_array_equal(task_again.extras["pretrained_decoder"]["norm"]["weight"], pre["norm"]["weight"])
    state = gr.init(jax.random.key(0), task, c)
    dec = gr.full_params(state, gr.make_consts(c, task))["params"]["decoder"]
    np.testing.assert_array_equal(dec["embed_tokens"]["embedding"], pre["embed_tokens"]["embedding"])
    np.testing.assert_array_equal(dec["layers_0"]["self_attn"]["q_proj"]["kernel"],
                                  pre["layers_0"]["self_attn"]["q_proj"]["kernel"])
    assert "lora_a" in dec["layers_0"]["self_attn"]["q_proj"]


@pytest.mark.parametrize("variant", ["none", "add"])
def test_frozen_regime_trains_only_the_head(smoke_task, variant):
    """Every variant builds its regime split (patterns of absent modules are dropped): the
    state holds exactly the head leaves, the consts the whole decoder but its final norm."""
    _, task = smoke_task
    c = gaze_config.get_config(f"smoke,regime=frozen,variant={variant}")
    state = gr.init(jax.random.key(0), task, c)
    consts = gr.make_consts(c, task)
    top = {"none": ["decoder", "score"], "add": ["decoder", "et_proj", "score"]}[variant]
    assert sorted(state.params) == top and list(state.params["decoder"]) == ["norm"]
    assert "norm" not in consts["frozen"]["decoder"] and "layers_1" in consts["frozen"]["decoder"]
    trainable, _ = freeze.count_params(state.params)
    frozen, _ = freeze.count_params(consts["frozen"])
    assert 0 < trainable < frozen
