"""ViT encoder: parity with transformers' FlaxViTModel (4.57.6) on a random tiny config loaded
through our safetensors loader, analytic parameter counts of the presets, a NumPy reference for
the PEFT variants, bf16, and image preprocessing against HF's image processors."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image
from transformers import CLIPImageProcessor, FlaxViTModel, ViTImageProcessor
from transformers import ViTConfig as HFViTConfig

from jaxrec.backbones.hf import CheckpointError
from jaxrec.backbones.preprocess import ImagePreprocessor
from jaxrec.backbones.vit import ViTConfig, ViTEncoder, load_vit
from tests.backbones import (
    flax_to_torch_tensors,
    np_adapter,
    np_attention,
    np_dense,
    np_gelu,
    np_layer_norm,
    perturb,
    to_float64,
    write_checkpoint,
)

HF_CFG = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=4, intermediate_size=37)
PREPROC = {"do_resize": True, "size": {"height": 32, "width": 32}, "resample": 2, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
           "image_std": [0.5, 0.5, 0.5], "image_processor_type": "ViTImageProcessor"}


def _images(n=2, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(40, 50), (27, 33), (64, 64)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """ViTForImageClassification-style checkpoint ('vit.' prefix + classifier head)."""
    hfc = HFViTConfig(**HF_CFG)
    ref = FlaxViTModel(hfc, seed=0, add_pooling_layer=False)
    ref_params = perturb(ref.params, seed=2)
    tensors = flax_to_torch_tensors(ref_params, prefix="vit.")
    tensors["classifier.weight"] = np.zeros((10, 32), np.float32)
    tensors["classifier.bias"] = np.zeros((10,), np.float32)
    d = write_checkpoint(tmp_path_factory.mktemp("vit"), tensors, hfc.to_dict(),
                         extra_files={"preprocessor_config.json": json.dumps(PREPROC)})
    cfg, params = load_vit(d)
    return ref, ref_params, d, cfg, params, jax.jit(ViTEncoder(cfg).apply)


def test_matches_flax_vit_all_hidden_states(vit):
    ref, ref_params, d, cfg, params, apply = vit
    images = _images(2)
    pixels = ImagePreprocessor.from_dir(d)(images)
    assert pixels.shape == (2, 32, 32, 3) and pixels.dtype == np.float32
    # FlaxViTModel.__call__ takes NCHW (and transposes to NHWC inside); ours takes NHWC.
    want = jax.jit(lambda p, x: ref(x, params=p, output_hidden_states=True))(ref_params, pixels.transpose(0, 3, 1, 2))
    got = apply({"params": params}, pixels)
    assert len(got.hidden_states) == cfg.num_layers + 1 == 3
    for i, (w, g) in enumerate(zip(want.hidden_states, got.hidden_states)):
        assert g.shape == (2, 1 + 16, 32)
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0, err_msg=f"hidden_states[{i}]")
    np.testing.assert_allclose(got.last_hidden_state, want.last_hidden_state, atol=1e-5, rtol=0)
    # hidden_states[-1] is before the final LayerNorm, last_hidden_state after it
    assert float(jnp.abs(got.last_hidden_state - got.hidden_states[-1]).max()) > 0.1


def test_missing_and_misshaped_vit_tensors(tmp_path, vit):
    _, ref_params, d, *_ = vit
    tensors = flax_to_torch_tensors(ref_params, prefix="vit.")
    del tensors["vit.layernorm.weight"]
    tensors["vit.embeddings.patch_embeddings.projection.weight"] = np.zeros((32, 3, 7, 7), np.float32)
    write_checkpoint(tmp_path, tensors, json.loads((d / "config.json").read_text()))
    with pytest.raises(CheckpointError) as e:
        load_vit(tmp_path)
    assert e.value.missing == ["vit.layernorm.weight"]
    # conv weight [out, in, kh, kw] -> our kernel [kh, kw, in, out]
    assert e.value.mismatched == [("vit.embeddings.patch_embeddings.projection.weight", (8, 8, 3, 32), (7, 7, 3, 32))]


# ------------------------------------------------------------------------------------------
# Presets: parameter counts equal the analytic count
# ------------------------------------------------------------------------------------------


def analytic_vit_params(c: ViTConfig) -> int:
    d, f, p = c.hidden_size, c.intermediate_size, c.patch_size
    embed = p * p * c.num_channels * d + d + d + (1 + c.num_patches) * d  # patch conv, cls, positions
    layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d  # q,k,v,o; MLP; two LayerNorms
    return embed + c.num_layers * layer + 2 * d  # + final LayerNorm


@pytest.mark.parametrize("name,width,depth,patch", [("tiny", 192, 12, 16), ("base", 768, 12, 16), ("huge", 1280, 32, 14)])
def test_preset_parameter_counts(name, width, depth, patch):
    cfg = ViTConfig.preset(name)
    assert (cfg.hidden_size, cfg.num_layers, cfg.patch_size) == (width, depth, patch)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: ViTEncoder(cfg).init(jax.random.PRNGKey(0), x)["params"], x)
    count = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
    assert count == analytic_vit_params(cfg)
    if name == "base":
        assert count == 85_798_656  # HF ViTModel(google/vit-base-patch16-224) without pooler and head
    if name == "huge":
        assert cfg.num_patches == 256


# ------------------------------------------------------------------------------------------
# PEFT and dtype
# ------------------------------------------------------------------------------------------


def numpy_vit(params, cfg: ViTConfig, pixels):
    """Float64 NumPy ViT (pre-LN, Dosovitskiy et al. Eq. 1–4) over our parameter tree, with
    LoRA and Houlsby adapters after the output projections, before the residual add."""
    p = to_float64(params)
    e, b, s = p["embeddings"], pixels.shape[0], cfg.patch_size
    g = cfg.image_size // s
    patches = pixels.reshape(b, g, s, g, s, cfg.num_channels).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1)
    x = patches @ e["patch_embed"]["kernel"].reshape(-1, cfg.hidden_size) + e["patch_embed"]["bias"]
    x = np.concatenate([np.broadcast_to(e["cls_token"], (b, 1, cfg.hidden_size)), x], 1) + e["position_embeddings"]
    hs = [x]
    for i in range(cfg.num_layers):
        lp = p[f"layer_{i}"]
        a = np_attention(np_layer_norm(x, lp["attn_norm"], cfg.layer_norm_eps), lp, cfg.num_heads, cfg.lora_alpha)
        if "adapter_attn" in lp:
            a = np_adapter(a, lp["adapter_attn"])
        x = x + a
        y = np_layer_norm(x, lp["ffn_norm"], cfg.layer_norm_eps)
        f = np_dense(np_gelu(np_dense(y, lp["ffn_in"], cfg.lora_alpha)), lp["ffn_out"], cfg.lora_alpha)
        if "adapter_ffn" in lp:
            f = np_adapter(f, lp["adapter_ffn"])
        x = x + f
        hs.append(x)
    return hs, np_layer_norm(x, p["final_norm"], cfg.layer_norm_eps)


def test_peft_vit_counts_init_and_numpy_reference(vit):
    _, _, d, base_cfg, base_params, apply = vit
    cfg, params = load_vit(d, lora_rank=2, lora_alpha=4.0, adapter_size=5, rng=jax.random.PRNGKey(3))
    flat = traverse_util.flatten_dict(params, sep="/")
    assert sorted(k for k in flat if "lora_" in k) == sorted(
        f"layer_{i}/{n}/lora_{ab}" for i in range(2) for n in ("query", "value") for ab in "ab")
    n_lora = sum(v.size for k, v in flat.items() if "lora_" in k)
    n_adapter = sum(v.size for k, v in flat.items() if "adapter_" in k)
    assert n_lora == 2 * 2 * (32 * 2 + 2 * 32) == 512
    assert n_adapter == 2 * 2 * (2 * 32 * 5 + 5 + 32) == 1428
    np.testing.assert_array_equal(flat["layer_1/value/kernel"], traverse_util.flatten_dict(base_params, sep="/")["layer_1/value/kernel"])

    pixels = ImagePreprocessor.from_dir(d)(_images(2, seed=1))
    base = apply({"params": base_params}, pixels).last_hidden_state
    peft_apply = jax.jit(ViTEncoder(cfg).apply)
    at_init = peft_apply({"params": params}, pixels).last_hidden_state
    diff = float(jnp.abs(at_init - base).max())
    assert 0 < diff < 0.05  # lora_b = 0; adapters N(0, 0.01^2): near but not exactly identity

    trained = perturb(params, seed=6, scale=0.2)
    got = peft_apply({"params": trained}, pixels)
    want_hs, want_last = numpy_vit(trained, cfg, pixels.astype(np.float64))
    for i, (w, g) in enumerate(zip(want_hs, got.hidden_states)):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=0, err_msg=f"hidden_states[{i}]")
    np.testing.assert_allclose(got.last_hidden_state, want_last, atol=2e-5, rtol=0)


def test_bfloat16_forward_close_to_float32(vit):
    *_, d, cfg32, params32, apply32 = vit
    cfg16, params16 = load_vit(d, dtype="bfloat16")
    assert {x.dtype for x in jax.tree_util.tree_leaves(params16)} == {jnp.dtype(jnp.float32)}
    pixels = ImagePreprocessor.from_dir(d)(_images(2))
    out16 = jax.jit(ViTEncoder(cfg16).apply)({"params": params16}, pixels)
    out32 = apply32({"params": params32}, pixels)
    assert out16.last_hidden_state.dtype == jnp.bfloat16
    for g, w in zip(out16.hidden_states + (out16.last_hidden_state,), out32.hidden_states + (out32.last_hidden_state,)):
        g = np.asarray(g, np.float32)
        assert np.abs(g - w).max() < 0.1 and np.abs(g - w).mean() < 0.02


def test_input_and_config_validation(vit):
    *_, cfg, params, apply = vit
    with pytest.raises(ValueError, match=r"pixel_values must be \[B, H, W, C\] = \[B, 32, 32, 3\].*\(2, 3, 32, 32\)"):
        apply({"params": params}, np.zeros((2, 3, 32, 32), np.float32))  # NCHW by mistake
    with pytest.raises(ValueError, match="pixel_values must be float"):
        apply({"params": params}, np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="image_size.*multiple of patch_size"):
        ViTConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="unknown ViT preset 'giant'"):
        ViTConfig.preset("giant")
    with pytest.raises(ValueError, match="lora_targets"):
        dataclasses.replace(cfg, lora_targets="query")


# ------------------------------------------------------------------------------------------
# Image preprocessing
# ------------------------------------------------------------------------------------------


def test_preprocess_matches_vit_image_processor(vit):
    *_, d, _, _, _ = vit
    images = _images(3, seed=4)
    ours = ImagePreprocessor.from_dir(d)(images)
    theirs = ViTImageProcessor(**{k: v for k, v in PREPROC.items() if k != "image_processor_type"})(
        images, return_tensors="np", data_format="channels_last")["pixel_values"]
    assert ours.shape == theirs.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)


def test_preprocess_defaults_are_iisan_and_hand_computed(tmp_path):
    # No preprocessor_config.json: IISAN's 224 x 224, mean 0.5, std 0.5 (spec §1.1).
    pre = ImagePreprocessor.from_dir(tmp_path)
    assert pre.size == (224, 224) and pre.image_mean == (0.5, 0.5, 0.5) and pre.image_std == (0.5, 0.5, 0.5)
    solid = Image.new("RGB", (5, 3), (255, 0, 128))  # resizing a constant image keeps it constant
    gray = Image.new("L", (7, 7), 51)  # converted to RGB
    out = pre([solid, gray])
    assert out.shape == (2, 224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], np.broadcast_to([1.0, -1.0, 128 / 255 * 2 - 1], (224, 224, 3)), atol=1e-6)
    np.testing.assert_allclose(out[1], np.full((224, 224, 3), 51 / 255 * 2 - 1), atol=1e-6)
    with pytest.raises(TypeError, match=r"images\[1\] is ndarray"):
        pre([solid, np.zeros((4, 4, 3))])


def test_preprocess_shortest_edge_and_crop_match_clip_processor(tmp_path):
    cfg = {"do_resize": True, "size": {"shortest_edge": 20}, "resample": 3, "do_center_crop": True,
           "crop_size": {"height": 16, "width": 16}, "do_rescale": True, "rescale_factor": 1 / 255,
           "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
           "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    pre = ImagePreprocessor.from_dir(tmp_path)
    assert pre.shortest_edge == 20 and pre.crop_size == (16, 16) and pre.output_size == (16, 16)
    images = _images(3, seed=5)
    theirs = CLIPImageProcessor(**cfg)(images, return_tensors="np", data_format="channels_last")["pixel_values"]
    np.testing.assert_allclose(pre(images), theirs, atol=1e-5, rtol=0)
    (tmp_path / "preprocessor_config.json").write_text('{"size": {"longest_edge": 3}}')
    with pytest.raises(ValueError, match="unsupported 'size'"):
        ImagePreprocessor.from_dir(tmp_path)
