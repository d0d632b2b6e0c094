"""Reading hub-style checkpoints: single and sharded safetensors, config.json, and the one
CheckpointError that lists missing / unexpected / mis-shaped tensors (jaxrec.backbones.hf)."""
from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file
from transformers import BertConfig as HFBertConfig
from transformers import FlaxBertModel

from jaxrec.backbones import hf
from jaxrec.backbones.bert import load_bert
from tests.backbones import flax_to_torch_tensors, perturb, write_checkpoint

HF_CFG = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=24, max_position_embeddings=32)


@pytest.fixture(scope="module")
def bert_ckpt(tmp_path_factory):
    """A tiny random BERT written as a PyTorch-layout model.safetensors; returns (dir, tensors, config)."""
    hfc = HFBertConfig(**HF_CFG)
    params = perturb(FlaxBertModel(hfc, seed=0).params, seed=1)
    tensors = flax_to_torch_tensors(params)
    tensors["embeddings.position_ids"] = np.arange(32, dtype=np.int64)[None]  # a buffer hub files carry
    config = hfc.to_dict()
    d = write_checkpoint(tmp_path_factory.mktemp("bert_single"), tensors, config)
    return d, tensors, config


@pytest.fixture(scope="module")
def bert_loaded(bert_ckpt):
    d, _, _ = bert_ckpt
    return load_bert(d, use_pooler=True)


def _variant(tmp_path, bert_ckpt, drop=(), add=None, replace=None):
    _, tensors, config = bert_ckpt
    t = {k: v for k, v in tensors.items() if k not in drop}
    t.update(add or {})
    t.update(replace or {})
    return write_checkpoint(tmp_path, t, config)


def test_read_safetensors_single_roundtrip(bert_ckpt):
    d, tensors, _ = bert_ckpt
    got = hf.read_safetensors(d)
    assert sorted(got) == sorted(tensors)
    for k in tensors:
        np.testing.assert_array_equal(got[k], tensors[k])
        assert got[k].dtype == tensors[k].dtype
    # 2 layers x 16 tensors + 5 embedding + 2 pooler + position_ids buffer
    assert len(got) == 2 * 16 + 5 + 2 + 1
    listing = hf.safetensors_names(d)
    assert listing["encoder.layer.0.intermediate.dense.weight"] == ((24, 16), "F32")
    assert listing["embeddings.position_ids"] == ((1, 32), "I64")
    subset = hf.read_safetensors(d, names=["pooler.dense.bias"])
    assert list(subset) == ["pooler.dense.bias"]
    with pytest.raises(hf.CheckpointError, match="no_such_tensor"):
        hf.read_safetensors(d, names=["no_such_tensor"])


