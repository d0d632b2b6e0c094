"""Decoder families beyond Llama-2 / Mistral / Gemma-1: Llama-3.1/3.2 RoPE scaling, Gemma-2,
Qwen2; loading straight into bf16; abstract parameter shapes; LoRA + bf16 + remat; bad input.

References:
* transformers 4.57.6's ``FlaxLlamaForCausalLM`` / ``FlaxGemmaForCausalLM`` where they apply
  (Flax Llama has no RoPE scaling: its sin/cos table is patched with the frequencies of the
  published Llama-3.1 rule, computed here in NumPy);
* a float64 NumPy forward pass written below from the architectures' descriptions (it reads
  the PyTorch-layout tensors and the HF ``config.json`` only, nothing of jaxrec), itself
  checked against the HF Flax models, for Gemma-2 and Qwen2 (transformers has no Flax
  classes for them) and the Llama-3.2 layout (tied head, which HF Flax Llama ignores).

Checkpoints are written in the test: random O(1) tensors under HF PyTorch names + a
``config.json`` from transformers' own config classes (``tests.backbones.write_checkpoint``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import tracemalloc

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import transformers
from flax import traverse_util

from jaxrec.backbones import hf
from jaxrec.backbones.layers import PEFT_KEEP_PATTERNS
from jaxrec.backbones.llama import (
    LlamaConfig,
    LlamaModel,
    abstract_params,
    init_params,
    load_llama,
    rope_inv_freq,
)
from tests.backbones import write_checkpoint
from tests.backbones.test_llama import B, T, V, _batch  # noqa: F401  (same tiny shapes)
from tests.numerics import assert_close_to_scale, assert_trees_close



# ---------------------------------------------------------------------------------------------
# NumPy reference (float64), written from the published architectures
# ---------------------------------------------------------------------------------------------


def ref_inv_freq(theta, head_dim, scaling=None):
    """RoPE frequencies; ``scaling`` is config.json's ``rope_scaling`` dict (linear / llama3)."""
    freqs = np.array([theta ** (-2.0 * i / head_dim) for i in range(head_dim // 2)])
    if not scaling:
        return freqs
    if scaling["rope_type"] == "linear":
        return freqs / scaling["factor"]
    # Llama 3.1: per frequency, by wavelength against the original context length.
    out = []
    for f in freqs:
        wavelength = 2 * math.pi / f
        ctx, lo, hi, k = (scaling["original_max_position_embeddings"], scaling["low_freq_factor"],
                          scaling["high_freq_factor"], scaling["factor"])
        if wavelength < ctx / hi:  # high frequency: untouched
            out.append(f)
        elif wavelength > ctx / lo:  # low frequency: interpolated by the full factor
            out.append(f / k)
        else:  # in between: linear in ctx / wavelength
            t = (ctx / wavelength - lo) / (hi - lo)
            out.append((1 - t) * f / k + t * f)
    return np.array(out)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def ref_forward(tensors, config, ids, mask):
    """HF-semantics forward pass; returns ``(logits [B, T, V], last hidden [B, T, D])``."""
    c = config
    kind = c["model_type"]
    gemma = kind in ("gemma", "gemma2")
    d, h = c["hidden_size"], c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or h
    hd = c.get("head_dim") or d // h
    eps = c["rms_norm_eps"]
    w = {k: np.asarray(v, np.float64) for k, v in tensors.items()}

    def rms(x, g):
        y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
        return y * (1.0 + g) if gemma else y * g

    def linear(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    b, t = ids.shape
    x = w["model.embed_tokens.weight"][ids]
    if gemma:
        x = x * math.sqrt(d)
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    ang = pos[..., None] * ref_inv_freq(c.get("rope_theta", 10000.0), hd, c.get("rope_scaling"))[None, None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(v):  # [B, T, N, hd], "rotate half"
        rot = np.concatenate([-v[..., hd // 2:], v[..., : hd // 2]], -1)
        return v * cos[:, :, None] + rot * sin[:, :, None]

    scale = (c.get("query_pre_attn_scalar") or hd) ** -0.5 if kind == "gemma2" else hd ** -0.5
    cap = c.get("attn_logit_softcapping") if kind == "gemma2" else None
    qi, kj = np.arange(t)[:, None], np.arange(t)[None, :]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        window = None
        if kind == "mistral":
            window = c.get("sliding_window")
        elif kind in ("gemma2", "qwen2") and c["layer_types"][i] == "sliding_attention":
            window = c["sliding_window"]
        a_in = rms(x, w[p + "input_layernorm.weight"])
        q = rope(linear(a_in, p + "self_attn.q_proj").reshape(b, t, h, hd))
        k = rope(linear(a_in, p + "self_attn.k_proj").reshape(b, t, kv, hd))
        v = linear(a_in, p + "self_attn.v_proj").reshape(b, t, kv, hd)
        k, v = np.repeat(k, h // kv, axis=2), np.repeat(v, h // kv, axis=2)
        s = np.einsum("bthd,bshd->bhts", q, k) * scale
        if cap:
            s = cap * np.tanh(s / cap)
        visible = (kj <= qi) if window is None else (kj <= qi) & (qi - kj < window)
        visible = visible[None, None] & (mask[:, None, None, :] > 0)
        s = np.where(visible, s, -1e300)
        prob = np.exp(s - s.max(-1, keepdims=True))
        prob = prob / prob.sum(-1, keepdims=True)
        a = np.einsum("bhts,bshd->bthd", prob, v).reshape(b, t, h * hd)
        a = linear(a, p + "self_attn.o_proj")
        if kind == "gemma2":
            a = rms(a, w[p + "post_attention_layernorm.weight"])
        x = x + a
        m_in = rms(x, w[p + ("pre_feedforward_layernorm.weight" if kind == "gemma2" else
                             "post_attention_layernorm.weight")])
        act = _gelu_tanh if gemma else (lambda z: z / (1 + np.exp(-z)))
        m = linear(act(linear(m_in, p + "mlp.gate_proj")) * linear(m_in, p + "mlp.up_proj"), p + "mlp.down_proj")
        if kind == "gemma2":
            m = rms(m, w[p + "post_feedforward_layernorm.weight"])
        x = x + m
    x = rms(x, w["model.norm.weight"])
    head = w["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else w["lm_head.weight"]
    logits = x @ head.T
    if kind == "gemma2" and c.get("final_logit_softcapping"):
        fc = c["final_logit_softcapping"]
        logits = fc * np.tanh(logits / fc)
    return logits, x


def random_tensors(config, seed=0):
    """O(1) random tensors under the HF PyTorch names of ``config``'s architecture."""
    rng = np.random.default_rng(seed)
    c = config
    kind = c["model_type"]
    gemma = kind in ("gemma", "gemma2")
    d, f, h = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or h
    hd = c.get("head_dim") or d // h
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], d), "model.norm.weight": (d,)}
    if not c.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (c["vocab_size"], d)
    norms = ["input_layernorm", "post_attention_layernorm"]
    if kind == "gemma2":
        norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + n + ".weight": (d,) for n in norms})
        for n, out in (("q", h * hd), ("k", kv * hd), ("v", kv * hd)):
            shapes[p + f"self_attn.{n}_proj.weight"] = (out, d)
            if kind == "qwen2":
                shapes[p + f"self_attn.{n}_proj.bias"] = (out,)
        shapes[p + "self_attn.o_proj.weight"] = (d, h * hd)
        shapes.update({p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                       p + "mlp.down_proj.weight": (d, f)})
    out = {}
    for name, shape in sorted(shapes.items()):
        z = rng.standard_normal(shape)
        if name.endswith("norm.weight"):
            z = (0.0 if gemma else 1.0) + 0.1 * z
        elif "embed_tokens" in name or "lm_head" in name:
            pass
        else:
            z = 0.2 * z
        out[name] = z.astype(np.float32)
    return out


COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, rms_norm_eps=1e-5)
# theta 100 with head_dim 8: wavelengths 6.3, 20, 63, 199 against original context 64, low 1, high
# 4: one frequency kept (< 16), two blended (16..64), one divided (> 64), so every branch counts.
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def hf_config(kind):
    """config.json dicts as transformers' config classes write them (tiny sizes)."""
    if kind == "llama3.1":
        return transformers.LlamaConfig(**COMMON, num_hidden_layers=2, rope_theta=100.0,
                                        rope_scaling=dict(LLAMA3_ROPE)).to_dict()
    if kind == "llama3.2":  # tied head, explicit head_dim, llama3 scaling
        return transformers.LlamaConfig(**COMMON, num_hidden_layers=2, rope_theta=100.0, head_dim=8,
                                        tie_word_embeddings=True, rope_scaling=dict(LLAMA3_ROPE)).to_dict()
    if kind == "llama-linear":
        return transformers.LlamaConfig(**COMMON, num_hidden_layers=2,
                                        rope_scaling={"rope_type": "linear", "factor": 4.0}).to_dict()
    if kind == "gemma2":
        # head_dim 16 != D / H; query_pre_attn_scalar 24 != head_dim; small caps so they bite;
        # window 3 on layers 0 and 2 (transformers' alternating default), layer 1 global.
        return transformers.Gemma2Config(**COMMON, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=24,
                                         attn_logit_softcapping=1.5, final_logit_softcapping=4.0,
                                         sliding_window=3).to_dict()
    if kind == "gemma2-nocap":  # caps disabled (null): the scale goes through the uncapped kernel
        return transformers.Gemma2Config(**COMMON, num_hidden_layers=2, head_dim=16, query_pre_attn_scalar=24,
                                         attn_logit_softcapping=None, final_logit_softcapping=None,
                                         sliding_window=3).to_dict()
    if kind == "qwen2":
        # layer 0 global, layer 1 windowed (from max_window_layers = 1); tied head.
        return transformers.Qwen2Config(**COMMON, num_hidden_layers=2, use_sliding_window=True, sliding_window=3,
                                        max_window_layers=1, tie_word_embeddings=True).to_dict()
    raise KeyError(kind)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    cache = {}

    def get(kind):
        if kind not in cache:
            config = hf_config(kind)
            tensors = random_tensors(config, seed=len(kind))
            ckpt = write_checkpoint(tmp_path_factory.mktemp(kind.replace(".", "_")), tensors, config)
            cfg, params = load_llama(str(ckpt))
            apply = jax.jit(lambda p, ids, mask: LlamaModel(cfg).apply({"params": p}, ids, mask))
            cache[kind] = dict(config=config, tensors=tensors, ckpt=ckpt, cfg=cfg, params=params, apply=apply)
        return cache[kind]

    return get


def _compare_real_tokens(got, want, mask, rtol=2e-5):
    """Outputs at real tokens (padding-query rows are undefined in any reference)."""
    real = mask.astype(bool)
    assert_close_to_scale(np.asarray(got, np.float64)[real], np.asarray(want)[real], rtol)


# ---------------------------------------------------------------------------------------------
# RoPE scaling
# ---------------------------------------------------------------------------------------------


def test_llama3_inv_freq_matches_published_rule():
    # Llama-3.1-8B's own settings: head_dim 128, theta 500000, factor 8, bands 1 / 4, context 8192.
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    cfg = LlamaConfig.from_hf({**transformers.LlamaConfig(rope_theta=500000.0, rope_scaling=scaling).to_dict()})
    assert (cfg.rope_scaling_type, cfg.rope_scaling_factor, cfg.rope_original_max_position_embeddings) == (
        "llama3", 8.0, 8192)
    got, want = rope_inv_freq(cfg), ref_inv_freq(500000.0, 128, scaling)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    plain = ref_inv_freq(500000.0, 128)
    kept, divided = np.isclose(got, plain, rtol=1e-12), np.isclose(got, plain / 8, rtol=1e-12)
    assert kept.sum() > 0 and divided.sum() > 0 and (~kept & ~divided).sum() > 0  # all three bands
    assert got[0] == 1.0 and np.isclose(got[-1], 500000.0 ** (-126 / 128) / 8)
    # the tiny test config also spans all three bands: 1 kept, 2 blended, 1 divided
    tiny = rope_inv_freq(LlamaConfig.from_hf(hf_config("llama3.1")))
    plain = ref_inv_freq(100.0, 8)
    np.testing.assert_allclose(tiny, ref_inv_freq(100.0, 8, LLAMA3_ROPE), rtol=1e-12)
    assert tiny[0] == plain[0] and np.isclose(tiny[3], plain[3] / 8) and (plain[1:3] / 8 < tiny[1:3]).all()
    assert (tiny[1:3] < plain[1:3]).all()
    linear = LlamaConfig.from_hf(hf_config("llama-linear"))
    np.testing.assert_allclose(rope_inv_freq(linear), ref_inv_freq(10000.0, 8) / 4.0, rtol=1e-12)


def _patched_sincos(inv_freq):
    """HF Flax Llama's ``create_sinusoidal_positions`` with the given frequencies (same layout)."""

    def create(num_pos, dim):
        freqs = np.arange(num_pos)[:, None] * inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], -1).astype(np.float32)
        return jnp.asarray(np.concatenate([np.sin(emb)[:, None, :], np.cos(emb)[:, None, :]], -1))

    return create


@pytest.fixture(scope="module")
def hf_flax_llama():
    """A FlaxLlamaForCausalLM of the tiny shape and its parameters at O(1) scale."""
    cfg = transformers.LlamaConfig(**COMMON, num_hidden_layers=2)
    model = transformers.FlaxLlamaForCausalLM(cfg, seed=0)
    return model, cfg


def _flax_params_from_tensors(tensors):
    """PyTorch-layout tensors -> HF Flax Llama/Gemma parameter tree."""
    flat = {}
    for name, value in tensors.items():
        *path, last = name.split(".")
        if "norm" in path[-1]:
            flat[tuple(path) + ("weight",)] = value
        elif path[-1] == "embed_tokens":
            flat[tuple(path) + ("embedding",)] = value
        else:
            flat[tuple(path) + ("kernel",)] = np.ascontiguousarray(value.T)
    return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_numpy_reference_matches_hf_flax(kind):
    """The NumPy reference used below reproduces transformers' Flax Llama and Gemma."""
    extra = dict(head_dim=16, hidden_activation="gelu_pytorch_tanh") if kind == "gemma" else {}
    cls = transformers.GemmaConfig if kind == "gemma" else transformers.LlamaConfig
    config = cls(**COMMON, num_hidden_layers=2, **extra).to_dict()
    tensors = random_tensors(config, seed=5)
    model_cls = transformers.FlaxGemmaForCausalLM if kind == "gemma" else transformers.FlaxLlamaForCausalLM
    model = model_cls(cls(**COMMON, num_hidden_layers=2, **extra), seed=0)
    ids, mask = _batch(1)
    ours = ref_forward(tensors, config, ids, mask)[0]
    pos = np.maximum(mask.cumsum(-1) - 1, 0)
    theirs = jax.jit(lambda p: model(ids, mask, pos, params=p).logits)(_flax_params_from_tensors(tensors))
    _compare_real_tokens(theirs, ours, mask)
    assert np.abs(ours).max() > 1.0


def test_llama31_rope_scaling_matches_hf_flax_with_scaled_frequencies(family, hf_flax_llama, monkeypatch):
    fam = family("llama3.1")
    model, _ = hf_flax_llama
    ids, mask = _batch(2)
    pos = np.maximum(mask.cumsum(-1) - 1, 0)
    got = np.asarray(fam["apply"](fam["params"], ids, mask).logits)
    from transformers.models.llama import modeling_flax_llama

    params = _flax_params_from_tensors(fam["tensors"])
    unscaled = np.asarray(model(ids, mask, pos, params=params).logits)
    monkeypatch.setattr(modeling_flax_llama, "create_sinusoidal_positions",
                        _patched_sincos(ref_inv_freq(100.0, 8, LLAMA3_ROPE)))
    scaled = np.asarray(model(ids, mask, pos, params=params).logits)
    _compare_real_tokens(got, scaled, mask)
    # theta 100 was not applied in `unscaled` either (HF Flax hard-codes 10000); the scaling
    # (and the theta) change the logits far beyond the tolerance above.
    real = mask.astype(bool)
    assert np.abs(unscaled - scaled)[real].max() > 0.05 * np.abs(scaled).max()
    _compare_real_tokens(got, ref_forward(fam["tensors"], fam["config"], ids, mask)[0], mask)


# ---------------------------------------------------------------------------------------------
# Gemma-2, Qwen2, Llama-3.2 against the NumPy reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llama3.2", "llama-linear", "gemma2", "gemma2-nocap", "qwen2"])
def test_family_matches_numpy_reference(family, kind):
    fam = family(kind)
    ids, mask = _batch(3)
    out = fam["apply"](fam["params"], ids, mask)
    logits, last = ref_forward(fam["tensors"], fam["config"], ids, mask)
    _compare_real_tokens(out.logits, logits, mask)
    _compare_real_tokens(out.last_hidden, last, mask)
    assert np.abs(logits).max() > 1.0


def test_parsed_family_fields(family):
    g = family("gemma2")["cfg"]
    assert (g.sandwich_norm, g.query_pre_attn_scalar, g.attn_logit_softcapping, g.final_logit_softcapping) == (
        True, 24, 1.5, 4.0)
    assert g.layer_types == ("sliding_attention", "full_attention", "sliding_attention")
    assert [g.layer_window(i) for i in range(3)] == [3, None, 3]
    assert g.tie_word_embeddings and g.head_dim == 16 and g.norm_offset and g.embed_scale
    q = family("qwen2")["cfg"]
    assert (q.attention_bias, q.out_bias, q.mlp_bias) == (True, False, False)
    assert [q.layer_window(i) for i in range(2)] == [None, 3]
    assert "bias" in family("qwen2")["params"]["layers_0"]["self_attn"]["q_proj"]
    assert "bias" not in family("qwen2")["params"]["layers_0"]["self_attn"]["o_proj"]
    l32 = family("llama3.2")["cfg"]
    assert l32.tie_word_embeddings and l32.rope_scaling_type == "llama3"
    assert "lm_head" not in family("llama3.2")["params"]


def test_hub_style_configs_without_layer_types():
    """Older hub config.json files carry no layer_types: the family rules derive them."""
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=4, num_attention_heads=2)
    g = LlamaConfig.from_hf({"model_type": "gemma2", **base})
    assert [g.layer_window(i) for i in range(4)] == [4096, None, 4096, None]
    assert (g.query_pre_attn_scalar, g.attn_logit_softcapping, g.final_logit_softcapping) == (256, 50.0, 30.0)
    g_off = LlamaConfig.from_hf({"model_type": "gemma2", **base, "final_logit_softcapping": None})
    assert g_off.final_logit_softcapping is None
    q = LlamaConfig.from_hf({"model_type": "qwen2", **base, "use_sliding_window": False, "sliding_window": 4096,
                             "max_window_layers": 2})
    assert [q.layer_window(i) for i in range(4)] == [None] * 4
    q = LlamaConfig.from_hf({"model_type": "qwen2", **base, "use_sliding_window": True, "sliding_window": 16,
                             "max_window_layers": 2})
    assert [q.layer_window(i) for i in range(4)] == [None, None, 16, 16]
    m = LlamaConfig.from_hf({"model_type": "mistral", **base, "sliding_window": None})
    assert [m.layer_window(i) for i in range(4)] == [None] * 4


def test_softcaps_and_windows_change_outputs(family):
    """The reference comparison above would notice each Gemma-2 feature missing."""
    fam = family("gemma2")
    ids, mask = _batch(3)
    want = ref_forward(fam["tensors"], fam["config"], ids, mask)[0][mask.astype(bool)]
    for change in (dict(attn_logit_softcapping=None), dict(final_logit_softcapping=None),
                   dict(layer_types=None), dict(query_pre_attn_scalar=None), dict(sandwich_norm=False)):
        cfg = dataclasses.replace(fam["cfg"], **change)
        params = fam["params"]
        if change.get("sandwich_norm") is False:
            params = {k: ({n: v for n, v in p.items() if "feedforward" not in n} if k.startswith("layers_") else p)
                      for k, p in params.items()}
        got = np.asarray(LlamaModel(cfg).apply({"params": params}, ids, mask).logits)[mask.astype(bool)]
        assert np.abs(got - want).max() > 1e-2 * np.abs(want).max(), change


# ---------------------------------------------------------------------------------------------
# Sharded checkpoints, bf16 loading without init, abstract shapes
# ---------------------------------------------------------------------------------------------


def test_sharded_checkpoint_equals_single(family, tmp_path):
    fam = family("qwen2")
    d = write_checkpoint(tmp_path, fam["tensors"], fam["config"], shards=3)
    index = json.loads((d / hf.SAFETENSORS_INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) == 3 and not (d / hf.SAFETENSORS_FILE).exists()
    _, params = load_llama(str(d))
    assert_trees_close(params, fam["params"], rtol=0, tree_rtol=0)


def test_frozen_load_is_bf16_without_initialising_pretrained_weights(family, tmp_path, monkeypatch):
    fam = family("gemma2")
    traced_only = []
    real_init = LlamaModel.init

    def spy(self, rngs, *args, **kwargs):
        key = rngs if not isinstance(rngs, dict) else rngs["params"]
        traced_only.append(isinstance(key, jax.core.Tracer))
        return real_init(self, rngs, *args, **kwargs)

    monkeypatch.setattr(LlamaModel, "init", spy)
    cfg, params = load_llama(str(fam["ckpt"]), frozen=True, lora_rank=2)
    assert traced_only and all(traced_only)  # init only ever traced (eval_shape / jit), never run
    flat = traverse_util.flatten_dict(params)
    lora = {p for p in flat if p[-1] in ("lora_a", "lora_b")}
    assert len(lora) == 2 * 2 * cfg.num_layers  # q and v of every layer
    for path, leaf in flat.items():
        assert leaf.dtype == (jnp.float32 if path in lora else jnp.bfloat16), path
    # bf16 leaves are the float32 load rounded once (no double rounding, no transposition slip)
    for path, leaf in traverse_util.flatten_dict(fam["params"]).items():
        np.testing.assert_array_equal(np.asarray(flat[path]), np.asarray(leaf).astype(ml_dtypes.bfloat16))
    # a bf16 checkpoint file loads bit-exactly into bf16 leaves, and into float32 when asked
    bf = {k: v.astype(ml_dtypes.bfloat16) for k, v in fam["tensors"].items()}
    d = write_checkpoint(tmp_path, bf, fam["config"])
    _, p16 = load_llama(str(d), weights_dtype=jnp.bfloat16)
    _, p32 = load_llama(str(d))
    for path, leaf in traverse_util.flatten_dict(p16).items():
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat[path]))
        assert traverse_util.flatten_dict(p32)[path].dtype == jnp.float32


