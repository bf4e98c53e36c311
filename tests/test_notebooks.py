"""Execute example.ipynb and every notebook in notebooks/ headless, failing on any cell error.

Each notebook runs top to bottom with ``nbclient`` in a fresh kernel (its small, built-in
data setting), with widget state stored as in a real front end. Slow (minutes): marked
``slow``; run one with ``pytest tests/test_notebooks.py -k <name>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + [ROOT / "example.ipynb"]
TIMEOUT = int(os.environ.get("JC_NOTEBOOK_TIMEOUT", "900"))  # per cell, seconds


def test_there_are_notebooks():
    assert (ROOT / "example.ipynb").exists()
    assert len(NOTEBOOKS) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_without_errors(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # files it writes land in tmp
        store_widget_state=True,
        allow_errors=False,
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{path.name}: a cell failed:\n{str(exc)[-3000:]}", pytrace=False)
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: error outputs {errors}"
