"""IISAN / IISAN-Versa (spec iisan.md): parameter counts at paper scale from abstract shapes,
gates and SANBs at init, the GLD table, DTL shapes, the in-batch loss against a NumPy
transcription of the released loop, cached == uncached training, the tap cache's resume,
and a falling loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data import tap_cache
from jaxrec.data.tasks import build_task
from jaxrec.methods import iisan
from jaxrec.peft import freeze
from jaxrec.peft.side_adapters import (IISANItemTower, SideConfig, gate_values, gld_blocks,
                                       tap_indices)

from tests.numerics import assert_trees_close
from tests.train.helpers import get_config


# ------------------------------------------------------------------ paper-scale counts
def test_trainable_parameters_at_bert_base_vit_base():
    """Spec §1.12: IISAN 4,113,877 exactly; FFT ~194.9M, Adapter ~4.97M, LoRA ~0.83M."""
    c = get_config("iisan.py", "towers=base")
    counts = {}
    for variant in ("iisan", "fft", "adapter", "lora"):
        c.iisan.variant = variant
        counts[variant] = iisan.trainable_count(iisan.build_spec(c, 1000))
    assert counts["iisan"] == (4_113_877, 4_113_877)      # cached: no tower in the model
    trainable_fft, total = counts["fft"]
    assert trainable_fft == total
    # BERT-base without pooler (108,891,648) + ViT-B/16 without pooler or classifier (85,798,656)
    # + heads 2 x 49,216 + fusion 8,256 + user encoder 100,224.
    assert trainable_fft == 108_891_648 + 85_798_656 + 2 * 49_216 + 8_256 + 100_224
    # Houlsby: 2 adapters x 24 layers x 99,136, plus the FFT heads and user encoder.
    assert counts["adapter"][0] == 48 * 99_136 + 2 * 49_216 + 8_256 + 100_224
    # LoRA r=8 on Q and V of 24 layers (2 x 8 x 768 x 2 each) + their biases.
    assert counts["lora"][0] == 24 * 2 * (2 * 8 * 768 + 768) + 2 * 49_216 + 8_256 + 100_224


def test_uncached_iisan_freezes_the_towers():
    c = get_config("iisan.py", "towers=base,cached=0")
    spec = iisan.build_spec(c, 1000)
    params = iisan.init_params(spec, jax.random.key(0), abstract=True)
    labels = iisan.labels_of(spec, params)
    trainable, total = freeze.count_params(params, labels)
    assert trainable == 4_113_877 and total > 190_000_000
    train, frozen = freeze.split_trainable(params, labels)
    assert set(train) == {"tower", "user"}
    assert set(frozen) == {"text_backbone", "image_backbone"}


# ------------------------------------------------------------------ modules
def _tower_params(cfg, n=3):
    t = jnp.ones((n, cfg.text_taps, cfg.text_dim))
    v = jnp.ones((n, cfg.image_taps, cfg.image_dim))
    tower = IISANItemTower(cfg)
    return tower, tower.init(jax.random.key(0), t, v)["params"], t, v


def test_gates_start_at_one_half_and_sanbs_near_identity():
    cfg = SideConfig(text_dim=48, image_dim=48, text_bottleneck=8, image_bottleneck=8,
                     inter_bottleneck=8, embed_dim=16)
    _, params, _, _ = _tower_params(cfg)
    gates = gate_values(params)
    assert sorted(gates) == ["image_side", "inter_side", "text_side"]
    assert all(len(g) == 7 and np.allclose(g, 0.5) for g in gates.values())
    sanb = params["text_side"]["sanb_0"]
    from jaxrec.peft.adapters import HoulsbyAdapter
    x = jax.random.normal(jax.random.key(1), (5, 48))
    y = HoulsbyAdapter(8).apply({"params": sanb}, x)
    # N(0, 0.01^2) weights: the residual branch is ~1e-3 of the input.
    assert float(jnp.abs(y - x).max()) < 0.01 * float(jnp.abs(x).max())
    # One gate moves: sigmoid(theta / 0.1).
    assert np.isclose(float(jax.nn.sigmoid(0.1 / 0.1)), 0.7310586, atol=1e-6)


def test_gld_table():
    """Spec §2.4: the scripts' block lists and the derived hidden-state taps."""
    assert gld_blocks(12) == (1, 3, 5, 7, 9, 11)
    assert gld_blocks(24) == (3, 7, 11, 15, 19, 23)
    assert gld_blocks(28) == (2, 7, 12, 17, 22, 27)
    assert gld_blocks(32) == (1, 7, 13, 19, 25, 31)
    assert gld_blocks(48) == (2, 11, 20, 29, 38, 47)
    assert gld_blocks(56) == (5, 15, 25, 35, 45, 55)
    assert gld_blocks(80) == (4, 19, 34, 49, 64, 79)       # stride 15, not ceil(80/6) = 14
    assert gld_blocks(80, stride=14) == (9, 23, 37, 51, 65, 79)
    assert gld_blocks(6, 2) == (2, 5)
    assert tap_indices(12) == (0, 2, 4, 6, 8, 10, 12)        # IISAN's LayerDrop (spec §1.2)
    assert tap_indices(4, 2) == (0, 2, 4)
    with pytest.raises(ValueError, match="do not fit"):
        gld_blocks(4, 3, stride=2)