def test_loading_holds_about_one_tensor_at_a_time(tmp_path):
    """Host memory while loading a float32 file into bf16 stays well under the file size.

    Reading every tensor first (and converting afterwards) needs at least the file's size.
    """
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=6,
                                      num_attention_heads=4, num_key_value_heads=2).to_dict()
    tensors = random_tensors(config)
    total = sum(t.nbytes for t in tensors.values())
    biggest = max(t.nbytes for t in tensors.values())
    d = write_checkpoint(tmp_path, tensors, config)
    del tensors
    load_llama(str(d), weights_dtype=jnp.bfloat16)  # warm-up: tracing caches, imports
    tracemalloc.start()
    try:
        _, params = load_llama(str(d), weights_dtype=jnp.bfloat16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(x.nbytes for x in jax.tree.leaves(params)) == total // 2
    # the bf16 copy (total / 2, if the device aliases host buffers) + a few tensors in flight
    assert peak < total / 2 + 4 * biggest, (peak, total, biggest)


# Published parameter counts of hub models, recomputed from their config.json hyper-parameters.
HUB_MODELS = {
    "Meta-Llama-3-8B": (dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                             rope_theta=500000.0), 8_030_261_248),
    "Llama-3.2-1B": (dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                          num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                          tie_word_embeddings=True, rope_scaling=dict(LLAMA3_ROPE)), 1_235_814_400),
    "Mistral-7B-v0.1": (dict(model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                             sliding_window=4096), 7_241_732_096),
    "gemma-2-2b": (dict(model_type="gemma2", vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                        num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256),
                   2_614_341_888),
    "Qwen2-0.5B": (dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                        tie_word_embeddings=True), 494_032_768),
}


