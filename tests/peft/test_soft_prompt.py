"""Soft-prefix layout and masks (spec llm.md §1 prefix, §2.2 GazeConcat)."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.peft import soft_prompt


def test_concat_layout_and_masks():
    b, d = 2, 3
    shared = jnp.full((2, d), 7.0)                 # one learned prompt for every row
    soft = jnp.arange(b * 3 * d, dtype=jnp.float32).reshape(b, 3, d)
    text = -jnp.ones((b, 4, d))
    text_mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    emb, mask = soft_prompt.concat_blocks([(shared, None), (soft, None), (text, text_mask)])
    assert emb.shape == (b, 9, d)
    np.testing.assert_array_equal(np.asarray(mask), [[1, 1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(np.asarray(emb[:, :2]), 7.0)
    np.testing.assert_array_equal(np.asarray(emb[:, 2:5]), np.asarray(soft))
    np.testing.assert_array_equal(np.asarray(emb[:, 5:]), -1.0)


def test_wrap_block_delimiters():
    block = jnp.ones((2, 3, 4))
    bm = np.array([[1, 1, 0], [1, 0, 0]])
    emb, mask = soft_prompt.wrap_block(jnp.full((4,), 2.0), block, bm, jnp.full((4,), 3.0))
    np.testing.assert_array_equal(np.asarray(mask), [[1, 1, 1, 0, 1], [1, 1, 0, 0, 1]])
    np.testing.assert_array_equal(np.asarray(emb[:, 0]), 2.0)
    np.testing.assert_array_equal(np.asarray(emb[:, -1]), 3.0)
    np.testing.assert_array_equal(np.asarray(emb[:, 1:4]), 1.0)


def test_left_align_keeps_order():
    emb = jnp.arange(5, dtype=jnp.float32).reshape(1, 5, 1)
    emb2, m2 = soft_prompt.left_align(emb, np.array([[1, 0, 1, 1, 0]]))
    np.testing.assert_array_equal(np.asarray(m2), [[0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(np.asarray(emb2)[0, 2:, 0], [0, 2, 3])


def test_bad_blocks():
    with pytest.raises(ValueError, match="block 1 has shape"):
        soft_prompt.concat_blocks([(jnp.ones((2, 1, 3)), None), (jnp.ones((2, 1, 4)), None)])
    with pytest.raises(ValueError, match="mask 0 has shape"):
        soft_prompt.concat_blocks([(jnp.ones((2, 1, 3)), np.ones((2, 2)))])
