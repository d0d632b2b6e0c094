"""LoRADense: hand-computed outputs, loralib init statistics, and the zero-init identity on a
tiny Llama (LoRA must reproduce the frozen model exactly before training)."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxrec.backbones.llama import LlamaConfig, LlamaModel
from jaxrec.peft import LoRADense, merge_lora_kernel


def test_rank0_is_exactly_nn_dense():
    x = jax.random.normal(jax.random.key(0), (2, 3, 5))
    ref = nn.Dense(4).init(jax.random.key(1), x)
    ours = LoRADense(4).init(jax.random.key(1), x)
    assert jax.tree.structure(ref) == jax.tree.structure(ours)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(ours)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(nn.Dense(4).apply(ref, x)), np.asarray(LoRADense(4).apply(ref, x)))


def test_lora_output_hand_computed():
    # x W = [1, 2, 3]; + b = [2, 3, 4]; x A = 1*1 + 2*2 = 5; (x A) B = [5, 0, -5];
    # scale alpha / r = 2 / 1 -> [10, 0, -10]; y = [12, 3, -6].
    params = {"params": {
        "kernel": jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]),
        "bias": jnp.ones(3),
        "lora_a": jnp.array([[1.0], [2.0]]),
        "lora_b": jnp.array([[1.0, 0.0, -1.0]]),
    }}
    y = LoRADense(3, rank=1, alpha=2.0).apply(params, jnp.array([[1.0, 2.0]]))
    np.testing.assert_array_equal(np.asarray(y), [[12.0, 3.0, -6.0]])
    # Without bias the tree has no 'bias' and the output drops it.
    del params["params"]["bias"]
    y = LoRADense(3, use_bias=False, rank=1, alpha=2.0).apply(params, jnp.array([[1.0, 2.0]]))
    np.testing.assert_array_equal(np.asarray(y), [[11.0, 2.0, -7.0]])


def test_lora_init_follows_loralib():
    d_in, r = 256, 16
    p = LoRADense(8, rank=r).init(jax.random.key(0), jnp.zeros((1, d_in)))["params"]
    a = np.asarray(p["lora_a"])
    assert a.shape == (d_in, r) and p["lora_b"].shape == (r, 8)
    np.testing.assert_array_equal(np.asarray(p["lora_b"]), 0.0)
    # kaiming_uniform(a=sqrt(5)) on torch's [r, in] weight = U(-1/sqrt(in), 1/sqrt(in)).
    bound = 1.0 / np.sqrt(d_in)
    assert np.abs(a).max() <= bound
    assert np.abs(a).max() > 0.98 * bound  # 4096 draws reach the edge
    np.testing.assert_allclose(a.std(), bound / np.sqrt(3.0), rtol=0.05)


def test_lora_dropout_only_touches_the_low_rank_branch():
    x = jax.random.normal(jax.random.key(0), (4, 6))
    layer = LoRADense(5, rank=2, lora_dropout=0.5)
    p = layer.init(jax.random.key(1), x)
    det = layer.apply(p, x)
    # lora_b = 0: dropout on the LoRA input cannot change anything.
    np.testing.assert_array_equal(np.asarray(det),
                                  np.asarray(layer.apply(p, x, False, rngs={"dropout": jax.random.key(2)})))
    p = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.ones_like(v) if path[-1].key == "lora_b" else v, p)
    noisy = layer.apply(p, x, False, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(np.asarray(det), np.asarray(layer.apply(p, x)))  # sanity: B != 0 now
    assert not np.allclose(np.asarray(noisy), np.asarray(layer.apply(p, x)))


def test_negative_rank_raises():
    with pytest.raises(ValueError, match="rank"):
        LoRADense(3, rank=-1).init(jax.random.key(0), jnp.zeros((1, 2)))


# ---------------------------------------------------------------------------------------------
# LoRA on a whole (tiny) Llama: zero-initialised lora_b reproduces the frozen model exactly.
# ---------------------------------------------------------------------------------------------

BASE = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=4,
                   num_kv_heads=2, max_position_embeddings=16)


@pytest.fixture(scope="module")
def lora_llama():
    lcfg = dataclasses.replace(BASE, lora_rank=4, lora_alpha=8.0,
                               lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                             "up_proj", "down_proj"))
    ids = jax.random.randint(jax.random.key(0), (2, 6), 0, 32)
    mask = jnp.array([[1] * 6, [0, 0, 1, 1, 1, 1]])
    lora_params = jax.jit(LlamaModel(lcfg).init)(jax.random.key(1), ids, mask)["params"]
    flat = traverse_util.flatten_dict(lora_params)
    base_params = traverse_util.unflatten_dict({k: v for k, v in flat.items() if k[-1] not in ("lora_a", "lora_b")})
    return lcfg, ids, mask, lora_params, base_params


def test_zero_lora_b_reproduces_frozen_model_exactly(lora_llama):
    lcfg, ids, mask, lora_params, base_params = lora_llama
    n_lora = sum(1 for p in traverse_util.flatten_dict(lora_params) if p[-1] == "lora_b")
    assert n_lora == 7 * BASE.num_layers
    base_out = LlamaModel(BASE).apply({"params": base_params}, ids, mask)
    lora_out = LlamaModel(lcfg).apply({"params": lora_params}, ids, mask)
    np.testing.assert_array_equal(np.asarray(base_out.logits), np.asarray(lora_out.logits))
    for a, b in zip(base_out.hidden_states, lora_out.hidden_states):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nonzero_lora_equals_merged_kernel(lora_llama):
    """After 'training' (random lora_b), folding (alpha/r) A B into W gives the same model."""
    lcfg, ids, mask, lora_params, _ = lora_llama
    flat = traverse_util.flatten_dict(lora_params)
    keys = jax.random.split(jax.random.key(3), len(flat))
    trained = {p: (0.1 * jax.random.normal(k, v.shape) if p[-1] == "lora_b" else v)
               for (p, v), k in zip(flat.items(), keys)}
    merged = {}
    for p, v in trained.items():
        if p[-1] == "kernel" and p[:-1] + ("lora_a",) in trained:
            merged[p] = merge_lora_kernel(v, trained[p[:-1] + ("lora_a",)], trained[p[:-1] + ("lora_b",)],
                                          lcfg.lora_alpha)
        elif p[-1] not in ("lora_a", "lora_b"):
            merged[p] = v
    lora_out = LlamaModel(lcfg).apply({"params": traverse_util.unflatten_dict(trained)}, ids, mask).logits
    merged_out = LlamaModel(BASE).apply({"params": traverse_util.unflatten_dict(merged)}, ids, mask).logits
    base_out = LlamaModel(BASE).apply({"params": lora_llama[4]}, ids, mask).logits
    assert np.abs(np.asarray(lora_out) - np.asarray(base_out)).max() > 1e-3  # the update is live
    np.testing.assert_allclose(np.asarray(merged_out), np.asarray(lora_out), rtol=1e-5, atol=1e-6)


def test_merge_lora_kernel_shape_errors():
    with pytest.raises(ValueError, match="do not fit"):
        merge_lora_kernel(jnp.zeros((4, 3)), jnp.zeros((5, 2)), jnp.zeros((2, 3)), 1.0)
    with pytest.raises(ValueError, match="ranks differ"):
        merge_lora_kernel(jnp.zeros((4, 3)), jnp.zeros((4, 2)), jnp.zeros((1, 3)), 1.0)