@pytest.mark.parametrize("name", sorted(HUB_MODELS))
def test_abstract_params_of_hub_models(name):
    config, count = HUB_MODELS[name]
    cfg = LlamaConfig.from_hf(config, lora_rank=8)
    shapes = abstract_params(cfg, jnp.bfloat16)
    flat = traverse_util.flatten_dict(shapes)
    assert all(isinstance(v, jax.ShapeDtypeStruct) for v in flat.values())
    pretrained = {p: v for p, v in flat.items() if p[-1] not in ("lora_a", "lora_b")}
    assert sum(math.prod(v.shape) for v in pretrained.values()) == count
    assert {v.dtype for v in pretrained.values()} == {jnp.dtype(jnp.bfloat16)}
    lora = [v for p, v in flat.items() if p[-1] in ("lora_a", "lora_b")]
    assert len(lora) == 4 * cfg.num_layers and {v.dtype for v in lora} == {jnp.dtype(jnp.float32)}


def test_abstract_params_match_loaded_and_initialised(family):
    fam = family("qwen2")
    cfg = dataclasses.replace(fam["cfg"], lora_rank=2, adapter_size=4)
    _, loaded = load_llama(str(fam["ckpt"]), frozen=True, lora_rank=2, adapter_size=4)
    spec = jax.tree.map(lambda a: (a.shape, a.dtype), abstract_params(cfg, jnp.bfloat16))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), loaded) == spec
    fresh = init_params(cfg, jax.random.key(0), jnp.bfloat16)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), fresh) == spec
    # flax derives each leaf's key from its path: the PEFT leaves of a random init equal the
    # loader's (same key), whatever else the tree holds
    peft = [p for p in traverse_util.flatten_dict(fresh)
            if any(re.search(pat, hf.path_str(p)) for pat in PEFT_KEEP_PATTERNS)]
    assert len(peft) == 2 * (4 + 8)
    for p in peft:
        np.testing.assert_array_equal(np.asarray(traverse_util.flatten_dict(fresh)[p]),
                                      np.asarray(traverse_util.flatten_dict(loaded)[p]))


