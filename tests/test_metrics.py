"""Tests for jaxrec.metrics against hand-computed rankings (specs/rl.md §9, iisan.md §1.13)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.metrics import (RL_GROUPS, UNRANKED, MetricAccumulator, format_table,
                            paper_columns, ranking_metrics, target_ranks, top_k_items)

# N = 6 items. Ranks worked out by hand, pessimistic ties (ties rank above the target).
SCORES = np.array([
    [0.9, 0.5, 0.5, 0.1, 0.7, 0.5],   # t=1 (0.5): above are 0, 4 and the ties 2, 5 -> 5
    [0.9, 0.5, 0.5, 0.1, 0.7, 0.5],   # t=0: the best -> 1
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],   # t=3: constant scorer, everything ties -> 6
    [0.9, 0.5, 0.5, 0.1, 0.7, 0.5],   # t=3: the worst -> 6
    [0.9, 0.5, 0.5, 0.1, 0.7, 0.5],   # t=4: only item 0 above -> 2
], np.float32)
TARGETS = np.array([1, 0, 3, 3, 4], np.int32)
RANKS = [5, 1, 6, 6, 2]


def test_target_ranks_hand_computed_with_ties():
    pess = lambda *a: target_ranks(*a, ties="pessimistic")
    np.testing.assert_array_equal(np.asarray(pess(SCORES, TARGETS)), RANKS)
    # Jitted gives the same.
    np.testing.assert_array_equal(np.asarray(jax.jit(pess)(SCORES, TARGETS)), RANKS)


# The same rows under the reference rule (stable ascending argsort, top k from the end:
# a tied item with a higher index ranks above the target), by hand:
#   row 0, t=1 (0.5): above 0 (0.9), 4 (0.7), and the later ties 2, 5 -> 5
#   row 2, t=3, all tie: later items 4, 5 above -> 3
#   the others have no ties with the target -> 1, 6, 2
REFERENCE_RANKS = [5, 1, 3, 6, 2]


def test_target_ranks_reference_ties_hand_computed():
    np.testing.assert_array_equal(np.asarray(target_ranks(SCORES, TARGETS)), REFERENCE_RANKS)
    np.testing.assert_array_equal(
        np.asarray(target_ranks(SCORES, TARGETS, ties="optimistic")), [3, 1, 1, 6, 2])
    with pytest.raises(ValueError, match="ties must be one of"):
        target_ranks(SCORES, TARGETS, ties="random")


def test_reference_ties_equal_the_papers_argsort_code():
    """utility.calculate_hit of the RL release: ``np.argsort`` (stable here) ascending, the
    top k are the last k, rank = k - (index in that slice)."""
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(32, 25)).astype(np.float32)    # many ties
    targets = rng.integers(0, 25, size=32).astype(np.int32)
    order = np.argsort(scores, kind="stable")
    want = [25 - int(np.nonzero(order[q] == t)[0][0]) for q, t in enumerate(targets)]
    np.testing.assert_array_equal(np.asarray(target_ranks(scores, targets)), want)


def test_target_ranks_equals_sort_with_target_after_its_ties():
    """Independent formulation: stable sort by descending score, the target placed after
    every item it ties with; rank = its position + 1."""
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(16, 40)).astype(np.float32)    # many ties
    targets = rng.integers(0, 40, size=16).astype(np.int32)
    want = []
    for s, t in zip(scores, targets):
        is_t = np.arange(40) == t
        order = np.lexsort((is_t, -s))          # last key is primary: score desc, then target
        want.append(int(np.nonzero(order == t)[0][0]) + 1)
    np.testing.assert_array_equal(np.asarray(target_ranks(scores, targets, ties="pessimistic")),
                                  want)


def test_ranking_metrics_values_including_k_beyond_catalogue():
    m = {k: np.asarray(v) for k, v in ranking_metrics(np.array(RANKS), ks=(1, 5, 10)).items()}
    np.testing.assert_array_equal(m["hr@1"], [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(m["hr@5"], [1, 1, 0, 0, 1])        # 5 just in, 6 just out
    np.testing.assert_allclose(m["ndcg@5"], [1 / math.log2(6), 1, 0, 0, 1 / math.log2(3)],
                               rtol=1e-6)
    assert m["ndcg@5"][4] == pytest.approx(0.6309298, rel=1e-6)      # 1/log2(3)
    # k = 10 > N = 6: every ranked target is a hit.
    np.testing.assert_array_equal(m["hr@10"], [1, 1, 1, 1, 1])
    np.testing.assert_allclose(m["ndcg@10"], [1 / math.log2(r + 1) for r in RANKS], rtol=1e-6)
    np.testing.assert_allclose(m["mrr@5"], [1 / 5, 1, 0, 0, 1 / 2], rtol=1e-6)
    np.testing.assert_allclose(m["mrr@10"], [1 / 5, 1, 1 / 6, 1 / 6, 1 / 2], rtol=1e-6)


def test_history_masking_and_target_in_history():
    scores = np.tile(np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], np.float32), (3, 1))
    targets = np.array([3, 3, 3], np.int32)                  # unmasked rank 4
    hist = np.zeros((3, 6), bool)
    hist[0, [0, 2]] = True                                   # removes two items above
    hist[1, [1, 3]] = True                                   # target is in the history
    hist[2, [4, 5]] = True                                   # removes items below only
    np.testing.assert_array_equal(np.asarray(target_ranks(scores, targets)), [4, 4, 4])
    # Reference behaviour (IISAN): a target in the history is masked too -> a miss.
    np.testing.assert_array_equal(np.asarray(target_ranks(scores, targets, hist)),
                                  [2, UNRANKED, 4])
    # Option: keep the target's score, mask only the other history items (1 above it).
    np.testing.assert_array_equal(
        np.asarray(target_ranks(scores, targets, hist, mask_target_if_in_history=False)),
        [2, 3, 4])
    # A masked target is a miss even when k exceeds the catalogue.
    m = ranking_metrics(target_ranks(scores, targets, hist), ks=(20,))
    np.testing.assert_array_equal(np.asarray(m["hr@20"]), [1, 0, 1])
    np.testing.assert_allclose(np.asarray(m["ndcg@20"]), [1 / math.log2(3), 0, 1 / math.log2(5)],
                               rtol=1e-6)


def test_nan_scores_get_no_credit():
    scores = np.array([[0.1, np.nan, 0.3, 0.2], [np.nan, 0.5, 0.1, 0.2]], np.float32)
    # Row 0: NaN item counts as above the target (0.3) -> rank 2. Row 1: NaN target.
    np.testing.assert_array_equal(np.asarray(target_ranks(scores, np.array([2, 0]))),
                                  [2, UNRANKED])


def test_target_ranks_input_errors():
    with pytest.raises(ValueError, match="targets must be in"):
        target_ranks(SCORES, np.array([0, 1, 2, 3, 6], np.int32))
    with pytest.raises(ValueError, match="targets must have shape"):
        target_ranks(SCORES, TARGETS[:3])
    with pytest.raises(ValueError, match="exclude_mask must have the shape"):
        target_ranks(SCORES, TARGETS, np.zeros((5, 5), bool))
    # Under jit an out-of-range target cannot raise; it is reported as unranked.
    got = jax.jit(target_ranks)(SCORES, jnp.array([0, 1, 2, 3, 6], jnp.int32))
    assert int(got[4]) == UNRANKED


# Click/purchase split, hand-computed: purchases have ranks 1, 2, 12; clicks 3, 7, 5.
SPLIT_RANKS = np.array([1, 3, 7, 2, 12, 5])
IS_BUY = np.array([1, 0, 0, 1, 1, 0])
REWARD = np.where(IS_BUY == 1, 1.0, 0.2)


def expected_split():
    l2 = math.log2
    return {
        "purchase/count": 3, "click/count": 3,
        "purchase/hr@5": 2 / 3, "purchase/hr@10": 2 / 3,
        "purchase/ndcg@5": (1 + 1 / l2(3)) / 3, "purchase/ndcg@10": (1 + 1 / l2(3)) / 3,
        "purchase/mrr@5": (1 + 1 / 2) / 3, "purchase/mrr@10": (1 + 1 / 2) / 3,
        "click/hr@5": 2 / 3, "click/hr@10": 1.0,
        "click/ndcg@5": (1 / l2(4) + 1 / l2(6)) / 3,
        "click/ndcg@10": (1 / l2(4) + 1 / l2(8) + 1 / l2(6)) / 3,
        "click/mrr@5": (1 / 3 + 1 / 5) / 3, "click/mrr@10": (1 / 3 + 1 / 7 + 1 / 5) / 3,
        # Cumulative reward = sum of the rewards of hits (rl.md §9).
        "purchase/reward@5": 2.0, "purchase/reward@10": 2.0,
        "click/reward@5": 0.4, "click/reward@10": 0.6,
    }


def test_accumulator_click_purchase_split_hand_computed():
    acc = MetricAccumulator(ks=(5, 10), groups=RL_GROUPS)
    acc.add(SPLIT_RANKS, group=IS_BUY, reward=REWARD)
    got = acc.result()
    want = expected_split()
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-12), k
    assert want["purchase/ndcg@5"] == pytest.approx(0.5436433, rel=1e-6)
    assert want["click/ndcg@10"] == pytest.approx(0.4067287, rel=1e-6)


def test_accumulator_streams_batches_and_ignores_padding_rows():
    acc = MetricAccumulator(ks=(5, 10), groups=RL_GROUPS)
    # Two fixed-size batches of 4; the last one padded with two invalid rows.
    acc.add(SPLIT_RANKS[:4], group=IS_BUY[:4], reward=REWARD[:4])
    acc.add(np.r_[SPLIT_RANKS[4:], 1, 1], group=np.r_[IS_BUY[4:], 1, 0],
            valid=np.array([True, True, False, False]), reward=np.r_[REWARD[4:], 1.0, 1.0])
    got = acc.result()
    for k, v in expected_split().items():
        assert got[k] == pytest.approx(v, rel=1e-12), k
    acc.reset()
    assert acc.result()["purchase/count"] == 0 and math.isnan(acc.result()["click/hr@5"])


def test_accumulator_add_scores_single_group_with_history_mask():
    scores = np.tile(np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], np.float32), (4, 1))
    targets = np.array([3, 3, 0, -1], np.int32)             # last row is padding
    hist = np.zeros((4, 6), bool)
    hist[0, [0, 2]] = True                                   # rank 2
    hist[1, [1, 3]] = True                                   # target in history: miss
    acc = MetricAccumulator(ks=(1, 2), groups=("all",))
    acc.add_scores(scores, targets, valid=np.array([1, 1, 1, 0], bool), exclude_mask=hist)
    got = acc.result()                                       # ranks 2, miss, 1
    assert got["all/count"] == 3
    assert got["all/hr@1"] == pytest.approx(1 / 3)
    assert got["all/hr@2"] == pytest.approx(2 / 3)
    assert got["all/ndcg@2"] == pytest.approx((1 / math.log2(3) + 1) / 3)
    assert "all/reward@1" not in got


def test_accumulator_input_errors():
    acc = MetricAccumulator(ks=(5,), groups=RL_GROUPS)
    with pytest.raises(ValueError, match="group indices must be in"):
        acc.add(np.array([1, 2]), group=np.array([0, 2]))
    with pytest.raises(ValueError, match="group must have shape"):
        acc.add(np.array([1, 2]), group=np.array([0]))
    with pytest.raises(ValueError, match="groups must be distinct"):
        MetricAccumulator(groups=("a", "a"))
    with pytest.raises(ValueError, match="cut-offs"):
        MetricAccumulator(ks=(0, 5))


def test_top_k_items():
    scores = jnp.array([[0.1, 0.9, 0.5, 0.9], [4.0, 3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(np.asarray(top_k_items(scores, 3)), [[1, 3, 2], [0, 1, 2]])
    with pytest.raises(ValueError, match="k must be in"):
        top_k_items(scores, 5)


def test_format_table_paper_layout():
    acc = MetricAccumulator(ks=(5, 10, 20), groups=RL_GROUPS)
    acc.add(SPLIT_RANKS, group=IS_BUY)
    rows = {"GRU": acc.result(), "SASRec-SA2C": {"purchase/hr@5": 0.4705}}
    text = format_table(rows)
    lines = text.splitlines()
    assert len(lines) == 5
    assert lines[0].index("purchase") < lines[0].index("click")
    header = lines[1].split("|")
    assert header[0].strip() == "method"
    assert header[1].split() == ["HR@5", "NG@5", "HR@10", "NG@10", "HR@20", "NG@20"]
    gru = lines[3].split("|")
    assert gru[0].strip() == "GRU"
    want = [rows["GRU"][c] for c in paper_columns(("purchase",))]
    assert [float(v) for v in gru[1].split()] == [round(v, 4) for v in want]
    assert gru[1].split()[1] == "0.5436"                      # purchase NDCG@5
    other = lines[4].split("|")
    assert other[1].split() == ["0.4705"] + ["-"] * 5 and other[2].split() == ["-"] * 6
    # Explicit single-group columns (leave-one-out).
    one = format_table({"IISAN": {"all/hr@10": 0.5, "all/ndcg@10": 0.25}},
                       columns=["all/hr@10", "all/ndcg@10"], digits=2).splitlines()
    assert one[1].split("|")[1].split() == ["HR@10", "NG@10"]
    assert one[3].split("|")[1].split() == ["0.50", "0.25"]
