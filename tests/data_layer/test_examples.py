"""Example construction against hand-computed rows (rl.md §1.3-1.4, §6; iisan.md §1.13)."""

import numpy as np
import pytest

from jaxrec.data import examples
from jaxrec.data.events import from_raw
from jaxrec.data.sessions import Sessions


def _sessions():
    # Session 'a': items 5, 3, 7 (the middle one a purchase); session 'b': item 2 only.
    log = from_raw(["a", "a", "a", "b"], [5, 3, 7, 2], [1, 2, 3, 1], [0, 1, 0, 0], name="t",
                   item_uniques=np.arange(10))
    return Sessions.from_event_log(log)


def test_replay_transitions_hand_computed():
    tr = examples.replay_transitions(_sessions(), state_len=2, num_items=10)
    pad = 10
    np.testing.assert_array_equal(tr["state"], [[pad, pad], [5, pad], [5, 3], [pad, pad]])
    np.testing.assert_array_equal(tr["len_state"], [1, 1, 2, 1])   # empty history -> 1
    np.testing.assert_array_equal(tr["action"], [5, 3, 7, 2])
    np.testing.assert_array_equal(tr["is_buy"], [0, 1, 0, 0])
    np.testing.assert_array_equal(tr["next_state"], [[5, pad], [5, 3], [3, 7], [2, pad]])
    np.testing.assert_array_equal(tr["len_next_state"], [1, 2, 2, 1])
    np.testing.assert_array_equal(tr["is_done"], [False, False, True, True])


def test_replay_window_keeps_last_items_in_order():
    log = from_raw(["s"] * 13, list(range(13)), list(range(13)), [0] * 13, name="t")
    tr = examples.replay_transitions(Sessions.from_event_log(log), state_len=10, num_items=13)
    np.testing.assert_array_equal(tr["state"][12], np.arange(2, 12))
    assert tr["len_state"][12] == 10
    np.testing.assert_array_equal(tr["state"][3], [0, 1, 2] + [13] * 7)
    assert tr["len_state"][3] == 3


def test_eval_queries_match_buffer_states():
    s = _sessions()
    q = examples.eval_queries(s, state_len=2, num_items=10)
    tr = examples.replay_transitions(s, state_len=2, num_items=10)
    np.testing.assert_array_equal(q["state"], tr["state"])
    np.testing.assert_array_equal(q["target"], [5, 3, 7, 2])
    np.testing.assert_array_equal(q["step"], [0, 1, 2, 0])