# ---------------------------------------------------------------------------------------------
# LoRA + bf16 + remat
# ---------------------------------------------------------------------------------------------


def _is_lora(path) -> bool:
    return path[-1] in ("lora_a", "lora_b")


@pytest.mark.parametrize("kind", ["gemma2"])  # soft-capping, sandwich norms and windows under remat
def test_lora_bf16_remat_gradients_reach_only_lora(family, kind):
    """Frozen bf16 weights, float32 LoRA, bf16 compute, remat per block: the gradient of a
    loss through the frozen tree reaches only the LoRA leaves, in float32, and matches the
    gradient without remat."""
    fam = family(kind)
    cfg, params = load_llama(str(fam["ckpt"]), frozen=True, lora_rank=4, dtype=jnp.bfloat16, remat=True,
                             rng=jax.random.key(1))
    # lora_b starts at 0 (so d/d lora_a = 0): move it to get gradients through both factors
    flat = traverse_util.flatten_dict(params)
    rng = np.random.default_rng(0)
    flat = {p: (jnp.asarray(0.05 * rng.standard_normal(v.shape), jnp.float32) if p[-1] == "lora_b" else v)
            for p, v in flat.items()}
    ids, mask = _batch(4)

    def loss_fn(model):
        def loss(flat_params):
            # what a PEFT trainer does: the frozen leaves enter through stop_gradient
            merged = {p: (v if _is_lora(p) else jax.lax.stop_gradient(v)) for p, v in flat_params.items()}
            logits = model.apply({"params": traverse_util.unflatten_dict(merged)}, ids, mask).logits
            return jnp.mean(jax.nn.log_softmax(logits.astype(jnp.float32))[..., 0] * mask)
        return jax.jit(jax.grad(loss))

    g = loss_fn(LlamaModel(cfg))(flat)
    assert cfg.remat and cfg.dtype == jnp.bfloat16
    for p, v in g.items():
        if _is_lora(p):
            assert v.dtype == jnp.float32 and bool(jnp.isfinite(v).all()), p
            assert float(jnp.abs(v).max()) > 0, p
        else:
            assert float(jnp.abs(v.astype(jnp.float32)).max()) == 0.0, p
    g_plain = loss_fn(LlamaModel(dataclasses.replace(cfg, remat=False)))(flat)
    lora_grads = lambda t: {hf.path_str(p): v for p, v in t.items() if _is_lora(p)}
    # bf16 compute: recomputation may round differently, but not by more than bf16's precision
    assert_trees_close(lora_grads(g), lora_grads(g_plain), rtol=2e-2)


