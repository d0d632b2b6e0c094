"""jaxrec.peft.peft_io: LoRA adapters in PEFT's layout — tensor names and shapes, the
alpha / r scaling and the transposes checked against a hand-written PEFT directory, a bit-exact
export -> import round trip, and errors that name the file."""
import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxrec.backbones.llama import LlamaConfig, LlamaModel
from jaxrec.peft import peft_io
from jaxrec.peft.lora import merge_lora_kernel
from tests.numerics import assert_close_to_scale

# GQA (k/v project 16 -> 8) and an FFN of 24, so no adapted matrix is square.
CFG = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=2,
                  num_kv_heads=1, lora_rank=4, lora_alpha=6.0,
                  lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
IDS = np.array([[1, 5, 9, 3, 7, 2], [1, 4, 4, 8, 30, 2]], np.int32)


def _params(cfg=CFG, seed=0):
    """Initialised params with non-zero lora_b (the init is 0, which would hide a wrong scale)."""
    params = LlamaModel(cfg).init(jax.random.key(seed), jnp.asarray(IDS))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, v: rng.standard_normal(v.shape).astype(np.float32) * 0.3
        if p[-1].key == "lora_b" else np.asarray(v), params)


def _logits(cfg, params):
    return np.asarray(LlamaModel(cfg).apply({"params": params}, IDS).logits)


def test_export_has_peft_names_shapes_and_config(tmp_path):
    params = _params()
    path = peft_io.save_peft_adapter(str(tmp_path / "ad"), params, CFG, base_model_name_or_path="org/tiny-llama")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert {k: cfg[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "target_modules",
                                "base_model_name_or_path", "bias", "use_rslora", "use_dora")} == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 6, "target_modules": list(CFG.lora_targets),
        "base_model_name_or_path": "org/tiny-llama", "bias": "none", "use_rslora": False, "use_dora": False}
    t = load_file(f"{path}/adapter_model.safetensors")
    assert len(t) == 2 * 7 * 2
    pre = "base_model.model.model.layers"
    # [r, in] / [out, r] with in/out of each torch.nn.Linear (q 16->16, k/v 16->8, o 16->16,
    # gate/up 16->24, down 24->16)
    assert t[f"{pre}.1.self_attn.q_proj.lora_A.weight"].shape == (4, 16)
    assert t[f"{pre}.1.self_attn.k_proj.lora_B.weight"].shape == (8, 4)
    assert t[f"{pre}.0.self_attn.v_proj.lora_B.weight"].shape == (8, 4)
    assert t[f"{pre}.0.mlp.gate_proj.lora_B.weight"].shape == (24, 4)
    assert t[f"{pre}.0.mlp.down_proj.lora_A.weight"].shape == (4, 24)
    assert t[f"{pre}.0.mlp.down_proj.lora_B.weight"].shape == (16, 4)
    # Hand-checked merge in PyTorch's layout: W [out, in] + (alpha / r) B @ A is the transpose
    # of jaxrec's merged kernel.
    for layer, block, proj in [("layers_0", "self_attn", "k_proj"), ("layers_1", "mlp", "down_proj")]:
        leaf = params[layer][block][proj]
        i = layer[-1]
        a, b = t[f"{pre}.{i}.{block}.{proj}.lora_A.weight"], t[f"{pre}.{i}.{block}.{proj}.lora_B.weight"]
        torch_merged = leaf["kernel"].T + (6.0 / 4) * (b @ a)
        ours = merge_lora_kernel(leaf["kernel"], leaf["lora_a"], leaf["lora_b"], CFG.lora_alpha)
        np.testing.assert_allclose(torch_merged, np.asarray(ours).T, rtol=1e-6, atol=1e-6)