def test_dtl_shapes_and_unequal_tap_counts():
    """Versa (spec §2.5–2.6): 8192-wide text, 768-wide image would give 7 DTLs 8192 -> 768;
    here 48 -> 32, text with 5 taps and image with 3: the inter network has 3 blocks on the
    last 3 taps, each with its own DTL; heads Lin(D -> d) -> Lin(d -> d)."""
    cfg = SideConfig(text_taps=5, image_taps=3, text_dim=48, image_dim=32, text_bottleneck=8,
                     image_bottleneck=4, inter_bottleneck=6, embed_dim=16, heads="versa")
    tower, params, t, v = _tower_params(cfg)
    inter = params["inter_side"]
    assert sorted(k for k in inter if k.startswith("dtl_")) == ["dtl_0", "dtl_1", "dtl_2"]
    assert all(inter[f"dtl_{k}"]["kernel"].shape == (48, 32) for k in range(3))
    assert inter["sanb_0"]["down"]["kernel"].shape == (32, 6)
    assert len([k for k in params["text_side"] if k.startswith("sanb_")]) == 5
    assert params["text_side"]["sanb_0"]["down"]["kernel"].shape == (48, 8)
    assert params["image_side"]["sanb_0"]["down"]["kernel"].shape == (32, 4)
    assert params["text_proj"]["kernel"].shape == (48, 16)
    assert params["text_head"]["kernel"].shape == (16, 16)
    assert params["inter_proj"]["kernel"].shape == (32, 32)
    assert params["fusion"]["kernel"].shape == (48, 16)
    assert tower.apply({"params": params}, t, v).shape == (3, 16)
    # The inter network only sees the last 3 text taps: changing the first two text taps
    # changes the output only through the text side network.
    t2 = t.at[:, :2].set(5.0)
    p_no_text = jax.tree.map(lambda x: x, params)
    p_no_text["text_head"] = jax.tree.map(jnp.zeros_like, params["text_head"])
    a = tower.apply({"params": p_no_text}, t, v)
    b = tower.apply({"params": p_no_text}, t2, v)
    np.testing.assert_allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------ loss
def _reference_loss(user, items, ids, log_mask, log_pop):
    """NumPy transcription of the released in-batch loss loop (Code_Cached/model/model.py)."""
    b, l = log_mask.shape
    logits = user.reshape(b * l, -1) @ items.T - log_pop[ids.reshape(-1)]
    cols = np.concatenate([log_mask, np.ones((b, 1))], 1).reshape(-1) == 0
    logits[:, cols] = -1e4
    logits = logits.reshape(b, l, -1)
    flat = ids.reshape(-1)
    for i in range(b):
        mask = np.isin(flat, ids[i])[None].repeat(l, 0)
        for j in range(l):
            mask[j, i * (l + 1) + j + 1] = False
        logits[i][mask] = -1e4
    logits = logits.reshape(b * l, -1)
    label = np.array([i * l + i + j for i in range(b) for j in range(1, l + 1)])
    keep = log_mask.reshape(-1) != 0
    z = logits[keep]
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(keep.sum()), label[keep]].mean()