# ---------------------------------------------------------------------------------------------
# Bad input: every message names the directory and the file or field
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def qwen_dir(family, tmp_path):
    fam = family("qwen2")
    return write_checkpoint(tmp_path / "ckpt", fam["tensors"], fam["config"], shards=2), fam


def test_missing_files(qwen_dir):
    d, _ = qwen_dir
    shard = d / "model-00002-of-00002.safetensors"
    shard.rename(d / "elsewhere")
    with pytest.raises(hf.CheckpointError, match=re.escape(str(d)) + r".*model-00002-of-00002\.safetensors"):
        load_llama(str(d))
    (d / "config.json").unlink()
    with pytest.raises(hf.CheckpointError, match=re.escape(str(d / "config.json"))):
        load_llama(str(d))


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "vocab_size"])
def test_config_missing_field(qwen_dir, field):
    d, fam = qwen_dir
    (d / "config.json").write_text(json.dumps({k: v for k, v in fam["config"].items() if k != field}))
    with pytest.raises(hf.CheckpointError) as e:
        load_llama(str(d))
    assert str(d) in str(e.value) and f"'{field}'" in str(e.value) and "config.json" in str(e.value)


@pytest.mark.parametrize("scaling, words", [
    ({"rope_type": "yarn", "factor": 4.0}, ["'yarn'", "rope_scaling"]),
    ({"type": "dynamic", "factor": 2.0}, ["'dynamic'", "rope_scaling"]),
    ({"rope_type": "llama3", "factor": 8.0}, ["rope_scaling", "'low_freq_factor'", "'high_freq_factor'"]),
])
def test_unsupported_rope_scaling_is_refused(qwen_dir, scaling, words):
    d, fam = qwen_dir
    (d / "config.json").write_text(json.dumps({**fam["config"], "rope_scaling": scaling}))
    with pytest.raises(hf.CheckpointError) as e:
        load_llama(str(d))
    msg = str(e.value)
    assert str(d) in msg and "config.json" in msg and all(w in msg for w in words), msg


def test_truncated_safetensors_file(qwen_dir):
    d, _ = qwen_dir
    shard = d / "model-00001-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(hf.CheckpointError) as e:
        load_llama(str(d))
    assert str(shard) in str(e.value) and "truncated" in str(e.value)


def test_misshaped_and_missing_tensors(family, tmp_path):
    fam = family("qwen2")
    tensors = dict(fam["tensors"])
    bad, gone = "model.layers.1.self_attn.k_proj.bias", "model.layers.0.self_attn.q_proj.bias"
    tensors[bad] = tensors[bad][:-1].copy()
    del tensors[gone]
    tensors["model.layers.0.self_attn.o_proj.bias"] = np.zeros(32, np.float32)  # Qwen2 has none
    d = write_checkpoint(tmp_path, tensors, fam["config"])
    with pytest.raises(hf.CheckpointError) as e:
        load_llama(str(d))
    err = e.value
    assert err.mismatched == [(bad, (16,), (15,))] and err.missing == [gone]
    assert err.unexpected == ["model.layers.0.self_attn.o_proj.bias"]
    assert str(d) in str(err) and bad in str(err) and gone in str(err)