def test_prl_trajectories_hand_computed():
    s = _sessions()
    mean, mx = examples.prl_reward_stats(s, max_length=4)
    # Rewards a: 0.2, 1.0, 0.2 -> reward-to-go 1.4, 1.2, 0.2; b: 0.2.
    np.testing.assert_allclose(mean, [0.8, 1.2, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(mx, [1.4, 1.2, 0.2, 0.0], rtol=1e-6)
    tr = examples.prl_trajectories(s, mean, state_len=2, num_items=10, max_length=4)
    np.testing.assert_allclose(tr["reward_to_go"], [1.4, 1.2, 0.2, 0.2], rtol=1e-6)
    np.testing.assert_allclose(tr["reward_to_go_norm"], [1.75, 1.0, 1.0, 0.25], rtol=1e-6)
    np.testing.assert_array_equal(tr["step"], [0, 1, 2, 0])
    # Sessions longer than max_length are dropped entirely.
    tr2 = examples.prl_trajectories(s, mean, state_len=2, num_items=10, max_length=2)
    np.testing.assert_array_equal(tr2["action"], [2])


def test_session_split_is_seeded_disjoint_and_80_10_10():
    a = examples.session_split(1000, seed=3)
    b = examples.session_split(1000, seed=3)
    c = examples.session_split(1000, seed=4)
    assert [len(a[k]) for k in ("train", "validation", "test")] == [800, 100, 100]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["train"], c["train"])
    allrows = np.concatenate(list(a.values()))
    np.testing.assert_array_equal(np.sort(allrows), np.arange(1000))
    with pytest.raises(ValueError, match="sum"):
        examples.session_split(10, fractions=(0.5, 0.5, 0.5))


def test_leave_one_out_hand_computed():
    log = from_raw(["u"] * 6 + ["v"] * 3, [0, 1, 2, 3, 4, 5, 0, 1, 2],
                   list(range(6)) + list(range(3)), [0] * 9, name="t")
    loo = examples.leave_one_out(Sessions.from_event_log(log), max_len=2, min_len=5)
    # Only user u (6 items) passes min_len; items are shifted by +1 (0 = pad).
    np.testing.assert_array_equal(loo.users, [0])
    np.testing.assert_array_equal(loo.test_inputs, [[4, 5]])
    np.testing.assert_array_equal(loo.test_target, [6])
    np.testing.assert_array_equal(loo.valid_inputs, [[3, 4]])
    np.testing.assert_array_equal(loo.valid_target, [5])
    # Train sequence 1 2 3 4, chunks of max_len + 1 from the end, targets never repeated.
    np.testing.assert_array_equal(loo.train_inputs, [[2, 3], [0, 1]])
    np.testing.assert_array_equal(loo.train_targets, [[3, 4], [0, 2]])


def _loo_log():
    # u: items 0..5 (shifted 1..6); v: items 0, 1, 2 (shifted 1, 2, 3).
    log = from_raw(["u"] * 6 + ["v"] * 3, [0, 1, 2, 3, 4, 5, 0, 1, 2],
                   list(range(6)) + list(range(3)), [0] * 9, name="t")
    return Sessions.from_event_log(log)


def test_leave_one_out_prefixes_hand_computed():
    loo = examples.leave_one_out(_loo_log(), max_len=2, min_len=3, train_mode="prefixes")
    assert loo.train_mode == "prefixes"
    np.testing.assert_array_equal(loo.users, [0, 1])
    # u trains on 1 2 3 4: prefixes <1>|2, <1 2>|3, <2 3>|4 (cut to the last 2, padded).
    # v trains on <1> alone: no prefix has a next item, so v adds no training row.
    np.testing.assert_array_equal(loo.train_inputs, [[0, 1], [1, 2], [2, 3]])
    np.testing.assert_array_equal(loo.train_targets, [2, 3, 4])
    assert loo.train_inputs.dtype == np.int32 and loo.train_targets.dtype == np.int32
    # Validation and test do not depend on the training mode.
    np.testing.assert_array_equal(loo.valid_inputs, [[3, 4], [0, 1]])
    np.testing.assert_array_equal(loo.valid_target, [5, 2])
    np.testing.assert_array_equal(loo.test_inputs, [[4, 5], [1, 2]])
    np.testing.assert_array_equal(loo.test_target, [6, 3])
    # keep_last=5 drops u's first item: u trains on 2 3 4 -> <2>|3, <2 3>|4.
    cut = examples.leave_one_out(_loo_log(), max_len=3, min_len=5, keep_last=5,
                                 train_mode="prefixes")
    np.testing.assert_array_equal(cut.train_inputs, [[0, 0, 2], [0, 2, 3]])
    np.testing.assert_array_equal(cut.train_targets, [3, 4])
    np.testing.assert_array_equal(cut.test_inputs, [[3, 4, 5]])


def test_leave_one_out_windows_long_window_and_both_modes_cover_same_targets():
    loo = examples.leave_one_out(_loo_log(), max_len=3, min_len=3)
    assert loo.train_mode == "windows"
    # u's 1 2 3 4 fits one chunk of max_len + 1; v's single train item gives none.
    np.testing.assert_array_equal(loo.train_inputs, [[1, 2, 3]])
    np.testing.assert_array_equal(loo.train_targets, [[2, 3, 4]])
    pre = examples.leave_one_out(_loo_log(), max_len=3, min_len=3, train_mode="prefixes")
    # Every training target appears once in either mode.
    np.testing.assert_array_equal(np.sort(loo.train_targets[loo.train_targets > 0]),
                                  np.sort(pre.train_targets))
    # The last prefix row is the last window's input; its target is the window's last.
    np.testing.assert_array_equal(pre.train_inputs[-1], loo.train_inputs[0])
    assert pre.train_targets[-1] == loo.train_targets[0, -1]
    with pytest.raises(ValueError, match="train_mode must be one of"):
        examples.leave_one_out(_loo_log(), train_mode="prefix")


def test_leave_one_out_overlapping_windows_hand_computed():
    """One user with items 0..11 (shifted 1..12), L = 4: training part t = 1..10. Stride 2:
    windows end every 2 items from the end and train their last 2 targets, so targets
    2..10 are each trained once, every one with a context of at least L - 2 items."""
    s = Sessions(items=np.arange(12, dtype=np.int32), is_buy=np.zeros(12, np.int8),
                 timestamps=np.arange(12), offsets=np.array([0, 12]),
                 session_ids=np.array([0]), raw_session_ids=np.array(["u"]))
    loo = examples.leave_one_out(s, max_len=4, min_len=3, window_stride=2)
    np.testing.assert_array_equal(loo.train_inputs, [[6, 7, 8, 9], [4, 5, 6, 7], [2, 3, 4, 5],
                                                     [0, 1, 2, 3], [0, 0, 0, 1]])
    np.testing.assert_array_equal(loo.train_targets, [[0, 0, 9, 10], [0, 0, 7, 8],
                                                      [0, 0, 5, 6], [0, 0, 3, 4],
                                                      [0, 0, 0, 2]])
    plain = examples.leave_one_out(s, max_len=4, min_len=3)          # stride = L
    assert sorted(plain.train_targets[plain.train_targets > 0]) == list(range(2, 11))
    with pytest.raises(ValueError, match="window_stride"):
        examples.leave_one_out(s, max_len=4, min_len=3, window_stride=5)
