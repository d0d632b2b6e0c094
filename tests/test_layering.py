"""The package's layers, checked on the source: data code never imports a method, backbones
never import data code, methods never import the trainer (they share jaxrec.runs instead)."""

import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxrec")

RULES = [("data", "jaxrec.methods"), ("backbones", "jaxrec.data"), ("methods", "jaxrec.train")]


def imported_modules(path):
    """Every module an ``import`` / ``from ... import`` names, at any depth of the file
    (function-level imports included)."""
    tree = ast.parse(open(path).read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _files(sub):
    for root, _, files in os.walk(os.path.join(PKG, sub)):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(root, f)


@pytest.mark.parametrize("sub,forbidden", RULES)
def test_layer_does_not_import(sub, forbidden):
    bad = {os.path.relpath(f, PKG): sorted(m for m in imported_modules(f)
                                           if m == forbidden or m.startswith(forbidden + "."))
           for f in _files(sub)}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"jaxrec/{sub} must not import {forbidden}: {bad}"


def test_the_check_sees_function_level_imports(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from jaxrec.methods import lea\n    import jaxrec.train.loop\n")
    assert {"jaxrec.methods", "jaxrec.methods.lea", "jaxrec.train.loop"} <= imported_modules(str(p))