def test_merged_weights_compute_the_lora_model(tmp_path):
    """Folding the exported factors into the weights PEFT's way (W + alpha/r B A, torch
    layout) gives a plain model with the LoRA model's logits."""
    params = _params()
    t = load_file(peft_io.save_peft_adapter(str(tmp_path / "ad"), params, CFG) + "/adapter_model.safetensors")
    plain_cfg = dataclasses.replace(CFG, lora_rank=0)
    merged = jax.tree.map(lambda x: x, params)
    for i in range(2):
        for proj in CFG.lora_targets:
            block = peft_io.BLOCK[proj]
            leaf = merged[f"layers_{i}"][block][proj]
            a = t[f"base_model.model.model.layers.{i}.{block}.{proj}.lora_A.weight"]
            b = t[f"base_model.model.model.layers.{i}.{block}.{proj}.lora_B.weight"]
            merged[f"layers_{i}"][block][proj] = {"kernel": (leaf["kernel"].T + (6.0 / 4) * b @ a).T}
    want = _logits(CFG, params)
    assert_close_to_scale(_logits(plain_cfg, merged), want, 1e-5)
    assert np.abs(want - _logits(plain_cfg, _params(plain_cfg))).max() > 0.1 * np.abs(want).max()


def test_round_trip_is_bit_exact(tmp_path):
    params = _params()
    path = peft_io.save_peft_adapter(str(tmp_path / "ad"), params, CFG)
    ad = peft_io.load_peft_adapter(path)
    assert (ad.rank, ad.alpha, ad.targets, ad.num_layers, ad.task_type) == (4, 6.0, CFG.lora_targets, 2, "CAUSAL_LM")
    assert dataclasses.replace(CFG, **ad.config_overrides()) == CFG
    # Onto a model whose LoRA factors are zero: every leaf comes back bit for bit.
    blank = jax.tree_util.tree_map_with_path(
        lambda p, v: np.zeros_like(v) if p[-1].key in ("lora_a", "lora_b") else v, params)
    back = peft_io.apply_adapter(blank, ad, CFG)
    for (p, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                              jax.tree_util.tree_flatten_with_path(back)[0]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(p))
    assert np.abs(np.asarray(blank["layers_0"]["self_attn"]["q_proj"]["lora_b"])).max() == 0   # not modified
    # Exported again: the same tensors.
    again = load_file(peft_io.save_peft_adapter(str(tmp_path / "ad2"), back, CFG) + "/adapter_model.safetensors")
    first = load_file(f"{path}/adapter_model.safetensors")
    assert again.keys() == first.keys() and all(np.array_equal(again[k], first[k]) for k in first)


def _hand_written(path, r=2, alpha=3, **cfg_fields):
    """A PEFT directory written without jaxrec's exporter: q/v LoRA on a 1-layer model."""
    rng = np.random.default_rng(7)
    t = {}
    for proj, out in (("q_proj", 16), ("v_proj", 8)):
        t[f"base_model.model.model.layers.0.self_attn.{proj}.lora_A.weight"] = rng.standard_normal((r, 16)).astype(np.float32)
        t[f"base_model.model.model.layers.0.self_attn.{proj}.lora_B.weight"] = rng.standard_normal((out, r)).astype(np.float32)
    path.mkdir(exist_ok=True)
    save_file(t, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = dict(peft_type="LORA", task_type="CAUSAL_LM", r=r, lora_alpha=alpha, target_modules=["v_proj", "q_proj"],
               bias="none", base_model_name_or_path="base")
    cfg.update(cfg_fields)
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return t


def test_hand_written_peft_adapter_imports_with_peft_scaling(tmp_path):
    t = _hand_written(tmp_path / "ad")
    ad = peft_io.load_peft_adapter(str(tmp_path / "ad"))
    assert ad.targets == ("q_proj", "v_proj") and (ad.rank, ad.alpha) == (2, 3.0)
    cfg = dataclasses.replace(CFG, num_layers=1, **ad.config_overrides())
    params = peft_io.apply_adapter(_params(cfg), ad, cfg)
    q = params["layers_0"]["self_attn"]["q_proj"]
    np.testing.assert_array_equal(q["lora_a"], t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].T)
    # The LoRA model equals the base with PEFT's merged weight W + (alpha / r) B A (hand-computed).
    merged = jax.tree.map(lambda x: x, params)
    for proj in ("q_proj", "v_proj"):
        leaf = params["layers_0"]["self_attn"][proj]
        a = t[f"base_model.model.model.layers.0.self_attn.{proj}.lora_A.weight"]
        b = t[f"base_model.model.model.layers.0.self_attn.{proj}.lora_B.weight"]
        merged["layers_0"]["self_attn"][proj] = {"kernel": (leaf["kernel"].T + 1.5 * b @ a).T}
    assert_close_to_scale(_logits(dataclasses.replace(cfg, lora_rank=0), merged), _logits(cfg, params), 1e-5)
    # rsLoRA scales by alpha / sqrt(r): read as jaxrec alpha = lora_alpha * sqrt(r).
    _hand_written(tmp_path / "rs", r=2, alpha=3, use_rslora=True)
    assert peft_io.load_peft_adapter(str(tmp_path / "rs")).alpha == pytest.approx(3 * math.sqrt(2))


