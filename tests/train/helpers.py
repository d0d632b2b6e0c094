"""Shared helpers of the trainer tests: the repository root and config loading."""

import os

from jaxrec import config_util

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config(name, arg=""):
    """The packaged config ``<name>`` (``'sqn.py'`` or ``'sqn'``) with ``arg``, as
    ``--config=<name>:<arg>`` would load it."""
    return config_util.load_config_file(name, arg)


def run_main(args, workdir, timeout: int = 600, env: dict | None = None):
    """``python -m jaxrec.main --workdir=WORKDIR *args`` from the repository root, with
    ``env`` added to the environment; returns the CompletedProcess (text output captured)."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "jaxrec.main", f"--workdir={workdir}",
                           *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=None if env is None else {**os.environ, **env})
