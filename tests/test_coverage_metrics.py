"""Beyond-accuracy metrics (SMORL, rl.md §7) and the off-policy corrected NDCG (SA2C,
rl.md §5): each pure function and the coverage evaluator against hand-computed values."""

import math
import types

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxrec import evaluators as ev_lib
from jaxrec import metrics as M
from jaxrec.data.events import ItemInfo
from jaxrec.data.tasks import EvalSet, Task
from jaxrec.evaluators.coverage import CoverageEvaluator

G3 = 1 / math.log2(3)          # NDCG gain at rank 2
R2 = 1 / math.sqrt(2)


# ------------------------------------------------------------------ pure functions
def test_less_popular_items_is_at_most_the_90th_percentile():
    freq = np.array([10, 1, 1, 2, 3, 50, 40, 5, 6, 7])
    # sorted 1 1 2 3 5 6 7 10 40 50: the 90th percentile is 40 + 0.1 * (50 - 40) = 41
    np.testing.assert_array_equal(M.less_popular_items(freq),
                                  [1, 1, 1, 1, 1, 0, 1, 1, 1, 1])
    # "at most": counts equal to the threshold are less popular
    assert M.less_popular_items(np.ones(10, int)).all()
    np.testing.assert_array_equal(M.less_popular_items(freq, 50.0),   # median 5.5
                                  [0, 1, 1, 1, 1, 0, 0, 1, 0, 0])


LISTS = np.array([[0, 5, 2],      # session 7
                  [5, 0, 3],      # session 9
                  [1, 5, 0],      # session 7
                  [4, 6, 5]])     # session 7
SESSIONS = np.array([7, 9, 7, 7])


def test_coverage_and_novel_coverage():
    assert M.coverage(LISTS, 10) == pytest.approx(7 / 10)          # {0,1,2,3,4,5,6}
    assert M.coverage(LISTS[:, :1], 10) == pytest.approx(4 / 10)   # {0,5,1,4}
    less = np.ones(10, bool)
    less[5] = False                                                # 9 novel items
    assert M.novel_coverage(LISTS, less) == pytest.approx(6 / 9)   # {0,1,2,3,4,6}
    assert M.novel_coverage(LISTS[:, :1], less) == pytest.approx(3 / 9)
    assert math.isnan(M.novel_coverage(LISTS, np.zeros(10, bool)))


def test_session_repetitions_entries_minus_distinct_per_session():
    # session 7: 9 entries, distinct {0,1,2,4,5,6} = 6 -> 3; session 9: 3 - 3 = 0
    assert M.session_repetitions(LISTS, SESSIONS) == pytest.approx(1.5)
    # top-1: session 7 [0, 1, 4] -> 0; session 9 -> 0
    assert M.session_repetitions(LISTS[:, :1], SESSIONS) == 0.0
    # top-2: session 7 [0,5, 1,5, 4,6] -> 6 - 5 = 1; session 9 -> 0
    assert M.session_repetitions(LISTS[:, :2], SESSIONS) == pytest.approx(0.5)
    # an item shown at three steps of one session counts twice
    assert M.session_repetitions(np.array([[3], [3], [3]]), np.zeros(3)) == 2.0
    assert math.isnan(M.session_repetitions(np.zeros((0, 2), int), np.zeros(0)))


def test_last_items_right_and_left_padding():
    n = 6
    right = M.last_items(np.array([[4, 2, n, n], [n, n, n, n], [1, 2, 3, 4]]),
                         np.array([2, 1, 4]), n)
    np.testing.assert_array_equal(np.asarray(right), [2, n, 4])   # empty history -> pad N
    left = M.last_items(np.array([[0, 0, 3, 5], [0, 0, 0, 0]]), np.array([2, 1]), n,
                        id_shift=1)
    np.testing.assert_array_equal(np.asarray(left), [4, n])


