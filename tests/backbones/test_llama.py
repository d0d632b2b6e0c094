"""Llama / Mistral / Gemma backbone vs. transformers 4.57.6 Flax models (tiny random configs).

The HF Flax model's parameters (re-drawn at O(1) scale so attention is far from uniform and
errors are not hidden by tiny activations) are written as a PyTorch-layout safetensors file
plus config.json, loaded with ``load_llama``, and compared on a batch with left and right
padding.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import traverse_util
from safetensors.numpy import save_file

from jaxrec.backbones import hf
from jaxrec.backbones.llama import (
    LlamaConfig,
    LlamaModel,
    load_llama,
    position_ids_from_mask,
)
from tests.numerics import assert_trees_close

B, T, V = 3, 8, 64
TOL = dict(rtol=1e-5, atol=1e-5)


def _hf_config(kind, **kw):
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  rms_norm_eps=1e-5)
    if kind == "llama":
        return transformers.LlamaConfig(**common, **kw)
    if kind == "mistral":
        return transformers.MistralConfig(**common, **kw)
    # Gemma: head_dim 16 with 4 heads, so H * hd = 64 != D = 32; tied embeddings (its default).
    return transformers.GemmaConfig(**common, head_dim=16, hidden_activation="gelu_pytorch_tanh", **kw)


_HF_CLASSES = {
    "llama": "FlaxLlamaForCausalLM",
    "mistral": "FlaxMistralForCausalLM",
    "gemma": "FlaxGemmaForCausalLM",
}


def _write_checkpoint(hf_model, hf_cfg, ckpt_dir, seed):
    """Re-draws the HF params at O(1) scale and writes them in PyTorch layout + config.json."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(hf_model.params)
    new, tensors = {}, {}
    gemma = hf_cfg.model_type == "gemma"
    for path, v in flat.items():
        if path[-1] == "weight":  # RMSNorm scale (Gemma stores the offset from 1)
            a = (0.0 if gemma else 1.0) + 0.1 * rng.standard_normal(v.shape)
        elif path[-1] == "embedding":
            a = rng.standard_normal(v.shape)
        else:
            a = 0.2 * rng.standard_normal(v.shape)
        a = a.astype(np.float32)
        new[path] = a
        name = ".".join(path[:-1]) + ".weight"
        # torch.nn.Linear stores [out, in]; the Flax kernel is [in, out].
        tensors[name] = np.ascontiguousarray(a.T) if path[-1] == "kernel" else a
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(ckpt_dir / "model.safetensors"))
    hf_cfg.save_pretrained(str(ckpt_dir))
    return traverse_util.unflatten_dict(new), tensors


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1, 5:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    return ids, mask


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Builds (once per module) HF reference, checkpoint and our loaded model for a variant."""
    cache = {}

    def get(kind):
        if kind in cache:
            return cache[kind]
        # HF Flax Mistral keeps W + 1 tokens in its window (triu(k=-W)); ours keeps W (HF
        # PyTorch convention), so the reference gets W - 1 = 2 to describe our W = 3.
        hf_cfg = _hf_config(kind, sliding_window=2) if kind == "mistral" else _hf_config(kind)
        hf_model = getattr(transformers, _HF_CLASSES[kind])(hf_cfg, seed=0)
        ckpt = tmp_path_factory.mktemp(kind)
        hf_params, tensors = _write_checkpoint(hf_model, hf_cfg, ckpt, seed=len(kind))
        overrides = {"sliding_window": 3} if kind == "mistral" else {}
        cfg, params = load_llama(str(ckpt), **overrides)
        model = LlamaModel(cfg)
        apply = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask))
        cache[kind] = dict(kind=kind, hf_model=hf_model, hf_params=hf_params, tensors=tensors,
                           ckpt=ckpt, model=model, params=params, apply=apply, overrides=overrides)
        return cache[kind]

    return get


@pytest.fixture(params=["llama", "mistral", "gemma"])
def variant(request, build):
    return build(request.param)


@pytest.fixture
def llama(build):
    return build("llama")


def test_matches_hf_flax_with_padding(variant):
    ids, mask = _batch()
    # HF's generation rule; the HF forward pass would otherwise use arange(T) for every row.
    hf_pos = mask.cumsum(-1) - 1
    ref = variant["hf_model"](ids, mask, hf_pos, params=variant["hf_params"], output_hidden_states=True)
    logits, last, hidden = variant["apply"](variant["params"], ids, mask)
    cfg = variant["model"].config
    assert len(hidden) == cfg.num_layers + 1 == len(ref.hidden_states)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref.logits), **TOL)
    for i, (ours, theirs) in enumerate(zip(hidden, ref.hidden_states)):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), err_msg=f"hidden_states[{i}]", **TOL)
    np.testing.assert_array_equal(np.asarray(last), np.asarray(hidden[-1]))
    # The logits are O(1), so a 1e-5 agreement is not a statement about tiny numbers.
    assert float(np.abs(np.asarray(ref.logits)).max()) > 1.0


def test_default_positions_match_hf_default_without_padding(llama):
    variant = llama
    ids, _ = _batch(1)
    ref = variant["hf_model"](ids, params=variant["hf_params"])  # HF default: arange(T)
    logits, _, _ = variant["apply"](variant["params"], ids, np.ones((B, T), np.int32))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref.logits), **TOL)


def test_position_ids_from_mask_values():
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(
        np.asarray(position_ids_from_mask(mask)),
        [[0, 1, 2, 2, 2], [0, 0, 0, 1, 2], [0, 1, 2, 3, 4]],
    )


def test_left_padding_does_not_change_real_tokens(variant):
    """A left-padded sequence gives the unpadded sequence's outputs at its real tokens."""
    ids, _ = _batch(2)
    pad = 3
    padded = np.concatenate([np.zeros((B, pad), np.int32), ids[:, : T - pad]], axis=1)
    mask = np.concatenate([np.zeros((B, pad), np.int32), np.ones((B, T - pad), np.int32)], axis=1)
    logits_pad, _, _ = variant["apply"](variant["params"], padded, mask)
    # Reference at the same jitted shape: the unpadded tokens right-padded instead (right
    # padding never affects earlier tokens under a causal mask).
    right = np.concatenate([ids[:, : T - pad], np.zeros((B, pad), np.int32)], axis=1)
    rmask = np.concatenate([np.ones((B, T - pad), np.int32), np.zeros((B, pad), np.int32)], axis=1)
    logits_ref, _, _ = variant["apply"](variant["params"], right, rmask)
    np.testing.assert_allclose(np.asarray(logits_pad)[:, pad:], np.asarray(logits_ref)[:, : T - pad], **TOL)


