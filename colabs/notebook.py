"""What every ``colabs/make_*_notebook.py`` generator shares: cell constructors and the writer.

    from notebook import code, md, write
    write("pcrec", [md(INTRO), code(SETUP), ...])   # -> colabs/pcrec.ipynb (unexecuted)

tests/test_notebooks.py executes every ``colabs/*.ipynb`` in smoke mode.
"""
import os

import nbformat
from nbformat.v4 import new_code_cell as code  # noqa: F401  (re-exported for generators)
from nbformat.v4 import new_markdown_cell as md  # noqa: F401
from nbformat.v4 import new_notebook

KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def write(name: str, cells: list) -> str:
    """Writes ``cells`` as ``colabs/<name>.ipynb`` with a Python 3 kernel; returns the path."""
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = dict(KERNEL)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.ipynb")
    nbformat.write(nb, path)
    print(f"written to {path}")
    return path