def test_diversity_and_novelty_rewards():
    table = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
    last = jnp.array([0, 0, 0, 4])
    rec = jnp.array([1, 2, 3, 0])
    got = np.asarray(M.diversity_reward(table, last, rec))
    # orthogonal 1; 45 degrees 1 - 1/sqrt 2; opposite 2; a zero (pad) row: cos 0 -> 1
    np.testing.assert_allclose(got, [1.0, 1 - R2, 2.0, 1.0], rtol=1e-6)
    less = np.array([True, False, True, False])
    np.testing.assert_array_equal(np.asarray(M.novelty_reward(less, jnp.array([0, 1, 2, 2]))),
                                  [1, 0, 1, 1])


def test_offpolicy_ndcg_normalisations():
    ranks, targets = np.array([1, 3, 12, 2]), np.array([0, 1, 2, 3])
    pop = np.array([0.5, 0.25, 0.125, 0.125])             # weights 2, 4, 8, 8
    num = 2 * 1 + 4 * 0.5 + 8 * 0 + 8 * G3
    assert M.offpolicy_ndcg(ranks, targets, pop, 10) == pytest.approx(num / 22)
    assert M.offpolicy_ndcg(ranks, targets, pop, 10, "mean") == pytest.approx(num / 4)
    assert M.offpolicy_ndcg(ranks, targets, pop, 2) == pytest.approx((2 + 8 * G3) / 22)
    # uniform popularity: the self-normalised value is the plain NDCG@k
    plain = np.mean([1, 0.5, 0, G3])
    assert M.offpolicy_ndcg(ranks, targets, np.full(4, 0.25), 10) == pytest.approx(plain)
    with pytest.raises(ValueError, match="normalize"):
        M.offpolicy_ndcg(ranks, targets, pop, 10, "ips")


# ------------------------------------------------------------------ the evaluator
N, P = 5, 5                    # P: the pad id (right padding)
FREQ = np.array([5, 1, 1, 1, 20])   # 90th percentile 14: item 4 is the popular one
SCORES = np.array([
    [0.1, 0.2, 0.9, 0.3, 0.5],   # q0 s0 t=0 click, target 2: top 2,4,3 rank 1
    [0.9, 0.1, 0.2, 0.3, 0.5],   # q1 s0 t=1 buy,   target 4: top 0,4,3 rank 2
    [0.2, 0.3, 0.1, 0.4, 0.8],   # q2 s0 t=2 click, target 1: top 4,3,1 rank 3
    [0.5, 0.4, 0.3, 0.2, 0.1],   # q3 s1 t=0 click, target 0: top 0,1,2 rank 1
    [0.1, 0.2, 0.3, 0.4, 0.5],   # q4 s1 t=1 buy,   target 3: top 4,3,2 rank 2
], np.float32)
TABLE = np.array([[1, 0], [0, 1], [1, 1], [-1, 0], [0, 2], [1, 0]], np.float32)  # row 5: pad


def _task():
    is_buy = np.array([0, 1, 0, 0, 1], np.int8)
    arrays = {"qid": np.arange(5, dtype=np.int32),
              "state": np.array([[P, P, P], [2, P, P], [2, 4, P], [P, P, P], [0, P, P]],
                                np.int32),
              "len_state": np.array([1, 1, 2, 1, 1], np.int32),
              "target": np.array([2, 4, 1, 0, 3], np.int32), "is_buy": is_buy,
              "group": is_buy.astype(np.int32), "session": np.array([0, 0, 0, 1, 1], np.int32),
              "position": np.array([0, 1, 2, 0, 1], np.int32)}
    ev = EvalSet(arrays, "session", ("click", "purchase"))
    return Task(name="hand", kind="replay", num_items=N, batch_size=2, train={},
                validation=ev, test=ev, item_freq=FREQ, items=ItemInfo(), stats={},
                extras={})


LOOKUP = types.SimpleNamespace(__name__="lookup",
                               predict=lambda state, batch, consts: consts["scores"][batch["qid"]])


