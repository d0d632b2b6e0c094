"""LEA's environment (rl.md §8): the item-token stage trains only the new rows; the state
model's softmax loss and the reward model's Bradley–Terry loss on hand examples; the
inputs' layout; unseen negatives; the precomputed augmentation is deterministic for a seed
(and moves with it) and reused from its cache."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.backbones import decoder_lm
from jaxrec.data import lea as lea_data
from jaxrec.data import tasks
from jaxrec.methods import lea
from jaxrec.methods.gaze_reward import bt_loss

from tests.train.helpers import get_config


@pytest.fixture(scope="module")
def small(tiny):
    """A tiny decoder (a few pretraining steps) on the tiny dataset's item texts, and its LE."""
    section = decoder_lm.default_section(hidden_size=32, intermediate_size=64, num_layers=1,
                                         num_heads=2, pretrain_steps=5, batch_size=16, max_len=32)
    texts = decoder_lm.item_texts(tiny.items, tiny.num_items)
    dec = decoder_lm.pretrain(texts, section)
    s = lea.default_section(item_steps=30, batch_size=16, item_lr=3e-2)
    model = lea.build_model(dec, tiny.num_items, s)
    return dec, texts, s, model, lea.init_params(model, dec, 0)


def _leaves(tree):
    import flax.traverse_util
    return {"/".join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def test_item_token_stage_trains_only_the_new_embeddings(small):
    dec, texts, s, model, params = small
    ids, mask, loss_mask = lea.item_sentences(dec, texts, s.template, 32)
    # The item token sits right after <s> ("{item} is ..."); the loss covers what follows.
    v = dec.tokenizer.vocab_size
    np.testing.assert_array_equal(ids[:, 1], v + np.arange(len(texts)))
    assert loss_mask[:, :2].sum() == 0 and (loss_mask <= mask).all()
    new, losses = lea.train_item_tokens(model, params, ids, mask, loss_mask, s)
    before, after = _leaves(params), _leaves(new)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert changed == ["item_tokens"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # The decoder's own weights are still the pretrained ones.
    for k, x in _leaves(dec.params).items():
        np.testing.assert_array_equal(after[f"decoder/{k}"], x)


def test_state_model_loss_hand_example():
    s = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    actions = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # Row 0 logits (1, 0, 1), target 0; row 1 logits (0, 2, 2), target 2.
    want = (-(1 - math.log(2 * math.e + 1)) - (2 - math.log(1 + 2 * math.e ** 2))) / 2
    got = lea.state_model_loss(s, actions, jnp.array([0, 2]))
    assert float(got) == pytest.approx(want, rel=1e-6)
    # τ = 0.5 doubles the logits.
    want_t = (-(2 - math.log(2 * math.e ** 2 + 1)) - (4 - math.log(1 + 2 * math.e ** 4))) / 2
    assert float(lea.state_model_loss(s, actions, jnp.array([0, 2]), 0.5)) == pytest.approx(want_t, rel=1e-6)


def test_bradley_terry_hand_example_and_reward_model_step(small, tiny):
    # −mean log σ(r⁺ − r⁻): margins 2 and −1.
    got = bt_loss(jnp.array([3.0, 0.0]), jnp.array([1.0, 1.0]))
    want = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2
    assert float(got) == pytest.approx(want, rel=1e-6)
    # The reward model's first recorded loss is BT of its own rewards on the first minibatch.
    dec, _, s, model, params = small
    n, v = tiny.num_items, dec.tokenizer.vocab_size
    r = np.random.default_rng(0)
    state = np.full((40, 10), n, np.int32)
    state[:, :3] = r.integers(0, n, (40, 3))
    pos, neg = r.integers(0, n, 40), r.integers(0, n, 40)
    sp = lea.special_ids(dec)
    p_ids, p_mask = lea.reward_inputs(state, pos, n, v, **sp)
    n_ids, n_mask = lea.reward_inputs(state, neg, n, v, **sp)
    s2 = lea.default_section(reward_steps=1, batch_size=8, seed=7)
    _, losses = lea.train_reward_model(model, params, p_ids, p_mask, n_ids, n_mask, s2)
    idx = np.random.default_rng(7 + 2).integers(0, 40, 8)          # fit_minibatch's first draw
    rw = lambda i, m: np.asarray(model.apply({"params": params}, i[idx], m[idx], method=lea.LEModel.reward),
                                 np.float64)
    margin = rw(p_ids, p_mask) - rw(n_ids, n_mask)
    assert losses[0] == pytest.approx(np.mean(np.log1p(np.exp(-margin))), rel=1e-4)


def test_prefix_and_reward_inputs_layout():
    n, v = 5, 100
    state = np.array([[3, 1, n, n], [n, n, n, n]])
    bos, pad = 97, 98               # a tokenizer's own ids, not jaxrec's defaults
    ids, mask, count = lea.prefix_tokens(state, n, v, bos=bos, pad=pad)
    np.testing.assert_array_equal(ids, [[bos, 103, 101, pad, pad], [bos, pad, pad, pad, pad]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(count, [2, 0])
    ids, mask = lea.reward_inputs(state, np.array([4, 2]), n, v, bos=bos, pad=pad)
    np.testing.assert_array_equal(ids, [[bos, 103, 101, 104, pad, pad], [bos, 102, pad, pad, pad, pad]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])


def test_unseen_negatives_avoid_the_session():
    seen = [np.array([0, 1, 2]), np.array([3])]
    rows = np.array([0, 0, 1, 1, 1])
    out = lea.sample_unseen(np.random.default_rng(0), seen, rows, 6, 50)
    assert out.shape == (5, 50)
    for i, s in enumerate(rows):
        assert not np.isin(out[i], seen[s]).any()
    assert set(np.unique(out[:2])) == {3, 4, 5}
    with pytest.raises(ValueError, match="unseen"):
        lea.sample_unseen(np.random.default_rng(0), [np.arange(4)], np.array([0]), 4, 1)


def _lea_config(cache, seed=0):
    c = get_config("lea.py", "smoke")
    c.lea.cache_dir = str(cache)
    c.decoder.cache_dir = str(cache)
    c.lea.seed = seed
    return c


def test_augmentation_is_deterministic_for_a_seed_and_cached(tiny, tmp_path):
    a = tasks.build_task(_lea_config(tmp_path / "a"), tiny)
    b = tasks.build_task(_lea_config(tmp_path / "b"), tiny)     # trained again from scratch
    for k in lea_data.TRAIN_KEYS:
        np.testing.assert_array_equal(a.train[k], b.train[k], err_msg=k)
    np.testing.assert_array_equal(a.validation.arrays["le_state"], b.validation.arrays["le_state"])
    t = a.num_train
    assert a.train["le_state"].shape == (t, 32) and a.train["aug_actions"].shape == (t, 2)
    # Augmented actions are never the logged action nor in the state window.
    assert not (a.train["aug_actions"] == a.train["action"][:, None]).any()
    assert not (a.train["aug_actions"][:, :, None] == a.train["state"][:, None, :]).any()
    # Rewards: σ of the reward model's score (reward_mix 1), in (0, 1).
    assert (a.train["le_reward"] > 0).all() and (a.train["le_reward"] < 1).all()
    # s′ of a row is s of the session's next row.
    nxt = ~a.train["is_done"][:-1]
    np.testing.assert_array_equal(a.train["le_next_state"][:-1][nxt], a.train["le_state"][1:][nxt])
    # The environment's own quality on validation queries is reported with the task.
    info = a.extras["lea"]
    assert 0 <= info["state_hr@10"] <= 1 and 0 <= info["reward_acc"] <= 1
    assert info["state_hr@10"] == b.extras["lea"]["state_hr@10"]
    # Cached: a rebuild reads the files (no new environment or augmentation written).
    files = sorted(os.listdir(tmp_path / "a"))
    c = tasks.build_task(_lea_config(tmp_path / "a"), tiny)
    assert sorted(os.listdir(tmp_path / "a")) == files
    np.testing.assert_array_equal(c.train["aug_actions"], a.train["aug_actions"])
    # Another seed: another subset and other LE weights, so other arrays.
    d = tasks.build_task(_lea_config(tmp_path / "a", seed=1), tiny)
    assert not np.array_equal(d.train["le_state"], a.train["le_state"])
