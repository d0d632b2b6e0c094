"""PERSOMA's parts without a decoder: resamplers, first-stage sampling, targets, history
rendering, genre parsing and set F1 (spec llm.md §1.1, §1.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data import persoma as pdata
from jaxrec.evaluators.genres import genre_scores, parse_genres, set_prf
from jaxrec.peft import resamplers as rs

D_E, D, B = 12, 16, 3


def _history(n, lengths, seed=0):
    e = jax.random.normal(jax.random.key(seed), (B, n, D_E))
    mask = (np.arange(n)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return e, jnp.asarray(mask)


@pytest.fixture(scope="module")
def modules():
    """Each resampler with parameters initialised once at n = 5 (the same tree serves any n)."""
    out = {}
    for kind in rs.RESAMPLERS:
        m = rs.make_resampler(kind, D, hidden=8, num_layers=1, num_heads=2, num_tokens=4)
        e, mask = _history(5, [5, 3, 1])
        out[kind] = (m, m.init(jax.random.key(1), e, mask))
    return out


@pytest.mark.parametrize("n", [1, 7, 40])
def test_resampler_output_shapes(modules, n):
    lengths = [n, max(n // 2, 1), 1]
    e, mask = _history(n, lengths)
    for kind, (m, params) in modules.items():
        tok, tmask = m.apply(params, e, mask)
        k = n if kind in ("mlp", "transformer") else 4       # Perceiver / pooled: k fixed for any n
        assert tok.shape == (B, k, D), kind
        assert tmask.shape == (B, k), kind
        assert np.isfinite(np.asarray(tok)).all()
        if k == n:
            np.testing.assert_array_equal(np.asarray(tmask), np.asarray(mask))
            # Padded slots are zero soft tokens.
            assert float(jnp.abs(tok * (1 - mask)[..., None]).max()) == 0.0
        else:
            np.testing.assert_array_equal(np.asarray(tmask), np.ones((B, 4)))


def test_resamplers_ignore_padding(modules):
    """Extra padded history slots change no real output (masks reach every attention)."""
    e, mask = _history(6, [6, 4, 2])
    e_pad = jnp.concatenate([e, 100.0 * jnp.ones((B, 5, D_E))], axis=1)
    mask_pad = jnp.concatenate([mask, jnp.zeros((B, 5), jnp.int32)], axis=1)
    for kind, (m, params) in modules.items():
        a, _ = m.apply(params, e, mask)
        b, _ = m.apply(params, e_pad, mask_pad)
        k = a.shape[1]
        np.testing.assert_allclose(np.asarray(b[:, :k]), np.asarray(a), atol=1e-5, err_msg=kind)


def test_perceiver_attends_to_items():
    """The Perceiver's tokens depend on the history (not only on its latents)."""
    m = rs.make_resampler("perceiver", D, hidden=8, num_layers=1, num_heads=2, num_tokens=3)
    e, mask = _history(10, [10, 10, 10])
    p = m.init(jax.random.key(0), e, mask)
    a, _ = m.apply(p, e, mask)
    b, _ = m.apply(p, e + 1.0, mask)
    assert float(jnp.abs(a - b).max()) > 1e-3


def test_recency_by_hand():
    mask = jnp.asarray([[1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(rs.recency(mask)), [[2, 1, 0, 0], [0, 0, 0, 0]])


def test_unknown_resampler():
    with pytest.raises(ValueError, match="resampler must be one of"):
        rs.make_resampler("lstm", D)


def test_sample_history():
    np.testing.assert_array_equal(pdata.sample_history(8, "recent", 3), [5, 6, 7])
    np.testing.assert_array_equal(pdata.sample_history(2, "recent", 3), [0, 1])
    np.testing.assert_array_equal(pdata.sample_history(2, "random", 3, np.random.default_rng(0)), [0, 1])
    r = pdata.sample_history(100, "random", 10, np.random.default_rng(0))
    assert len(r) == 10 and len(set(r.tolist())) == 10
    assert np.all(np.diff(r) > 0) and r.min() >= 0 and r.max() < 100
    assert not np.array_equal(r, np.arange(90, 100))
    with pytest.raises(ValueError, match="sampling must be one of"):
        pdata.sample_history(5, "cluster", 2)
    with pytest.raises(ValueError, match="needs an rng"):
        pdata.sample_history(5, "random", 2)


def test_target_genres_by_hand():
    # 4 items x 3 genres.
    ig = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1]], np.int8)
    # Ratings keep items 1, 2 (>= 4): counts (0, 2, 1) -> top-1 = genre 1, top-2 = {1, 2}.
    np.testing.assert_array_equal(pdata.target_genres([0, 1, 2, 3], [1, 4, 5, 2], ig, 4, "top", 1), [0, 1, 0])
    np.testing.assert_array_equal(pdata.target_genres([0, 1, 2, 3], [1, 4, 5, 2], ig, 4, "top", 2), [0, 1, 1])
    # No liked item: all future items count; 'all' keeps every genre present.
    np.testing.assert_array_equal(pdata.target_genres([0, 3], [1, 2], ig, 4, "all", 0), [1, 1, 1])
    # Ties broken by the lower genre id: counts (1, 1, 0) with top-1 -> genre 0.
    np.testing.assert_array_equal(pdata.target_genres([0], None, ig, 4, "top", 1), [1, 0, 0])