def _evaluator(**options):
    opts = ml_collections.ConfigDict({"ks": (1, 2), "batch_size": 2, "type": "coverage",
                                      **options})
    return CoverageEvaluator(LOOKUP, _task(), None, opts)


def test_coverage_evaluator_on_hand_computed_queries():
    ev = _evaluator(diversity=True)
    got = ev.run(None, {"scores": jnp.asarray(SCORES), "item_embeddings": jnp.asarray(TABLE)},
                 "validation")           # batches of 2: the last one is padded
    assert set(got) == set(ev.metric_names("validation"))
    # top-1 lists 2,0,4,0,4; top-2 {2,4} {0,4} {4,3} {0,1} {4,3}; novel items {0,1,2,3}
    assert got["cv@1"] == pytest.approx(3 / 5)
    assert got["cv@2"] == pytest.approx(1.0)
    assert got["novel_cv@1"] == pytest.approx(2 / 4)
    assert got["novel_cv@2"] == pytest.approx(1.0)
    # session 0 top-2: 2,4,0,4,4,3 -> 6 - 4 = 2; session 1: 0,1,4,3 -> 0
    assert got["repetitions@1"] == 0.0
    assert got["repetitions@2"] == pytest.approx(1.0)
    assert got["nov_reward"] == 3.0 and got["nov_reward/mean"] == pytest.approx(0.6)
    # last items pad,2,4,pad,0 vs top-1 2,0,4,0,4 (the pad row is (1, 0))
    div = [1 - R2, 1 - R2, 0.0, 0.0, 1.0]
    assert got["div_reward"] == pytest.approx(sum(div), abs=1e-6)
    assert got["div_reward/mean"] == pytest.approx(sum(div) / 5, abs=1e-6)
    # weights 1/pop = 28/freq(target): 28, 1.4, 28, 5.6, 28; ranks 1, 2, 3, 1, 2
    assert got["offpolicy_ndcg@1"] == pytest.approx((28 + 5.6) / 91)
    assert got["offpolicy_ndcg@2"] == pytest.approx((28 + 5.6 + 29.4 * G3) / 91)
    assert got["click/offpolicy_ndcg@2"] == pytest.approx((28 + 5.6) / 61.6)
    assert got["purchase/offpolicy_ndcg@2"] == pytest.approx(G3)
    mean = _evaluator(offpolicy_norm="mean").run(None, {"scores": jnp.asarray(SCORES)},
                                                 "validation")
    assert mean["offpolicy_ndcg@2"] == pytest.approx((28 + 5.6 + 29.4 * G3) / 5)


def test_coverage_evaluator_diversity_switch_and_registry():
    consts = {"scores": jnp.asarray(SCORES)}
    assert "div_reward" not in _evaluator().run(None, consts, "validation")   # auto: absent
    with pytest.raises(ValueError, match="item_embeddings"):
        _evaluator(diversity=True).run(None, consts, "validation")
    with pytest.raises(ValueError, match=r"\[N \+ 1, D\]"):
        _evaluator(diversity=True).run(None, {**consts, "item_embeddings": TABLE[:N]},
                                       "validation")
    skipped = _evaluator(diversity=False).run(None, {**consts, "item_embeddings": TABLE},
                                              "validation")
    assert "div_reward" not in skipped
    # registered as 'coverage'; repetitions improve downwards in the trainer's bookkeeping
    config = ml_collections.ConfigDict({"eval": {"ks": (1, 2), "batch_size": 2},
                                        "evals": {"cov": {"type": "coverage"}}})
    evs = ev_lib.make_evaluators(LOOKUP, _task(), config)
    assert isinstance(evs["cov"], CoverageEvaluator)
    assert ev_lib.lower_is_better(evs, "cov/repetitions@2")
    assert not ev_lib.lower_is_better(evs, "cov/cv@2")
