"""Execute notebooks/magics_tour.ipynb headless with nbclient; any cell error fails the test.

Only cells tagged ``raises-exception`` may fail (nbclient's own convention), and the one that
does must fail with a one-line ``UsageError``. The widget state nbclient stores shows that
the panels really were built as ipywidgets/bqplot models in a real kernel.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "magics_tour.ipynb"
MAGICS = (
    "%load_ext",
    "%curv_help",
    "%curv_train",
    "%%curv_train",
    "%curv_spectrum",
    "%curv_stats",
    "%curv_landscape",
)


@pytest.fixture(scope="module")
def executed():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        store_widget_state=True,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on an error in an untagged cell
    return nb


@pytest.mark.slow
def test_tour_uses_every_magic_and_runs_without_error(executed):
    source = "\n".join(c.source for c in executed.cells if c.cell_type == "code")
    for magic in MAGICS:
        assert magic in source, f"the tour does not use {magic}"
    for cell in executed.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if "raises-exception" in cell.metadata.get("tags", []):
            # IPython prints a UsageError as one stderr line, with no traceback
            text = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stderr")
            assert text.startswith("UsageError: %curv_spectrum: --model 'no_such_model' is neither")
            assert text.count("\n") == 1 and not errors
        else:
            assert not errors, f"cell failed: {cell.source[:60]!r}: {errors}"
    last = executed.cells[-1]
    text = "".join(o.get("text", "") for o in last.outputs)
    status, steps, spectra, n, converged = text.split()
    assert (status, steps, spectra, n, converged) == ("completed", "60", "4", "2410", "True")


@pytest.mark.slow
def test_tour_built_the_panels_as_widgets(executed):
    state = executed.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    models = {m["model_name"] for m in state.values()}
    assert {
        "FigureModel",
        "LinesModel",
        "IntProgressModel",
        "FloatLogSliderModel",
        "BarsModel",
    } <= models
    # the dashboard's progress bar reached the end of the 60 steps
    bars = [m["state"] for m in state.values() if m["model_name"] == "IntProgressModel"]
    assert any(b.get("value") == 60 and b.get("max") == 60 for b in bars)