def test_import_errors_name_the_file(tmp_path):
    ad = tmp_path / "ad"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        peft_io.load_peft_adapter(str(ad))
    for fields, match in [(dict(peft_type="IA3"), "adapter_config.json: field 'peft_type'"),
                          (dict(use_dora=True), "field 'use_dora'.*DoRA"),
                          (dict(rank_pattern={"q_proj": 8}), "field 'rank_pattern'"),
                          (dict(bias="all"), "field 'bias'"),
                          (dict(r=0), "field 'r'"),
                          (dict(target_modules=["q_proj"]), r"adapter_model.safetensors: holds factors for \['q_proj', 'v_proj'\]"),
                          (dict(target_modules=["q_proj", "v_proj", "c_attn"]), r"target_modules \['c_attn'\]")]:
        _hand_written(ad, **fields)
        with pytest.raises(ValueError, match=match):
            peft_io.load_peft_adapter(str(ad))
    t = _hand_written(ad)
    del t["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
    save_file(t, str(ad / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"adapter_model.safetensors: missing base_model.model.model.layers.0.self_attn.v_proj.lora_B"):
        peft_io.load_peft_adapter(str(ad))
    t = _hand_written(ad)
    t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = np.zeros((3, 16), np.float32)
    save_file(t, str(ad / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"q_proj.lora_A.weight \(3, 16\).*not \[r=2, in\]"):
        peft_io.load_peft_adapter(str(ad))
    t = _hand_written(ad)
    t["base_model.model.model.layers.0.mlp.q_proj.lora_A.weight"] = np.zeros((2, 16), np.float32)
    save_file(t, str(ad / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="not LoRA factors of a Llama-family projection.*mlp.q_proj"):
        peft_io.load_peft_adapter(str(ad))
    # A model built with other LoRA settings, or of another width, is refused on apply.
    _hand_written(ad)
    adapter = peft_io.load_peft_adapter(str(ad))
    with pytest.raises(ValueError, match="adapter_config|config_overrides"):
        peft_io.apply_adapter(_params(CFG), adapter, CFG)
    wide = dataclasses.replace(CFG, num_layers=1, hidden_size=32, **adapter.config_overrides())
    with pytest.raises(ValueError, match=r"ad: layers_0/self_attn/q_proj/lora_a has shape \(16, 2\), the model expects \(32, 2\)"):
        peft_io.apply_adapter(_params(wide), adapter, wide)
    with pytest.raises(ValueError, match="lora_rank=0"):
        peft_io.save_peft_adapter(str(tmp_path / "x"), _params(), dataclasses.replace(CFG, lora_rank=0))
    assert not (tmp_path / "x").exists()