def test_sliding_window_semantics(build):
    """With W = 3, query i sees keys i-2..i: changing token i-3 leaves position i unchanged."""
    variant = build("mistral")
    assert variant["model"].config.sliding_window == 3
    ids, _ = _batch(3)
    mask = np.ones((B, T), np.int32)
    base, _, h0 = variant["apply"](variant["params"], ids, mask)
    for j, unchanged_upto in ((2, 2 + 3), (4, 4 + 3)):
        other = ids.copy()
        other[:, j] = (other[:, j] + 1) % V
        out, _, h1 = variant["apply"](variant["params"], other, mask)
        # After one layer, position i depends on tokens i-2..i only.
        d1 = np.abs(np.asarray(h1[1]) - np.asarray(h0[1])).max(axis=(0, 2))
        changed = np.nonzero(d1 > 0)[0].tolist()
        assert changed == list(range(j, unchanged_upto)), (j, changed)


def test_bfloat16_forward(variant):
    cfg, params = load_llama(str(variant["ckpt"]), dtype=jnp.bfloat16, **variant["overrides"])
    ids, mask = _batch()
    logits, last, hidden = jax.jit(lambda p: LlamaModel(cfg).apply({"params": p}, ids, mask))(params)
    assert logits.dtype == jnp.bfloat16 and last.dtype == jnp.bfloat16
    assert all(h.dtype == jnp.bfloat16 for h in hidden)
    assert jax.tree.leaves(params)[0].dtype == jnp.float32  # parameters stay float32
    ref, _, _ = variant["apply"](variant["params"], ids, mask)
    ref = np.asarray(ref)
    err = np.abs(np.asarray(logits, np.float32) - ref).max() / np.abs(ref).max()
    assert np.isfinite(np.asarray(logits, np.float32)).all()
    assert err < 0.1, err