def test_inbatch_loss_matches_the_reference_loop():
    rng = np.random.default_rng(0)
    b, l, d, n = 3, 4, 5, 9
    ids = np.array([[0, 0, 3, 5, 2], [1, 4, 4, 7, 3], [0, 6, 2, 8, 9]])   # repeats, shared ids
    log_mask = (ids[:, :l] > 0).astype(np.int32)
    user = rng.normal(size=(b, l, d)).astype(np.float32)
    items = rng.normal(size=(b * (l + 1), d)).astype(np.float32)
    pop = rng.uniform(0.01, 1, size=n + 1)
    log_pop = np.log(pop / pop[1:].sum()).astype(np.float32)
    log_pop[0] = 0.0
    want = _reference_loss(user.astype(np.float64), items.astype(np.float64), ids, log_mask,
                           log_pop.astype(np.float64))
    got, count = iisan.inbatch_softmax_loss(jnp.asarray(user), jnp.asarray(items),
                                            jnp.asarray(ids), jnp.asarray(log_mask),
                                            jnp.asarray(log_pop))
    assert int(count) == log_mask.sum()
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # Without logQ and history masking the loss changes (both terms are live).
    plain, _ = iisan.inbatch_softmax_loss(jnp.asarray(user), jnp.asarray(items), jnp.asarray(ids),
                                          jnp.asarray(log_mask), None, history_mask=False)
    assert abs(float(plain) - want) > 1e-3


# ------------------------------------------------------------------ training on the tiny task
@pytest.fixture(scope="module")
def setup(tiny):
    config = get_config("iisan.py", "smoke")
    config.iisan.cache_dtype = "float32"
    task = build_task(config, tiny)
    return config, task


def test_window_ids_rebuild_the_11_item_window(setup):
    _, task = setup
    batch = task.example_batch(16)
    ids, log_mask = iisan.window_ids(batch)
    ids = np.asarray(ids)
    targets = batch["targets"]
    real = targets >= 0
    np.testing.assert_array_equal(ids[:, 1:][real], targets[real] + 1)   # next item at each position
    np.testing.assert_array_equal(np.asarray(log_mask), batch["state"] > 0)


def test_cached_equals_uncached_and_loss_falls(setup):
    config, task = setup
    cached_state = iisan.init(jax.random.key(0), task, config)
    cached_consts = iisan.make_consts(config, task)
    config_u = get_config("iisan.py", "smoke,cached=0")
    live_state = iisan.init(jax.random.key(0), task, config_u)
    live_consts = iisan.make_consts(config_u, task)
    # Same trainable parameters (flax derives each leaf's init key from its path).
    for a, b in zip(jax.tree.leaves(cached_state.params), jax.tree.leaves(live_state.params)):
        np.testing.assert_array_equal(a, b)
    assert set(live_consts["frozen"]) == {"text_backbone", "image_backbone"}
    # The cache holds exactly the live towers' taps (row 0 zeros).
    taps = cached_consts["items"]["text_taps"]
    assert taps.shape == (task.num_items + 1, 3, 32) and float(jnp.abs(taps[0]).max()) == 0.0

    batch = task.example_batch()
    ids, log_mask = iisan.window_ids(batch)
    rng = jax.random.key(3)

    def loss_and_grads(state, consts):
        def loss(params):
            content = iisan.gather_rows(consts["items"], ids.reshape(-1))
            return iisan.loss_on_content(params, consts["frozen"], state.spec, content, ids,
                                         log_mask, consts["log_pop"], rng)[0]
        return jax.value_and_grad(loss)(state.params)

    l_c, g_c = jax.jit(loss_and_grads)(cached_state, cached_consts)
    l_u, g_u = jax.jit(loss_and_grads)(live_state, live_consts)
    np.testing.assert_allclose(float(l_c), float(l_u), rtol=1e-5)
    # Relative to each leaf's and the whole gradient's scale: the cache computes the towers
    # over the catalogue in another order than the live step, and small leaves (a gate's
    # scalar gradient of 1e-3 in a tree whose largest entry is 5e-2) differ by round-off
    # that depends on the CPU (1e-5 of the tree's scale here, 5e-5 on an AVX-512 EPYC).
    assert_trees_close(g_c, g_u, rtol=1e-3, tree_rtol=5e-4)

    # Training from the cache lowers the loss on a fixed batch; the towers stay out of the state.
    step = jax.jit(iisan.train_step)
    state, first = step(cached_state, batch, rng, cached_consts)
    for _ in range(15):
        state, m = step(state, batch, rng, cached_consts)
    assert float(m["loss"]) < float(first["loss"]) - 0.05
    assert set(state.params) == {"tower", "user"}
    moved = gate_values(state.params["tower"])
    assert any(abs(g - 0.5) > 1e-4 for gs in moved.values() for g in gs)