def test_sharded_checkpoint_loads_like_single(tmp_path, bert_ckpt, bert_loaded):
    _, tensors, config = bert_ckpt
    d = write_checkpoint(tmp_path, tensors, config, shards=2)
    assert not (d / "model.safetensors").exists()
    index = json.loads((d / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    per_file = [sum(1 for f in index["weight_map"].values() if f == name) for name in files]
    assert sum(per_file) == len(tensors) and min(per_file) > 0  # really split across both files

    got = hf.read_safetensors(d)
    assert sorted(got) == sorted(tensors)
    for k in tensors:
        np.testing.assert_array_equal(got[k], tensors[k])
    _, params = load_bert(d, use_pooler=True)
    _, params_single = bert_loaded
    flat, flat_single = jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves_with_path(params_single)
    assert [p for p, _ in flat] == [p for p, _ in flat_single]
    for (_, a), (_, b) in zip(flat, flat_single):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_index_errors(tmp_path, bert_ckpt):
    _, tensors, config = bert_ckpt
    d = write_checkpoint(tmp_path, tensors, config, shards=2)
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    # The index names a shard that is not there.
    (d / "model-00002-of-00002.safetensors").rename(d / "moved.safetensors")
    with pytest.raises(hf.CheckpointError, match="model-00002-of-00002.safetensors"):
        hf.read_safetensors(d)
    (d / "moved.safetensors").rename(d / "model-00002-of-00002.safetensors")
    # The index places a tensor in a shard that does not hold it.
    name = next(n for n, f in index["weight_map"].items() if f.startswith("model-00001"))
    index["weight_map"][name] = "model-00002-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(hf.CheckpointError, match=re.escape(name)):
        hf.read_safetensors(d)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(hf.CheckpointError, match="does not exist"):
        hf.read_safetensors(tmp_path / "nope")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(hf.CheckpointError, match=r"no model\.safetensors.*pytorch_model\.bin.*convert"):
        hf.read_safetensors(tmp_path)
    with pytest.raises(hf.CheckpointError, match=r"config\.json"):
        hf.read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 4,\n oops}')
    with pytest.raises(hf.CheckpointError, match=r"not valid JSON.*line 2"):
        hf.read_config(tmp_path)


def test_missing_tensor_is_named(tmp_path, bert_ckpt):
    name = "encoder.layer.1.attention.self.key.bias"
    d = _variant(tmp_path, bert_ckpt, drop=[name])
    with pytest.raises(hf.CheckpointError) as e:
        load_bert(d)
    assert e.value.missing == [name]
    assert e.value.unexpected == [] and e.value.mismatched == []
    assert name in str(e.value) and str(d) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_unexpected_tensor_is_named(tmp_path, bert_ckpt):
    name = "encoder.layer.0.attention.self.rotary.weight"
    d = _variant(tmp_path, bert_ckpt, add={name: np.zeros((3, 3), np.float32)})
    with pytest.raises(hf.CheckpointError) as e:
        load_bert(d)
    assert e.value.unexpected == [name]
    assert e.value.missing == [] and e.value.mismatched == []
    assert f"{name} (3, 3)" in str(e.value)


def test_misshaped_tensor_names_expected_and_found(tmp_path, bert_ckpt):
    name = "encoder.layer.0.intermediate.dense.weight"  # torch layout [out=24, in=16]
    d = _variant(tmp_path, bert_ckpt, replace={name: np.zeros((24, 15), np.float32)})
    with pytest.raises(hf.CheckpointError) as e:
        load_bert(d)
    # our kernel is [in, out] = (16, 24); the transposed file tensor is (15, 24)
    assert e.value.mismatched == [(name, (16, 24), (15, 24))]
    assert f"{name}: expected (16, 24), found (15, 24)" in str(e.value)


def test_all_problems_in_one_error(tmp_path, bert_ckpt):
    missing = "encoder.layer.0.output.LayerNorm.weight"
    extra = "encoder.layer.7.output.dense.weight"
    bad = "embeddings.word_embeddings.weight"
    d = _variant(tmp_path, bert_ckpt, drop=[missing], add={extra: np.zeros((2,), np.float32)},
                 replace={bad: np.zeros((51, 16), np.float32)})
    with pytest.raises(hf.CheckpointError) as e:
        load_bert(d)
    msg = str(e.value)
    assert e.value.missing == [missing] and e.value.unexpected == [extra]
    assert e.value.mismatched == [(bad, (50, 16), (51, 16))]
    assert msg.count("\n") >= 6 and missing in msg and extra in msg and bad in msg


def test_ignorable_tensors_and_pooler(tmp_path, bert_ckpt, bert_loaded):
    # Pre-training heads are skipped; the pooler is skipped when the model does not build one.
    d = _variant(tmp_path, bert_ckpt, add={"cls.predictions.bias": np.zeros((50,), np.float32)})
    cfg, params = load_bert(d)
    assert not cfg.use_pooler and "pooler" not in params
    np.testing.assert_array_equal(params["layer_1"]["ffn_out"]["kernel"], bert_loaded[1]["layer_1"]["ffn_out"]["kernel"])


def test_prefixed_and_legacy_layernorm_names(tmp_path, bert_ckpt, bert_loaded):
    """bert-base-uncased style: 'bert.' prefix, LayerNorm.gamma/beta, plus the 'cls.' heads."""
    _, tensors, config = bert_ckpt
    renamed = {}
    for k, v in tensors.items():
        k = re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", k)
        k = re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", k)
        renamed["bert." + k] = v
    renamed["cls.predictions.transform.dense.weight"] = np.zeros((16, 16), np.float32)
    d = write_checkpoint(tmp_path, renamed, config)
    _, params = load_bert(d, use_pooler=True)
    for (pa, a), (pb, b) in zip(jax.tree_util.tree_leaves_with_path(params),
                                jax.tree_util.tree_leaves_with_path(bert_loaded[1])):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the error names the tensors as stored in the file (with the prefix)
    del renamed["bert.encoder.layer.0.attention.output.LayerNorm.gamma"]
    write_checkpoint(tmp_path, renamed, config)
    with pytest.raises(hf.CheckpointError, match=re.escape("bert.encoder.layer.0.attention.output.LayerNorm.gamma")):
        load_bert(tmp_path)


def test_assign_params_generic_contract(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(3, 2)  # torch Linear [out=3, in=2]
    conv = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # [out, in, kh, kw]
    template = {
        "dense": {"kernel": jax.ShapeDtypeStruct((2, 3), jnp.float32), "lora_a": jnp.full((2, 1), 7.0)},
        "conv": {"kernel": jax.ShapeDtypeStruct((4, 5, 3, 2), jnp.float32)},
        "emb": {"embedding": jax.ShapeDtypeStruct((2, 2), jnp.float32)},
    }
    bf = np.array([[1.5, -2.0], [0.0078125, 3.0]], dtype=ml_dtypes.bfloat16)
    save_file({"lin.weight": w, "c.weight": conv, "e.weight": bf}, str(tmp_path / "model.safetensors"))
    tensors = hf.read_safetensors(tmp_path)
    assert tensors["e.weight"].dtype == ml_dtypes.bfloat16
    mapping = {
        ("dense", "kernel"): ("lin.weight", hf.linear_kernel),
        ("conv", "kernel"): ("c.weight", hf.conv_kernel),
        ("emb", "embedding"): ("e.weight", None),
    }
    out = hf.assign_params(template, mapping, tensors, tmp_path, keep=[r"lora_a$"])
    np.testing.assert_array_equal(out["dense"]["kernel"], w.T)
    assert out["conv"]["kernel"][1, 2, 0, 1] == conv[1, 0, 1, 2]  # [kh, kw, in, out] <- [out, in, kh, kw]
    assert out["emb"]["embedding"].dtype == np.float32
    np.testing.assert_array_equal(out["emb"]["embedding"], [[1.5, -2.0], [0.0078125, 3.0]])
    np.testing.assert_array_equal(out["dense"]["lora_a"], np.full((2, 1), 7.0))

    # a parameter without source and without a keep pattern is reported, not silently random
    with pytest.raises(hf.CheckpointError) as e:
        hf.assign_params(template, mapping, tensors, tmp_path)
    assert e.value.unmapped == ["dense/lora_a"]
    # keeping an abstract leaf is impossible (nothing to keep)
    abstract = {**template, "dense": {**template["dense"], "lora_a": jax.ShapeDtypeStruct((2, 1), jnp.float32)}}
    with pytest.raises(ValueError, match="dense/lora_a"):
        hf.assign_params(abstract, mapping, tensors, tmp_path, keep=[r"lora_a$"])
    # a mapping entry for a path the model lacks is a loader bug
    with pytest.raises(ValueError, match="dense/nope"):
        hf.assign_params(template, {**mapping, ("dense", "nope"): ("lin.weight", None)}, tensors, tmp_path)
    # a rank the transform rejects is reported as a mis-shaped tensor
    with pytest.raises(hf.CheckpointError) as e:
        hf.assign_params(template, {**mapping, ("dense", "kernel"): ("c.weight", hf.linear_kernel)},
                         tensors, tmp_path, keep=[r"lora_a$"], ignorable=[r"^lin\."])
    assert e.value.mismatched == [("c.weight", (2, 3), (2, 3, 4, 5))]


def test_peft_only_template_and_loaded_backbone_shape(bert_ckpt):
    """Loaders initialise only the PEFT leaves (the pretrained ones stay abstract until read),
    with exactly the values a full init gives, and return LoadedBackbone(config, params)."""
    from jaxrec.backbones.bert import BertEncoder, example_inputs, init_params
    from jaxrec.backbones.layers import PEFT_KEEP_PATTERNS

    d, _, _ = bert_ckpt
    loaded = load_bert(d, lora_rank=2, adapter_size=3, rng=jax.random.PRNGKey(4))
    assert isinstance(loaded, hf.LoadedBackbone) and loaded._fields == ("config", "params")
    cfg, params = loaded
    assert cfg is loaded.config and (cfg.lora_rank, cfg.adapter_size) == (2, 3)

    rng = jax.random.PRNGKey(4)
    template = hf.template_params(BertEncoder(cfg), example_inputs(cfg), rng, concrete=PEFT_KEEP_PATTERNS)
    full = init_params(cfg, rng)
    flat_t, flat_full = (dict(jax.tree_util.tree_leaves_with_path(t)) for t in (template, full))
    fresh = {p for p, v in flat_t.items() if not isinstance(v, jax.ShapeDtypeStruct)}
    # per layer: lora_a/b on query and value (4) + two adapters of 4 leaves each (8)
    assert len(fresh) == 2 * (4 + 8)
    assert all(re.search(r"lora_[ab]|adapter_(attn|ffn)", jax.tree_util.keystr(p)) for p in fresh)
    flat_loaded = dict(jax.tree_util.tree_leaves_with_path(params))
    for p in fresh:
        np.testing.assert_array_equal(np.asarray(flat_t[p]), np.asarray(flat_full[p]))
        np.testing.assert_array_equal(np.asarray(flat_loaded[p]), np.asarray(flat_full[p]))
