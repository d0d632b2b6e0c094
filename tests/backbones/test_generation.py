"""KV-cache decoding == step-by-step decoding without a cache (greedy and top-k), cached forward
== uncached forward, left-padding checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.backbones import generation
from jaxrec.backbones.llama import LlamaConfig, LlamaModel, init_cache
from jaxrec.peft import soft_prompt

V = 50


@pytest.fixture(scope="module")
def model_params():
    # O(1)-scale weights so the argmax is not a near-tie everywhere.
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_position_embeddings=64, initializer_range=0.5)
    model = LlamaModel(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    return model, params


def _prompt():
    ids = np.array([[0, 0, 5, 7, 9, 11], [3, 4, 8, 1, 2, 6], [0, 0, 0, 0, 13, 14]], np.int32)
    mask = (np.arange(6)[None] >= np.array([[2], [0], [4]])).astype(np.int32)
    return ids, mask


def test_cached_forward_equals_uncached(model_params):
    model, params = model_params
    ids, mask = _prompt()
    full = model.apply(params, ids, mask).logits
    # Prefill 4 tokens then feed 2 one at a time through the cache.
    cache = init_cache(model.config, 3, 6)
    o1 = model.apply(params, ids[:, :4], mask, cache=cache)
    o2 = model.apply(params, ids[:, 4:5], mask, cache=o1.cache)
    o3 = model.apply(params, ids[:, 5:6], mask, cache=o2.cache)
    got = jnp.concatenate([o1.logits, o2.logits, o3.logits], axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(full)[real], rtol=1e-5, atol=1e-5)
    assert int(o3.cache.index) == 6


@pytest.mark.parametrize("top_k", [0, 5])
def test_generation_with_cache_equals_uncached(model_params, top_k):
    model, params = model_params
    ids, mask = _prompt()
    rng = jax.random.key(3)
    got = generation.generate(model, params, ids, mask, rng, max_new_tokens=4, top_k=top_k)
    want = generation.generate_uncached(model, params, ids, mask, rng, max_new_tokens=4, top_k=top_k)
    assert got.shape == (3, 4)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # Rows differ from each other (the test is not satisfied by a constant output).
    assert len({tuple(r) for r in np.asarray(got).tolist()}) > 1


def test_generation_from_soft_prefix_embeddings(model_params):
    """A soft prefix + right-padded text, left-aligned, decodes like the ids of the same text."""
    model, params = model_params
    ids, mask = _prompt()
    emb = model.apply(params, jnp.asarray(ids), method=LlamaModel.embed)
    # Split each prompt into a 2-token "soft" block and the rest, right-padded, then re-join.
    text_ids = np.array([[5, 7, 9, 11], [8, 1, 2, 6], [13, 14, 0, 0]], np.int32)
    text_mask = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], np.int32)
    pre = jnp.zeros((3, 2, emb.shape[-1]))
    pre = pre.at[1].set(emb[1, :2])
    pre_mask = np.array([[0, 0], [1, 1], [0, 0]], np.int32)
    joined, jmask = soft_prompt.concat_blocks(
        [(pre, pre_mask), (model.apply(params, jnp.asarray(text_ids), method=LlamaModel.embed), text_mask)])
    aligned, amask = soft_prompt.left_align(joined, jmask)
    np.testing.assert_array_equal(np.asarray(amask), mask)
    got = generation.generate(model, params, aligned, amask, max_new_tokens=4)
    want = generation.generate(model, params, ids, mask, max_new_tokens=4)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_generate_is_traced_once(model_params):
    model, params = model_params
    ids, mask = _prompt()
    fn = generation.make_generate(model, 3, 0, 1.0, None)  # the key generate() uses
    generation.generate(model, params, ids, mask, max_new_tokens=3)
    generation.generate(model, params, ids[::-1].copy(), mask[::-1].copy(), max_new_tokens=3)
    assert fn._cache_size() == 1


def test_eos_stops_a_row(model_params):
    model, params = model_params
    ids, mask = _prompt()
    free = np.asarray(generation.generate(model, params, ids, mask, max_new_tokens=5))
    eos = int(free[0, 1])
    got = np.asarray(generation.generate(model, params, ids, mask, max_new_tokens=5, eos_id=eos))
    assert (got[0, 1:] == eos).all()
    ref = np.asarray(generation.generate_uncached(model, params, ids, mask, max_new_tokens=5, eos_id=eos))
    np.testing.assert_array_equal(got, ref)


def test_right_padded_prompt_is_rejected(model_params):
    model, params = model_params
    with pytest.raises(ValueError, match=r"rows \[1\] are not left-padded"):
        generation.generate(model, params, np.ones((2, 3), np.int32), np.array([[1, 1, 1], [1, 1, 0]]),
                            max_new_tokens=2)


def test_cache_with_alternating_windows_and_soft_caps():
    """Gemma-2 / Qwen2 features through the KV cache: per-layer windows (layer 0 slides over 2
    tokens, layer 1 is global), soft-capped scores and logits, sandwich norms, q/k/v biases
    without an o bias: cached decoding equals the uncached forward and step-by-step decoding."""
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16, max_position_embeddings=64, initializer_range=0.5,
                      sliding_window=2, layer_types=("sliding_attention", "full_attention"),
                      attn_logit_softcapping=3.0, final_logit_softcapping=5.0, query_pre_attn_scalar=24,
                      sandwich_norm=True, attention_bias=True, o_proj_bias=False)
    model = LlamaModel(cfg)
    params = model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))
    assert "bias" in params["params"]["layers_0"]["self_attn"]["k_proj"]
    assert "bias" not in params["params"]["layers_0"]["self_attn"]["o_proj"]
    ids, mask = _prompt()
    full = model.apply(params, ids, mask).logits
    assert float(jnp.abs(full).max()) <= 5.0  # the final cap holds
    cache = init_cache(cfg, 3, 6)
    o1 = model.apply(params, ids[:, :3], mask, cache=cache)
    o2 = model.apply(params, ids[:, 3:6], mask, cache=o1.cache)
    got = jnp.concatenate([o1.logits, o2.logits], axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(full)[real], rtol=1e-5, atol=1e-5)
    out = generation.generate(model, params, ids, mask, max_new_tokens=4)
    np.testing.assert_array_equal(np.asarray(out),
                                  np.asarray(generation.generate_uncached(model, params, ids, mask, max_new_tokens=4)))