def test_tpme_with_the_papers_weights():
    from jaxrec.metrics import tpme
    # Abstract numbers (FFT, Adapter, IISAN): time 443/365/22 s, params 195M/5M/4.1M, memory 47/38/3 GB.
    got = tpme([443, 365, 22], [195e6, 5e6, 4.1e6], [47, 38, 3])
    t = (365 - 22) / (443 - 22)
    p = (5e6 - 4.1e6) / (195e6 - 4.1e6)
    m = (38 - 3) / (47 - 3)
    np.testing.assert_allclose(got, [1.0, 0.45 * t + 0.1 * p + 0.45 * m, 0.0])
    with pytest.raises(ValueError, match="sum"):
        tpme([1, 2], [1, 2], [1, 2], weights=(0.5, 0.5, 0.5))


def test_tap_cache_resumes_and_rebuilds(tmp_path):
    rng = np.random.default_rng(0)
    content = {"x": rng.normal(size=(11, 3)).astype(np.float32)}
    extract = jax.jit(lambda c: {"taps": jnp.stack([c["x"], 2 * c["x"]], axis=1)})
    d = str(tmp_path / "cache")
    assert tap_cache.build(extract, content, d, "float32", batch_size=4, fingerprint="a",
                           progress=False, stop_after_rows=5) == {}
    assert tap_cache.load(d, "a") is None                    # incomplete: not usable
    calls = []
    # Count real batches (the cache also traces `extract` once, abstractly, for its shapes).
    counting = lambda c: (isinstance(c["x"], np.ndarray) and calls.append(1), extract(c))[1]
    out = tap_cache.build(counting, content, d, "float32", batch_size=4, fingerprint="a", progress=False)
    assert len(calls) == 2                                    # rows 5..10 only: 2 batches of 4
    want = np.stack([content["x"], 2 * content["x"]], 1)
    np.testing.assert_array_equal(out["taps"][1:], want[1:])
    np.testing.assert_array_equal(out["taps"][0], 0)
    # Complete: loaded without extracting; another fingerprint rebuilds; bf16 halves the bytes.
    assert tap_cache.build(lambda c: 1 / 0, content, d, "float32", fingerprint="a", progress=False)
    bf = tap_cache.build(extract, content, d, "bfloat16", batch_size=4, fingerprint="b", progress=False)
    assert bf["taps"].dtype.name == "bfloat16" and bf["taps"].nbytes == want.nbytes // 2
    np.testing.assert_allclose(np.asarray(bf["taps"][1:], np.float32), want[1:], rtol=1e-2)


def test_versa_llama_text_tower_spec():
    """IISAN-Versa on tiny towers: a 6-block Llama text tower (GLD taps 0, 3, 6, masked mean
    pooling) next to a 4-block ViT with 5 taps: unequal widths (DTLs 48 -> 32) and counts."""
    c = get_config("iisan.py", "towers=versa_tiny")
    c.iisan.image.num_groups = 4
    spec = iisan.build_spec(c, 50)
    assert spec.net.text_taps == (0, 3, 6) and spec.net.image_taps == (0, 1, 2, 3, 4)
    assert spec.net.text_pool == "mean" and spec.net.side_cfg.heads == "versa"
    params = iisan.init_params(spec, jax.random.key(0), abstract=True)["tower"]
    inter = params["inter_side"]
    assert sorted(k for k in inter if k.startswith("sanb_")) == ["sanb_0", "sanb_1", "sanb_2"]
    assert inter["dtl_0"]["kernel"].shape == (48, 32)
    assert len([k for k in params["image_side"] if k.startswith("sanb_")]) == 5


def test_select_taps_pooling():
    h0 = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    hs = (h0, 10 * h0)
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    from jaxrec.peft.side_adapters import select_taps
    np.testing.assert_array_equal(select_taps(hs, (1,), "cls")[:, 0], 10 * h0[:, 0])
    # Masked mean: row 0 averages tokens 0-1, row 1 keeps token 0 only.
    np.testing.assert_allclose(select_taps(hs, (0, 1), "mean", mask)[:, 0],
                               [[1.0, 2.0], [6.0, 7.0]])
    # The released code's quirk: padding included.
    np.testing.assert_allclose(select_taps(hs, (0,), "mean_all")[:, 0], [[2.0, 3.0], [8.0, 9.0]])
    with pytest.raises(ValueError, match="outside"):
        select_taps(hs, (2,), "cls")
