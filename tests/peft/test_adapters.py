"""HoulsbyAdapter: hand-computed output, near-identity init, parameter count (IISAN spec
§1.3 / §1.12: 768 -> 64 -> 768, ReLU, N(0, 0.01^2) weights, zero biases)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.peft import HoulsbyAdapter


def _phi(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))




def test_houlsby_hand_computed():
    # down: [1, 2] @ [[1, -1], [1, 1]] + [0, -2] = [3, -1]; relu -> [3, 0];
    # up: [3, 0] @ [[1, 0], [0, 1]] + [0.5, 0] = [3.5, 0]; + x = [4.5, 2].
    p = {"params": {"down": {"kernel": jnp.array([[1.0, -1.0], [1.0, 1.0]]), "bias": jnp.array([0.0, -2.0])},
                    "up": {"kernel": jnp.eye(2), "bias": jnp.array([0.5, 0.0])}}}
    y = HoulsbyAdapter(2).apply(p, jnp.array([[1.0, 2.0]]))
    np.testing.assert_array_equal(np.asarray(y), [[4.5, 2.0]])
    # GELU (exact erf form): gelu(3) = 3 Phi(3), gelu(-1) = -Phi(-1).
    y = HoulsbyAdapter(2, activation="gelu").apply(p, jnp.array([[1.0, 2.0]]))
    np.testing.assert_allclose(np.asarray(y), [[1.0 + 3 * _phi(3.0) + 0.5, 2.0 - _phi(-1.0)]], rtol=1e-6)


def test_houlsby_init_near_identity_and_count():
    d, r = 384, 64
    p = HoulsbyAdapter(r).init(jax.random.key(0), jnp.zeros((1, d)))["params"]
    np.testing.assert_array_equal(np.asarray(p["down"]["bias"]), 0.0)
    np.testing.assert_array_equal(np.asarray(p["up"]["bias"]), 0.0)
    for k in ("down", "up"):
        np.testing.assert_allclose(float(jnp.std(p[k]["kernel"])), 0.01, rtol=0.05)
    assert sum(v.size for v in jax.tree.leaves(p)) == 2 * d * r + r + d
    x = jax.random.normal(jax.random.key(1), (8, d))
    y = HoulsbyAdapter(r).apply({"params": p}, x)
    # down x ~ N(0, 0.01^2 d) -> std 0.2; up(relu(.)) ~ 0.01 * sqrt(r / 2) * 0.2 ~ 0.011.
    rel = float(jnp.sqrt(jnp.mean((y - x) ** 2) / jnp.mean(x ** 2)))
    assert 0.002 < rel < 0.03, rel


def test_houlsby_count_at_bert_width():
    # IISAN spec §1.3: 768 -> 64 -> 768 has 99,136 parameters (2 * 768 * 64 + 64 + 768).
    shapes = jax.eval_shape(HoulsbyAdapter(64).init, jax.random.key(0), jnp.zeros((1, 768)))
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == 99_136


def test_houlsby_rejects_bad_fields():
    with pytest.raises(ValueError, match="activation"):
        HoulsbyAdapter(4, activation="tanh").init(jax.random.key(0), jnp.zeros((1, 8)))
    with pytest.raises(ValueError, match="bottleneck"):
        HoulsbyAdapter(0).init(jax.random.key(0), jnp.zeros((1, 8)))