class _WordTok:
    """One id per whitespace word (for budget arithmetic)."""

    def encode(self, text):
        return [len(w) for w in text.split()]


def test_render_history_keeps_most_recent_that_fit():
    texts = ["a b", "c", "d e f"]
    # Rendered with ratings: "a b | rated 4 ;" = 6 words, "c | rated 5 ;" = 5, "d e f ;" = 4 (no rating).
    ids = pdata.render_history(_WordTok(), texts, [0, 1, 2], [4, 5, 0], budget=9)
    assert len(ids) == 9                         # items 1 and 2 fit (5 + 4); item 0 would exceed
    ids = pdata.render_history(_WordTok(), texts, [0, 1, 2], [4, 5, 0], budget=15)
    assert len(ids) == 15
    assert pdata.render_history(_WordTok(), texts, [0, 1, 2], [4, 5, 0], budget=3) == []


def test_set_prf_by_hand():
    assert set_prf({0, 1, 2}, {1, 2, 3}) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    p, r, f = set_prf({0, 1}, {1, 2, 3, 4})
    assert (p, r) == (0.5, 0.25) and f == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert set_prf(set(), {1}) == (0.0, 0.0, 0.0)
    assert set_prf({1}, set()) == (0.0, 0.0, 0.0)


def test_genre_scores_macro_and_micro_by_hand():
    preds, golds = [{0, 1}, {2}], [{1}, {2, 3}]
    macro = genre_scores(preds, golds, "macro")
    # example 1: P 1/2 R 1 F 2/3; example 2: P 1 R 1/2 F 2/3.
    assert macro["precision"] == pytest.approx(0.75) and macro["recall"] == pytest.approx(0.75)
    assert macro["f1"] == pytest.approx(2 / 3) and macro["pred_size"] == 1.5
    micro = genre_scores(preds, golds, "micro")
    # tp 2, predicted 3, gold 3.
    assert micro["precision"] == pytest.approx(2 / 3) and micro["f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="average must be"):
        genre_scores(preds, golds, "weighted")


def test_parse_genres():
    names = ["action", "children's", "comedy", "sci-fi"]
    assert parse_genres("genres: Action, comedy ,  foo, action", names) == {0, 2}
    assert parse_genres("childrens; SCI-FI", names) == {1, 3}
    assert parse_genres("nothing here", names) == set()


def test_item_embeddings_minilm_and_cache(tmp_path):
    texts = ["Star Wars | genres: action, sci-fi", "Star Trek | genres: action, sci-fi",
             "Sense and Sensibility | genres: drama, romance"]
    e = pdata.item_embeddings(texts, "minilm", cache_dir=str(tmp_path))
    assert e.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    cos = e @ e.T
    assert cos[0, 1] > cos[0, 2] + 0.1          # the real sentence encoder: similar titles are close
    assert len(list(tmp_path.iterdir())) == 1
    np.testing.assert_array_equal(pdata.item_embeddings(texts, "minilm", cache_dir=str(tmp_path)), e)
    h = pdata.item_embeddings(texts, "hash", dim=16, cache_dir=str(tmp_path))
    assert h.shape == (3, 16) and len(list(tmp_path.iterdir())) == 2
    with pytest.raises(ValueError, match="encoder must be"):
        pdata.item_embeddings(texts, "st5", cache_dir=str(tmp_path))
