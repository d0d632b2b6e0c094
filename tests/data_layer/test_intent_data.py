"""The 'intent' data kind (jaxrec.data.intent): proxy behaviour signals, discounted returns
and history features by hand; on the tiny synthetic data the signals, their
standardisation, the hidden intents kept out of training; RetailRocket without categories."""

import math

import numpy as np
import pytest

from jaxrec.data import intent
from jaxrec.data.events import ItemInfo
from jaxrec.data.sessions import Sessions
from jaxrec.data.tasks import build_task

from tests.train.helpers import get_config


def _sessions():
    """Two sessions: items [3, 1, 3, 2] at t = 0, 10, 11, 111 and [0, 0] at t = 5, 5."""
    return Sessions(items=np.array([3, 1, 3, 2, 0, 0], np.int32),
                    is_buy=np.array([0, 0, 1, 0, 0, 1], np.int8),
                    timestamps=np.array([0, 10, 11, 111, 5, 5], np.int64),
                    offsets=np.array([0, 4, 6], np.int64),
                    session_ids=np.array([0, 1], np.int64),
                    raw_session_ids=np.array(["a", "b"]))


def test_proxy_signals_by_hand():
    category = np.array([7, 8, 8, 7])            # items 0..3
    sig = intent.proxy_signals(_sessions(), category)
    gap = sig["time_gap"]
    assert np.isnan(gap[0]) and np.isnan(gap[4])          # first events: not observed
    np.testing.assert_allclose(gap[[1, 2, 3, 5]],
                               [math.log1p(10), math.log1p(1), math.log1p(100), 0.0],
                               rtol=1e-6)
    np.testing.assert_array_equal(sig["repeat"], [0, 0, 1, 0, 0, 1])
    # categories 7, 8, 7, 8 | 7, 7
    np.testing.assert_array_equal(sig["category_switch"], [-1, 1, 1, 1, -1, 0])
    assert "category_switch" not in intent.proxy_signals(_sessions(), None)


def test_item_categories_from_first_genre():
    items = ItemInfo(genres=[["Drama", "Comedy"], ["Action"], [], ["Drama"]])
    np.testing.assert_array_equal(intent.item_categories(items, 4), [1, 0, -1, 1])
    np.testing.assert_array_equal(
        intent.item_categories(ItemInfo(category=np.array([2, 0])), 2), [2, 0])
    assert intent.item_categories(ItemInfo(), 3) is None


def test_discounted_returns_by_hand():
    r = np.array([0.2, 0.2, 1.0, 0.2, 0.2, 1.0], np.float32)
    got = intent.discounted_returns(_sessions(), r, 0.5)
    s1 = [0.2 + 0.5 * 0.2 + 0.25 * 1.0 + 0.125 * 0.2, 0.2 + 0.5 + 0.25 * 0.2, 1.0 + 0.1, 0.2]
    np.testing.assert_allclose(got, s1 + [0.2 + 0.5, 1.0], rtol=1e-6)


def test_history_features_line_up_with_the_states():
    s = _sessions()
    feats = np.arange(6, dtype=np.float32)[:, None] * np.array([[1.0, 10.0]], np.float32)
    h = intent.history_features(s, feats, state_len=2)             # [6, 2, 2]
    # Event 3 (t = 3) sees events 1, 2; event 1 sees event 0; first events see nothing.
    np.testing.assert_array_equal(h[3], feats[[1, 2]])
    np.testing.assert_array_equal(h[1], [feats[0], [0, 0]])
    np.testing.assert_array_equal(h[0], 0.0)
    np.testing.assert_array_equal(h[5], [feats[4], [0, 0]])


def test_event_features_encoding():
    sigs = (intent.Signal("c", "categorical", 3), intent.Signal("b", "binary"),
            intent.Signal("x", "continuous"))
    f = intent.event_features({"c": np.array([2, -1]), "b": np.array([1, -1]),
                               "x": np.array([0.5, np.nan], np.float32)}, sigs)
    np.testing.assert_array_equal(f, [[0, 0, 1, 1, 0.5], [0, 0, 0, 0, 0]])


@pytest.fixture(scope="module")
def task(tiny):
    return build_task(get_config("latent_intent.py", "smoke"), tiny)


def test_synthetic_task(task, tiny):
    assert task.extras["signals"] == (("dwell", "continuous", 1),
                                      ("entry_point", "categorical", 5),
                                      ("repeat", "binary", 1),
                                      ("category_switch", "binary", 1))
    assert task.extras["num_hist_features"] == 8
    tr = task.train
    assert not any(k.startswith("gt_") for k in tr)          # the truth never trains
    assert abs(tr["y_dwell"].mean()) < 1e-4 and abs(tr["y_dwell"].std() - 1) < 1e-3
    # y_dwell is the standardised log dwell of the action event itself.
    split = tiny.splits["train"]
    mean, std = task.extras["signal_stats"]["dwell"]
    np.testing.assert_allclose(tr["y_dwell"], (np.log(split.features["dwell"]) - mean) / std,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(tr["action"], split.items)
    # The history features of a row are the feature rows of its state's events: the dwell
    # column of position j is y_dwell of the event j steps into the window.
    pos = split.positions()
    row = int(np.flatnonzero(pos == 3)[0])
    np.testing.assert_allclose(tr["hist_feat"][row, :3, 0], tr["y_dwell"][row - 3:row])
    assert np.all(tr["hist_feat"][row, 3:] == 0)
    val = tiny.splits["validation"]
    q = task.validation.size                      # max_queries prefix in smoke mode
    np.testing.assert_array_equal(task.validation.arrays["gt_intent"],
                                  val.ground_truth["intent"][:q])


def test_retailrocket_has_time_gap_and_repeat_only(raw_dir):
    from jaxrec.data import prepare as prep
    c = get_config("reinforce.py", f"smoke,dataset=retailrocket,raw_dir={raw_dir}/retailrocket")
    t = build_task(c, prep.load("retailrocket", raw_dir=f"{raw_dir}/retailrocket"))
    assert t.extras["signal_source"] == "proxy"
    assert [s[0] for s in t.extras["signals"]] == ["time_gap", "repeat"]
    assert "gt_intent" not in t.validation.arrays


def test_bad_signal_source_is_named(tiny):
    c = get_config("reinforce.py", "smoke")
    c.data.signals = "dwell"
    with pytest.raises(ValueError, match="config.data.signals"):
        build_task(c, tiny)
