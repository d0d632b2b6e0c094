"""TFDS preparation: complete-or-absent datasets, round trips, the stats command."""

import os
import subprocess
import sys

import numpy as np
import pytest

from jaxrec.data import prepare as prep
from jaxrec.data import synthetic
from jaxrec.data.sessions import Sessions


def _same_dataset(a: prep.Dataset, b: prep.Dataset):
    assert a.num_items == b.num_items
    for split in prep.SPLITS:
        sa, sb = a.splits[split], b.splits[split]
        for f in ("items", "is_buy", "timestamps", "offsets", "session_ids"):
            np.testing.assert_array_equal(getattr(sa, f), getattr(sb, f))
        np.testing.assert_array_equal(sa.raw_session_ids, sb.raw_session_ids)
    np.testing.assert_array_equal(a.items.extra["images"], b.items.extra["images"])
    assert a.items.titles == b.items.titles


def test_round_trip_equals_generated_log(tmp_path):
    ds = prep.load("synthetic", data_dir=str(tmp_path), preset="tiny")
    log = synthetic.generate(synthetic.SyntheticConfig.small(num_sessions=300, num_items=80))
    s = ds.all_sessions()
    ref = Sessions.from_event_log(log)
    np.testing.assert_array_equal(s.items, ref.items)
    np.testing.assert_array_equal(s.is_buy, ref.is_buy)
    np.testing.assert_array_equal(s.offsets, ref.offsets)
    np.testing.assert_array_equal(s.ground_truth["intent"], log.ground_truth["intent"])
    np.testing.assert_allclose(s.features["dwell"], log.features["dwell"])
    np.testing.assert_array_equal(ds.items.extra["images"], log.items.extra["images"])
    assert ds.items.titles == list(log.items.titles)
    # 80/10/10 by session, disjoint, and the split ids were exported.
    n = {k: v.num_sessions for k, v in ds.splits.items()}
    assert n == {"train": 240, "validation": 30, "test": 30}
    sdir, _ = prep.dataset_dirs("synthetic", str(tmp_path),
                                prep._normalise_options("synthetic", {"preset": "tiny"}))
    assert os.path.exists(os.path.join(sdir, "split_sessions.json"))


def test_interrupted_preparation_is_not_complete_and_rerun_matches(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = prep._session_example

    def dying(log, bounds, s):
        calls["n"] += 1
        if calls["n"] == 150:          # half-way through the sessions
            raise KeyboardInterrupt("simulated kill")
        return real(log, bounds, s)

    monkeypatch.setattr(prep, "_session_example", dying)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare("synthetic", data_dir=str(tmp_path / "a"), preset="tiny")
    assert not prep.is_prepared("synthetic", data_dir=str(tmp_path / "a"), preset="tiny")
    with pytest.raises(FileNotFoundError, match="not prepared"):
        prep.load("synthetic", data_dir=str(tmp_path / "a"), prepare_if_missing=False,
                  preset="tiny")
    monkeypatch.setattr(prep, "_session_example", real)
    resumed = prep.load("synthetic", data_dir=str(tmp_path / "a"), preset="tiny")
    clean = prep.load("synthetic", data_dir=str(tmp_path / "b"), preset="tiny")
    _same_dataset(resumed, clean)


def test_options_select_distinct_datasets(tmp_path):
    a = prep.load("synthetic", data_dir=str(tmp_path), preset="tiny", split_seed=0)
    b = prep.load("synthetic", data_dir=str(tmp_path), preset="tiny", split_seed=1)
    assert not np.array_equal(a.splits["test"].session_ids, b.splits["test"].session_ids)
    assert a.stats() == b.stats()


def test_retailrocket_fixture_through_preparation(tmp_path, raw_dir):
    from jaxrec.data.readers import read_retailrocket
    log = read_retailrocket(os.path.join(raw_dir, "retailrocket"))
    ds = prep.load("retailrocket", raw_dir=os.path.join(raw_dir, "retailrocket"),
                   data_dir=str(tmp_path))
    st = ds.stats()
    assert (st["sessions"], st["items"], st["interactions"]) == (
        log.num_sessions, log.num_items, log.num_events)
    assert st["purchases"] == int(log.is_buy.sum())


def test_missing_raw_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="needs --raw_dir.*events.csv"):
        prep.load("retailrocket", data_dir=str(tmp_path))


def test_stats_command_prints_the_papers_table(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "jaxrec.data.stats", "--dataset=synthetic",
         f"--data_dir={tmp_path}", "--option=preset=tiny"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    header = [l for l in out.stdout.splitlines() if l.startswith("dataset")][0]
    for col in ("sessions", "items", "interactions", "clicks", "purchases"):
        assert col in header
    row = [l for l in out.stdout.splitlines() if l.startswith("synthetic")][0].split()
    assert row[1:4] == ["300", "80", "1,925"]


def test_preparation_and_loading_never_import_tensorflow(tmp_path):
    """jaxrec uses tensorflow_datasets' array_record path only; TensorFlow is no dependency."""
    code = ("import sys\n"
            "from jaxrec.data import prepare\n"
            f"ds = prepare.load('synthetic', data_dir={str(tmp_path)!r}, preset='tiny')\n"
            "assert ds.num_items == 80\n"
            "print(sorted(m for m in sys.modules if m == 'tensorflow' "
            "or m.startswith('tensorflow.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_same_dataset_name_from_another_raw_dir_is_prepared_separately(tmp_path, raw_dir,
                                                                      monkeypatch):
    """The cache key includes the raw directory: a second download (or a test fixture) of
    'retailrocket' must not silently reuse the first one's preparation."""
    import shutil
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(os.path.join(raw_dir, "retailrocket"), a)
    shutil.copytree(os.path.join(raw_dir, "retailrocket"), b)
    data = str(tmp_path / "data")
    dirs_a = prep.prepare("retailrocket", str(a), data)
    assert prep.is_prepared("retailrocket", data_dir=data, raw_source=os.path.realpath(a))
    assert not prep.is_prepared("retailrocket", data_dir=data, raw_source=os.path.realpath(b))
    dirs_b = prep.prepare("retailrocket", str(b), data)
    assert dirs_a != dirs_b
    # the same directory named differently (relative path) is the same dataset
    monkeypatch.chdir(tmp_path)
    assert prep.prepare("retailrocket", "a", data) == dirs_a


def test_preparation_prints_one_line_per_stage(tmp_path):
    """A first run on an offline machine shows what happens in two lines, not TFDS's ~40
    ("Downloading and preparing dataset ...", progress bars, absl warnings)."""
    code = ("from jaxrec.data import prepare as p; import sys; "
            f"d = p.load('synthetic', data_dir={str(tmp_path)!r}, preset='tiny'); "
            f"d = p.load('synthetic', data_dir={str(tmp_path)!r}, preset='tiny'); print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "JAXREC_VERBOSE_TFDS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "ok\n"
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("preparing dataset synthetic (300 sessions, 80 items)")
    assert lines[1].startswith("prepared dataset synthetic in ")
    # and the switch brings TFDS's own output back
    out = subprocess.run([sys.executable, "-c", code.replace(str(tmp_path), str(tmp_path / "v"))],
                         capture_output=True, text=True, timeout=300,
                         env={**env, "JAXREC_VERBOSE_TFDS": "1"})
    assert "Downloading and preparing dataset" in out.stdout