def test_inputs_embeds_equals_input_ids(variant):
    """Soft-prompt path: embed() + inputs_embeds reproduces the ids path (Gemma scale included)."""
    model, params = variant["model"], variant["params"]
    ids, mask = _batch(4)
    emb = model.apply({"params": params}, ids, method=LlamaModel.embed)
    assert emb.shape == (B, T, model.config.hidden_size)
    a, _, _ = model.apply({"params": params}, inputs_embeds=emb, attention_mask=mask)
    b, _, _ = variant["apply"](params, ids, mask)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)


def test_lm_head_tying_matches_checkpoint_layout(variant):
    names = set(variant["tensors"])
    cfg = variant["model"].config
    assert cfg.tie_word_embeddings == (variant["kind"] == "gemma")
    assert ("lm_head.weight" in names) == (not cfg.tie_word_embeddings)
    assert ("lm_head" in variant["params"]) == (not cfg.tie_word_embeddings)


def test_return_logits_false_and_headless_model(llama, tmp_path):
    variant = llama
    model, params = variant["model"], variant["params"]
    ids, mask = _batch()
    logits, last, _ = model.apply({"params": params}, ids, mask, return_logits=False)
    assert logits is None and last.shape == (B, T, 32)
    # with_lm_head=False: no lm_head parameters, and the stored lm_head.weight is ignored.
    headless, hp = load_llama(str(variant["ckpt"]), with_lm_head=False)
    assert "lm_head" not in hp
    out = LlamaModel(headless).apply({"params": hp}, ids, mask)
    assert out.logits is None
    np.testing.assert_allclose(np.asarray(out.last_hidden), np.asarray(last), **TOL)


