"""The analysis notebooks run headless, top to bottom, on the packaged example results."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "analysis", "notebooks", "*.ipynb")))


def test_notebooks_exist():
    assert NOTEBOOKS, "analysis/notebooks/*.ipynb missing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes_and_draws_every_plot(path, tmp_path, monkeypatch):
    monkeypatch.setenv("ANALYSIS_N_BOOT", "100")  # the kernel inherits the environment: keep it quick
    monkeypatch.setenv("ANALYSIS_N_BOOT_PARAMETRIC", "10")
    monkeypatch.delenv("RESULTS", raising=False)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # IsoFLOP, N_opt/D_opt, frontier, utility, repetition (the example repeats data)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "N_opt = k C^a" in text and "C=" in text
    assert (tmp_path / "analysis_out" / "fit.json").exists()
