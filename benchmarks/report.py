"""Shared by the benchmark scripts: write a result table as Markdown with the exact
command that produced it (results/ files must be reproducible by rerunning it)."""

from __future__ import annotations

import shlex
import sys


def write_markdown(path: str, title: str, text: str, command_note: str = "") -> None:
    """Writes ``# title``, the command line of this process and ``text`` to ``path``."""
    cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python"] + sys.argv)
    with open(path, "w") as f:
        f.write(f"# {title}\n\nCommand{command_note}:\n\n```\n{cmd}\n```\n\n```\n{text}\n```\n")
    print(f"written to {path}")