def test_remat_same_outputs_and_grads(llama):
    variant = llama
    cfg = variant["model"].config
    remat_model = LlamaModel(dataclasses.replace(cfg, remat=True))
    ids, mask = _batch()

    def loss(model):
        return lambda p: jnp.mean(model.apply({"params": p}, ids, mask).logits ** 2)

    g0 = jax.jit(jax.grad(loss(variant["model"])))(variant["params"])
    g1 = jax.jit(jax.grad(loss(remat_model)))(variant["params"])
    # recomputation may reorder float32 sums: equal up to round-off of the tree's scale
    assert_trees_close(g1, g0, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Loading errors and config parsing
# ---------------------------------------------------------------------------------------------


def _tiny_ckpt(tmp_path, drop=(), reshape=None, extra=None, config=None):
    cfg = config or _hf_config("llama")
    model = transformers.FlaxLlamaForCausalLM(cfg, seed=1)
    _, tensors = _write_checkpoint(model, cfg, tmp_path, seed=1)
    for name in drop:
        tensors.pop(name)
    if reshape:
        tensors[reshape] = tensors[reshape][:, :-1].copy()
    if extra:
        tensors.update(extra)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_checkpoint_errors_name_the_tensors(tmp_path):
    name_missing = "model.layers.1.mlp.up_proj.weight"
    name_bad = "model.layers.0.self_attn.k_proj.weight"
    ckpt = _tiny_ckpt(tmp_path, drop=[name_missing], reshape=name_bad,
                      extra={"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32),
                             "score.weight": np.ones((2, 32), np.float32)})
    with pytest.raises(hf.CheckpointError) as e:
        load_llama(str(ckpt))
    err = e.value
    assert err.missing == [name_missing]
    assert err.unexpected == ["score.weight"]  # the legacy rotary buffer is ignorable
    assert [m[0] for m in err.mismatched] == [name_bad]
    assert name_missing in str(err) and name_bad in str(err)


def test_bare_model_checkpoint_without_prefix(tmp_path, llama):
    """A checkpoint saved from LlamaModel (no ``model.`` prefix, no head) loads headless."""
    variant = llama
    tensors = {k[len("model."):]: v for k, v in variant["tensors"].items() if k.startswith("model.")}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((variant["ckpt"] / "config.json").read_text())
    cfg, params = load_llama(str(tmp_path), with_lm_head=False)
    ids, mask = _batch()
    out = LlamaModel(cfg).apply({"params": params}, ids, mask)
    _, ref_last, _ = variant["apply"](variant["params"], ids, mask)
    # Eager vs jitted execution may differ in the last float bit.
    np.testing.assert_allclose(np.asarray(out.last_hidden), np.asarray(ref_last), rtol=1e-6, atol=1e-6)


def test_peft_params_survive_loading(llama):
    variant = llama
    cfg, params = load_llama(str(variant["ckpt"]), lora_rank=4, adapter_size=8)
    assert isinstance(cfg, LlamaConfig) and (cfg.lora_rank, cfg.adapter_size) == (4, 8)
    layer = params["layers_0"]
    assert layer["self_attn"]["q_proj"]["lora_a"].shape == (32, 4)
    assert float(jnp.abs(layer["self_attn"]["q_proj"]["lora_a"]).max()) > 0  # random, not zeros
    np.testing.assert_array_equal(np.asarray(layer["self_attn"]["v_proj"]["lora_b"]), 0)
    assert "lora_a" not in layer["self_attn"]["k_proj"]
    assert layer["adapter_attn"]["down"]["kernel"].shape == (32, 8)
    # Pretrained weights are loaded, not re-initialised (IISAN's LoRA baseline keeps them).
    np.testing.assert_array_equal(np.asarray(layer["self_attn"]["q_proj"]["kernel"]),
                                  np.asarray(variant["params"]["layers_0"]["self_attn"]["q_proj"]["kernel"]))


def test_from_hf_family_defaults():
    g = LlamaConfig.from_hf({"model_type": "gemma", "vocab_size": 10, "hidden_size": 8,
                             "intermediate_size": 16, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "hidden_act": "gelu"})
    # transformers' Gemma defaults: head_dim 256, tied head, tanh-GELU whatever hidden_act says.
    assert (g.head_dim, g.tie_word_embeddings, g.hidden_act) == (256, True, "gelu_pytorch_tanh")
    assert g.norm_offset and g.embed_scale and g.sliding_window is None
    m = LlamaConfig.from_hf(_hf_config("mistral", sliding_window=7).to_dict())
    assert (m.sliding_window, m.head_dim, m.num_kv_heads, m.hidden_act) == (7, 8, 2, "silu")
    lcfg = _hf_config("llama", rope_theta=500000.0).to_dict()
    lcfg["torch_dtype"] = "bfloat16"
    ll = LlamaConfig.from_hf(lcfg, lora_rank=8)
    assert (ll.rope_theta, ll.tie_word_embeddings, ll.norm_offset, ll.lora_rank) == (500000.0, False, False, 8)


@pytest.mark.parametrize("bad, match", [
    ({"model_type": "gpt2"}, "model_type 'gpt2'"),
    ({"model_type": "llama", "hidden_size": 8}, "'num_attention_heads'"),
])
def test_from_hf_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        LlamaConfig.from_hf(bad)


def test_config_validation():
    with pytest.raises(ValueError, match="num_kv_heads"):
        LlamaConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="lora_targets"):
        LlamaConfig(lora_rank=4, lora_targets=("query",))
    d = _hf_config("llama").to_dict()
    d["rope_scaling"] = {"rope_type": "yarn", "factor": 8.0}
    with pytest.raises(ValueError, match=r"config\.json field 'rope_scaling' has rope_type 'yarn'"):
        LlamaConfig.from_hf(d)
    with pytest.raises(ValueError, match="layer_types"):
        LlamaConfig(num_layers=2, layer_types=("full_attention",))
    with pytest.raises(ValueError, match="rope_original_max_position_embeddings"):
        LlamaConfig(rope_scaling_type="llama3", rope_scaling_factor=8.0)
    with pytest.raises(ValueError, match="no fields"):
        LlamaConfig.from_hf(_hf_config("llama").to_dict(), lora_rnak=8)
    model = LlamaModel(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8, num_layers=1,
                                   num_heads=2, max_position_embeddings=4))
    with pytest.raises(ValueError, match="attention_mask"):
        model.init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32))
