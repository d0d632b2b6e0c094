"""Tests of jaxrec.cli: user errors print one ``error:`` line and exit with status 2.

Every command runs in a subprocess, as a user runs it: ``python -m jaxrec.data.stats`` on
raw fixtures, and ``tests/cli_program.py`` (a tiny absl program on ``cli.run``) for config
files, overrides and the exceptions ``main`` may raise.
"""

import os
import shutil
import subprocess
import sys

import pytest

from jaxrec import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW = os.path.join(ROOT, "tests", "data", "raw")
PROGRAM = os.path.join(ROOT, "tests", "cli_program.py")

CONFIG = '''
import ml_collections
from jaxrec.config_util import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, {"smoke": False, "n": 1})
    c = ml_collections.ConfigDict()
    c.n = a["n"]
    c.model = ml_collections.ConfigDict({"dim": 8})
    return c
'''


def _run(args, cwd, env=None):
    """(exit status, stdout, stderr) of ``python args...``."""
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable] + list(args), cwd=cwd, env=full_env,
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def _user_error(result, *fragments) -> str:
    """Asserts status 2 and exactly one ``error:`` line holding ``fragments``, no
    traceback; returns the line."""
    rc, out, err = result
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and "FATAL" not in err, err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


def _traceback(result, *fragments) -> None:
    rc, out, err = result
    assert rc == 1, (rc, out, err)
    assert "Traceback (most recent call last)" in err, err
    assert not any(l.startswith("error:") for l in err.splitlines()), err
    for frag in fragments:
        assert frag in err, (frag, err)


# ------------------------------------------------------------------ python -m jaxrec.data.stats
@pytest.fixture
def stats(tmp_path):
    def run(*args):
        return _run(["-m", "jaxrec.data.stats", f"--data_dir={tmp_path / 'data'}"] + list(args),
                    cwd=tmp_path)
    return run


def test_stats_bad_dataset_name(stats):
    _user_error(stats("--dataset=movielens_10m"), "--dataset=movielens_10m",
                "movielens_100k")


def test_stats_missing_raw_dir(stats, tmp_path):
    missing = tmp_path / "nowhere"
    _user_error(stats("--dataset=movielens_100k", f"--raw_dir={missing}"), str(missing),
                "raw directory does not exist", "u.data, u.item")
    _user_error(stats("--dataset=movielens_100k"), "needs --raw_dir")


def test_stats_rating_outside_scale_names_file_and_line(stats, tmp_path):
    raw = tmp_path / "ml"
    shutil.copytree(os.path.join(RAW, "movielens_100k"), raw)
    lines = (raw / "u.data").read_text().split("\n")
    lines[3] = "2\t5\t6\t880000500"  # line 4: a rating of 6 on the 1-5 scale
    (raw / "u.data").write_text("\n".join(lines))
    _user_error(stats("--dataset=movielens_100k", f"--raw_dir={raw}"),
                f"{raw / 'u.data'}:4: field 3 (rating)", "from 1 to 5", "'6'")
    _traceback(stats("--dataset=movielens_100k", f"--raw_dir={raw}", "--debug"),
               "DataFormatError", "u.data:4")
    _user_error(stats("--dataset=movielens_100k", f"--raw_dir={raw}", "--option=scale=1,6"),
                "unknown reader option(s) 'scale'", "accepted: rating_scale")
    rc, out, err = stats("--dataset=movielens_100k", f"--raw_dir={raw}",
                         "--option=rating_scale=1,6")
    assert rc == 0, err
    assert "movielens_100k" in out and "interactions" in out


# ------------------------------------------------------------------ cli.run with a config file
@pytest.fixture
def program(tmp_path):
    (tmp_path / "cfg.py").write_text(CONFIG)

    def run(*args):
        return _run([PROGRAM] + list(args), cwd=tmp_path)
    return run


def test_config_file_ok_and_overrides(program):
    rc, out, err = program("--config=cfg.py:n=3", "--config.model.dim=4")
    assert rc == 0, err
    assert "n=3" in out


def test_config_file_errors_are_one_line(program, tmp_path):
    _user_error(program("--config=cfg.py:bogus=1"), "config file cfg.py",
                "unknown config argument 'bogus'", "accepted: n, smoke")
    _user_error(program("--config=cfg.py:n=many"), "config file cfg.py",
                "invalid literal for int()", "'many'")
    _user_error(program("--config=absent.py:smoke"), "no config file 'absent.py'",
                "registered: gaze_reward, iisan")
    _user_error(program("--config=absent.py", "--config.n=2"), "no config file 'absent.py'")
    (tmp_path / "broken.py").write_text("import ml_collections\ndef get_config(arg:\n")
    _user_error(program("--config=broken.py"), "config file broken.py, line 2",
                "SyntaxError")
    (tmp_path / "typo.py").write_text("def get_config(arg=None):\n    return undefined_name\n")
    _user_error(program("--config=typo.py"), "config file typo.py, line 2", "NameError",
                "undefined_name")
    _traceback(program("--config=cfg.py:bogus=1", "--debug"),
               "ValueError: unknown config argument 'bogus'")


def test_config_override_errors_are_one_line(program):
    _user_error(program("--config=cfg.py", "--config.nope=1"), "--config.nope",
                "has no field 'nope'", "cfg.py")
    _user_error(program("--config=cfg.py", "--config.model.dims=1"), "--config.model.dims",
                "has no field 'model.dims'")
    _user_error(program("--config=cfg.py", "--config.n=abc"), "--config.n=abc",
                "invalid literal")
    _user_error(program("--config=cfg.py", "--unknown_flag=1"), "unknown_flag")


@pytest.mark.parametrize("kind,fragments", [
    ("data", ["error: /data/u.data:4: field 3 (rating)", "'6'"]),
    ("key", ["error: unknown raw format 'csv'; known: retailrocket"]),
    ("value", ["error: bad value; second line"]),
    ("diverged", ["error: non-finite training loss at step 4"]),
    ("checkpoint", ["/w/checkpoints/8 (step 8)", "'params.w' has shape (3,)", "--workdir"]),
    ("missing_file", ["No such file or directory", "/nonexistent/file.txt"]),
])
def test_main_user_errors_exit_2(program, kind, fragments):
    _user_error(program("--config=cfg.py", f"--fail={kind}"), *fragments)


def test_main_debug_bug_interrupt_and_status(program):
    _traceback(program("--config=cfg.py", "--fail=value", "--debug"), "ValueError: bad value")
    # A bug is not a user error: its traceback shows, status 1.
    _traceback(program("--config=cfg.py", "--fail=bug"), "TypeError: unsupported operand")
    rc, out, err = program("--config=cfg.py", "--fail=interrupt")
    assert rc == 130 and err.strip().splitlines()[-1] == "interrupted", (rc, err)
    assert "Traceback" not in err
    rc, _, err = program("--config=cfg.py", "--fail=interrupt", "--debug")
    assert rc != 0 and "KeyboardInterrupt" in err and "Traceback" in err
    assert program("--config=cfg.py", "--fail=exit3")[0] == 3


def test_message_is_one_line():
    assert cli.message(KeyError("unknown dataset 'x'; known: a, b")) == \
        "unknown dataset 'x'; known: a, b"
    assert cli.message(KeyError("dim")) == "KeyError: 'dim'"
    assert cli.message(ValueError("a\n\n  b  \n")) == "a; b"
    assert cli.message(FloatingPointError()) == "FloatingPointError"
