"""Every notebook in colabs/ runs top to bottom in smoke mode (JAXREC_SMOKE=1: tiny data,
a few steps), so the notebooks cannot rot. Executed with nbclient on the venv's own
ipykernel; no network."""

import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    import nbclient
    import nbformat
    monkeypatch.setenv("JAXREC_SMOKE", "1")
    monkeypatch.setenv("JAXREC_NOTEBOOK_WORKDIR", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": ROOT}})
    client.execute()
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {})]
    assert figures, f"{os.path.basename(path)} drew no figure"
