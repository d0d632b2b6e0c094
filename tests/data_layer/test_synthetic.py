"""Tests of the synthetic world (jaxrec/data/synthetic.py; specs/synthetic.md).

The sanity property of the spec is measured with counting predictors written here in
numpy (no neural model): last-item Markov counts beat popularity, which beats random.
"""

import dataclasses

import numpy as np
import pytest

from jaxrec.data import events, synthetic
from jaxrec.data.synthetic import SyntheticConfig

K = 10  # HR@K cut-off


@pytest.fixture(scope="module")
def small():
    return synthetic.generate(SyntheticConfig.small())


@pytest.fixture(scope="module")
def small_world():
    return synthetic.build_world(SyntheticConfig.small())


def _split(log, frac=0.8, seed=0):
    """Session-level split like specs/rl.md §1.3: [E] bool train mask."""
    perm = np.random.default_rng(seed).permutation(log.num_sessions)
    return np.isin(log.session, perm[: int(frac * log.num_sessions)])


def _transitions(log):
    """prev [E] item before each event and has_prev [E] (False at a session start)."""
    has_prev = np.concatenate([[False], log.session[1:] == log.session[:-1]])
    prev = np.concatenate([[0], log.item[:-1]])
    return prev, has_prev


def _hr_at_k(scores, target):
    """scores [Q, N], target [Q] -> fraction of targets in the top K (stable ties)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return float((top == target[:, None]).any(axis=1).mean())


def _all_arrays(log):
    out = {"session": log.session, "item": log.item, "timestamp": log.timestamp,
           "is_buy": log.is_buy, "images": log.items.extra["images"],
           "category": log.items.category}
    out.update({f"gt_{k}": v for k, v in log.ground_truth.items()})
    out.update({f"f_{k}": v for k, v in log.features.items()})
    return out


# ------------------------------------------------------------------------ determinism

def test_same_seed_same_bytes(small):
    again = synthetic.generate(SyntheticConfig.small())
    a, b = _all_arrays(small), _all_arrays(again)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    assert small.items.titles == again.items.titles
    assert small.items.genres == again.items.genres
    assert small.items.extra["descriptions"] == again.items.extra["descriptions"]


def test_different_seed_differs(small):
    other = synthetic.generate(SyntheticConfig.small(seed=1))
    assert not np.array_equal(small.item[:1000], other.item[:1000])
    assert not np.array_equal(small.items.extra["images"], other.items.extra["images"])
    assert sum(x != y for x, y in zip(small.items.titles, other.items.titles)) > 450


def test_world_does_not_depend_on_session_count(small_world):
    w = synthetic.build_world(SyntheticConfig.small(num_sessions=50, max_len=10))
    assert w.titles == small_world.titles
    np.testing.assert_array_equal(w.images, small_world.images)
    np.testing.assert_array_equal(w.neighbours, small_world.neighbours)
    log = synthetic.generate(SyntheticConfig.small(num_sessions=50, max_len=10))
    assert log.num_sessions == 50 and np.diff(log.session_bounds()).max() <= 10


# ------------------------------------------------------------------------- statistics

def test_statistics_in_configured_ranges(small):
    cfg = SyntheticConfig.small()
    small.validate()
    st = synthetic.statistics(small)
    assert st["sessions"] == cfg.num_sessions and st["items"] == cfg.num_items
    assert 0.03 <= st["purchase_ratio"] <= 0.05
    assert st["min_len"] >= cfg.min_len and st["max_len"] <= cfg.max_len
    # 3,000 sessions: the sample mean of a law with sd ~3.3 lies within 0.3 of 6.3.
    assert abs(st["mean_len"] - cfg.mean_len) < 0.3
    assert st["top10pct_share"] > 0.3  # Zipf-like skew
    assert np.bincount(small.item, minlength=cfg.num_items).min() >= 1  # coverage pass
    np.testing.assert_array_equal(small.raw_item_ids, np.arange(cfg.num_items))
    assert st["interactions"] == st["clicks"] + st["purchases"] == small.num_events


def test_feature_and_truth_tables_are_named(small):
    assert tuple(small.features) == synthetic.FEATURE_NAMES
    assert tuple(small.ground_truth) == synthetic.GROUND_TRUTH_NAMES
    assert small.ground_truth["user_genres"].shape == (small.num_events, 12)
    assert not set(small.features) & set(small.ground_truth)


def test_group_sampler_matches_weights(small_world):
    # Inverse-CDF draws inside one group follow the within-group popularity shares.
    w = small_world
    g = int(w.group[0])
    sampler = synthetic._GroupSampler(w.group, w.within_group)
    n = 100_000
    draws = sampler(np.full(n, g), np.random.default_rng(0).random(n))
    members = np.flatnonzero(w.group == g)
    assert set(np.unique(draws)) <= set(members)
    freq = np.bincount(draws, minlength=len(w.group))[members] / n
    np.testing.assert_allclose(freq, w.within_group[members], atol=0.005)
    np.testing.assert_allclose(w.within_group[members].sum(), 1.0)


def test_timestamps_strictly_increase_within_sessions(small):
    same = small.session[1:] == small.session[:-1]
    assert np.all(np.diff(small.timestamp)[same] > 0)
    # The gap after an event is at least its (ceil'd) dwell time plus one second.
    gaps = np.diff(small.timestamp)[same]
    assert np.all(gaps >= np.ceil(small.features["dwell"][:-1][same]) + 1)


def test_length_law_mean_is_exact():
    for lo, hi, mean in [(3, 30, 6.3), (3, 50, 5.77), (2, 10, 8.0)]:
        q = synthetic._truncated_geometric_q(lo, hi, mean)
        k = np.arange(hi - lo + 1)
        p = q ** k / (q ** k).sum()
        assert abs(lo + (k * p).sum() - mean) < 1e-6


def test_expected_purchase_rate_is_the_target(small):
    # b0 is solved so that the mean purchase probability equals the configured rate.
    assert abs(small.ground_truth["buy_prob"].mean() - 0.042) < 1e-5
    logc = synthetic.generate(SyntheticConfig.small(num_sessions=300, purchase_rate=0.1,
                                                    intents=("continue", "explore")))
    assert abs(logc.ground_truth["buy_prob"].mean() - 0.1) < 1e-5
    assert set(np.unique(logc.ground_truth["intent"])) == {0, 1}


def test_tiny_log_keeps_cold_items():
    cfg = SyntheticConfig(num_sessions=5, num_items=64, num_categories=2, num_substyles=4,
                          mean_len=4.0, max_len=6)
    log = synthetic.generate(cfg)
    counts = np.bincount(log.item, minlength=64)
    assert log.num_items == 64 and (counts == 0).sum() >= 64 - log.num_events


# ------------------------------------------------------------------- sanity property

def test_order_beats_popularity_beats_random(small):
    n = small.num_items
    train = _split(small)
    prev, has_prev = _transitions(small)
    tr, te = train & has_prev, ~train & has_prev
    counts = np.zeros((n, n))
    np.add.at(counts, (prev[tr], small.item[tr]), 1.0)
    pop = np.bincount(small.item[train], minlength=n).astype(float)
    q_prev, target = prev[te], small.item[te]
    # Ties among Markov counts fall back to popularity (tiny tie-breaker).
    hr_markov = _hr_at_k(counts[q_prev] + 1e-6 * pop / pop.max(), target)
    hr_pop = _hr_at_k(np.broadcast_to(pop, (len(target), n)), target)
    rand_scores = np.random.default_rng(0).random((len(target), n))
    hr_rand = _hr_at_k(rand_scores, target)
    assert abs(hr_rand - K / n) < 0.01  # random is K/N = 0.02
    assert hr_pop > 3 * hr_rand
    assert hr_markov > hr_pop + 0.2


def test_purchases_depend_on_learnable_state(small):
    # Observable driver: purchases rise with earlier events in the item's category.
    cat = small.items.category[small.item]
    earlier = synthetic._count_earlier(small.session.astype(np.int64) * 100 + cat)
    rate0 = small.is_buy[earlier == 0].mean()
    rate2 = small.is_buy[earlier >= 2].mean()
    assert rate2 > 2.0 * rate0
    # Hidden driver: purchased items have higher buyability than clicked ones.
    b = small.items.extra["gt_buyability"][small.item]
    buy = small.is_buy == 1
    assert b[buy].mean() > b[~buy].mean() + 0.5


def test_weighting_purchases_changes_rankings():
    # More sessions than the default so that ~500 held-out purchases make the gap clear.
    log = synthetic.generate(SyntheticConfig.small(num_sessions=10_000))
    n = log.num_items
    train = _split(log)
    prev, has_prev = _transitions(log)
    buy = log.is_buy == 1
    clicks, buys = np.zeros((n, n)), np.zeros((n, n))
    m = train & has_prev & ~buy
    np.add.at(clicks, (prev[m], log.item[m]), 1.0)
    m = train & has_prev & buy
    np.add.at(buys, (prev[m], log.item[m]), 1.0)
    pop = np.bincount(log.item[train], minlength=n) * 1e-6
    res = {}
    for name, q in (("p", ~train & has_prev & buy), ("c", ~train & has_prev & ~buy)):
        plain = clicks[prev[q]] + buys[prev[q]] + pop
        weighted = clicks[prev[q]] + 6.0 * buys[prev[q]] + pop
        res[name] = (_hr_at_k(plain, log.item[q]), _hr_at_k(weighted, log.item[q]))
    assert res["p"][1] > res["p"][0] + 0.01      # purchases ranked better ...
    assert res["c"][1] <= res["c"][0]             # ... at a small cost on clicks


# --------------------------------------------------------------------------- intents

def test_intents_drive_observable_signals(small):
    cfg = SyntheticConfig.small()
    z = small.ground_truth["intent"]
    f = small.features
    _, has_prev = _transitions(small)
    idx = {name: i for i, name in enumerate(cfg.intents)}
    assert np.all(f["category_switch"][has_prev & (z == idx["explore"])] == 1)
    for name in ("continue", "buy"):
        assert np.all(f["category_switch"][z == idx[name]] == 0)
    assert np.all(f["repeat"][z == idx["repeat"]] == 1)
    assert np.all(z[~has_prev] != idx["repeat"])
    medians = {name: np.median(f["dwell"][z == i]) for name, i in idx.items()}
    for i, name in enumerate(synthetic.INTENTS):
        assert abs(medians[name] / synthetic._DWELL_MEDIAN_S[i] - 1.0) < 0.15
        modal = np.bincount(f["entry_point"][z == idx[name]], minlength=5).argmax()
        assert modal == synthetic._ENTRY_BY_INTENT[i].argmax()
    # Segments: the intent chain is sticky.
    same = (z[1:] == z[:-1])[has_prev[1:]]
    assert same.mean() > 0.45


def test_intent_recoverable_from_signals(small):
    # A lookup-table classifier on the observable signals beats the majority class.
    f = small.features
    z = small.ground_truth["intent"]
    dwell_bin = np.digitize(np.log(f["dwell"]), np.linspace(1.5, 5.5, 7))
    cell = ((dwell_bin * 5 + f["entry_point"]) * 2 + f["repeat"]) * 2 + f["category_switch"]
    train = _split(small)
    table = np.zeros((cell.max() + 1, 4))
    np.add.at(table, (cell[train], z[train]), 1.0)
    pred = table.argmax(axis=1)[cell[~train]]
    acc = (pred == z[~train]).mean()
    majority = np.bincount(z[~train]).max() / (~train).sum()
    assert acc > majority + 0.15


# ------------------------------------------------------------------ items and content

def test_item_side_information(small, small_world):
    cfg = SyntheticConfig.small()
    it = small.items
    n = cfg.num_items
    assert it.extra["images"].shape == (n, 16, 16, 3) and it.extra["images"].dtype == np.uint8
    assert len(it.titles) == len(it.genres) == len(it.extra["descriptions"]) == n
    names = cfg.genre_names()
    hot = it.extra["genre_multi_hot"]
    for i in range(0, n, 37):
        assert it.genres[i] == [names[j] for j in np.flatnonzero(hot[i])]
    assert hot.sum(axis=1).min() >= 1 and hot.sum(axis=1).max() > 1  # multi-label
    # Every group has >= 2 items, and related items stay in their group, never self.
    counts = np.bincount(small_world.group, minlength=cfg.num_categories * cfg.num_substyles)
    assert counts.min() >= 2
    nb = it.extra["gt_neighbours"]
    assert np.all(small_world.group[nb] == small_world.group[:, None])
    assert np.all(nb != np.arange(n)[:, None])
    np.testing.assert_allclose(small_world.popularity.sum(), 1.0)
    np.testing.assert_allclose(small_world.category_transition.sum(axis=1), 1.0)
    assert np.all(np.diag(small_world.category_transition) == 0)


def test_mean_colour_separates_categories(small):
    img = small.items.extra["images"].astype(np.float64)
    mean_rgb = img.mean(axis=(1, 2))
    cat = small.items.category
    train = np.arange(len(cat)) % 2 == 0
    cents = np.stack([mean_rgb[train & (cat == c)].mean(0) for c in range(cat.max() + 1)])
    d = ((mean_rgb[~train, None, :] - cents[None]) ** 2).sum(-1)
    assert (d.argmin(1) == cat[~train]).mean() > 0.9


def test_shape_separates_substyles(small):
    img = small.items.extra["images"].astype(np.float64)
    # Foreground = pixels far from the image's border colour (the background).
    border = np.concatenate([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], axis=1)
    bg = np.median(border, axis=1)
    fg = (np.abs(img - bg[:, None, None, :]).sum(-1) > 90).reshape(len(img), -1)
    sub = small.items.extra["gt_substyle"]
    train = np.arange(len(sub)) % 2 == 0
    cents = np.stack([fg[train & (sub == s)].mean(0) for s in range(sub.max() + 1)])
    d = ((fg[~train, None, :] - cents[None]) ** 2).sum(-1)
    assert (d.argmin(1) == sub[~train]).mean() > 0.7  # chance is 0.25


def test_image_size_option():
    w = synthetic.build_world(SyntheticConfig(num_items=40, num_categories=2,
                                              num_substyles=2, image_size=32))
    assert w.images.shape == (40, 32, 32, 3)


def test_titles_use_category_vocabularies(small, small_world):
    cat = small.items.category
    vocab = [set(v) for v in small_world.category_vocab]
    for a in range(len(vocab)):
        for b in range(a + 1, len(vocab)):
            assert not vocab[a] & vocab[b]
    words = [set(t.split()) for t in small.items.titles]
    assert all(w & vocab[c] for w, c in zip(words, cat))
    own = np.array([[len(w & v) for v in vocab] for w in words])
    assert (own.argmax(1) == cat).mean() > 0.9  # ties with a noisy second word fail
    # Shared words cross categories; sub-style words appear in ~60 % of the titles.
    shared = {c for w, c in zip(words, cat) if w & set(synthetic._SHARED_WORDS)}
    assert len(shared) == len(vocab)
    sub = small.items.extra["gt_substyle"]
    has_sub = [bool(w & set(small_world.substyle_vocab[c][s])) for w, c, s in
               zip(words, cat, sub)]
    assert 0.5 < np.mean(has_sub) < 0.7


def test_user_genres_learnable_from_history(small):
    ug = small.ground_truth["user_genres"]
    b = small.session_bounds()
    first = ug[b[:-1]]
    assert np.all(ug == first[small.session])  # constant within a session
    k = first.sum(1)
    assert k.min() >= 2 and k.max() <= 3
    # Predict each user's k genres from the genres of the session's items, against a
    # predictor that always names the k most frequent genres overall.
    hot = small.items.extra["genre_multi_hot"][small.item].astype(float)
    per_user = np.zeros((small.num_sessions, hot.shape[1]))
    np.add.at(per_user, small.session, hot)
    rank_user = np.argsort(-per_user, axis=1, kind="stable")
    rank_glob = np.argsort(-per_user.sum(0), kind="stable")

    def f1(ranks):
        hit = np.array([first[s, ranks[s][: k[s]]].sum() for s in range(len(k))])
        return float((hit / k).mean())  # precision == recall when |pred| == |truth|

    f1_hist = f1(rank_user)
    f1_glob = f1(np.broadcast_to(rank_glob, rank_user.shape))
    assert f1_hist > f1_glob + 0.1


def test_ratings_follow_genre_match():
    log = synthetic.generate(SyntheticConfig.small(num_sessions=400, with_ratings=True))
    r = log.rating
    assert set(np.unique(r)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    hot = log.items.extra["genre_multi_hot"][log.item]
    match = (hot * log.ground_truth["user_genres"]).sum(1) / hot.sum(1)
    assert np.corrcoef(match, r)[0, 1] > 0.5
    assert synthetic.generate(SyntheticConfig.small(num_sessions=20)).rating is None


# ------------------------------------------------------------------- errors and helpers

@pytest.mark.parametrize("field,value", [
    ("num_items", 10), ("seed", -1), ("mean_len", 2.0), ("max_len", 2),
    ("purchase_rate", 0.0), ("intents", ("explore", "buy")), ("num_genres", 2),
    ("genres_per_user", (3, 2)), ("num_categories", 1), ("intents", ("continue", "nap")),
])
def test_bad_config_names_the_field(field, value):
    cfg = dataclasses.replace(SyntheticConfig.small(), **{field: value})
    with pytest.raises(ValueError, match=f"SyntheticConfig.{field}="):
        synthetic.generate(cfg)


def test_features_follow_subsets_and_from_raw(small):
    sub = small.subset_sessions([3, 7])
    sub.validate()
    n3 = int((small.session == 3).sum())
    assert sub.num_events == n3 + int((small.session == 7).sum())
    for table in (sub.features, sub.ground_truth):
        for v in table.values():
            assert len(v) == sub.num_events
    start = small.session_bounds()[3]
    np.testing.assert_array_equal(sub.features["dwell"][:n3],
                                  small.features["dwell"][start:start + n3])
    # from_raw reorders features with the events.
    rev = slice(None, None, -1)
    again = events.from_raw(small.session[rev], small.item[rev], small.timestamp[rev],
                            small.is_buy[rev], name="x",
                            features={k: v[rev] for k, v in small.features.items()})
    for k, v in small.features.items():
        np.testing.assert_array_equal(again.features[k], v)
