"""Execute notebooks/magics_tour.ipynb headless with nbclient; any cell error fails the test.

Only cells tagged ``raises-exception`` may fail (nbclient's own convention), and the one that
does must fail with a one-line ``UsageError``. The widget state nbclient stores shows that
the panels really were built as ipywidgets/bqplot models in a real kernel.

Saved notebooks keep their figures (issue 16, item 5): every panel's output carries an
``image/png`` next to its widget view, so ``jupyter nbconvert --to html`` of the notebook as
JupyterLab saves it by default (no widget state) shows one image per panel; with the widget
state saved, the export embeds the state and a view of each panel instead.
"""

from __future__ import annotations

import base64
import copy
import re
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
#: cells whose output is a panel: the magics that show one, and a panel made in Python
PANEL_CELLS = ("%curv_train", "%%curv_train", "%curv_spectrum", "%curv_stats", "%curv_landscape")
PANEL_FROM_PYTHON = "from jupyter_curvature.widgets import SpectrumPanel"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


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


def panel_outputs(nb) -> list[tuple[int, dict]]:
    """``(cell index, output)`` of every panel's display output (the hidden bqplot guard of
    ``%load_ext`` is not a panel)."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "raises-exception" in cell.metadata.get("tags", []):
            continue
        src = cell.source.lstrip()
        if src.startswith(PANEL_CELLS) or src.startswith(PANEL_FROM_PYTHON):
            views = [o for o in cell.outputs if WIDGET_VIEW in o.get("data", {})]
            assert len(views) == 1, f"cell {i} ({src[:40]!r}) has {len(views)} widget outputs"
            found.append((i, views[0]))
    return found


def png_size(text: str) -> tuple[int, int]:
    raw = base64.b64decode(text)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def to_html(nb) -> str:
    nbconvert = pytest.importorskip("nbconvert")
    html, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    return html


@pytest.mark.slow
def test_every_panel_output_carries_a_png_fallback(executed):
    outputs = panel_outputs(executed)
    # 2 dashboards, 2 spectra, statistics, the explorer, and the SpectrumPanel made in Python
    assert len(outputs) == 7, [i for i, _ in outputs]
    for i, out in outputs:
        w, h = png_size(out["data"]["image/png"])
        assert w >= 300 and h >= 200, (i, w, h)  # a figure, not an empty canvas
        assert out["data"][WIDGET_VIEW]["model_id"]  # the live view stays first for JupyterLab


@pytest.mark.slow
def test_html_export_without_widget_state_shows_one_image_per_panel(executed):
    nb = copy.deepcopy(executed)
    nb.metadata.pop("widgets")  # as JupyterLab saves by default, and as GitHub's viewer sees it
    html = to_html(nb)
    images = re.findall(r'<img[^>]* src="data:image/png;base64,([A-Za-z0-9+/=\s]+)"', html)
    images = [re.sub(r"\s", "", b) for b in images]
    for i, out in panel_outputs(executed):
        png = out["data"]["image/png"].replace("\n", "")
        assert images.count(png) == 1, f"cell {i}: its panel's image is not in the HTML once"
    # and no image besides the outputs' own
    pngs = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == len(pngs)
    assert WIDGET_VIEW not in html  # no dead widget placeholders


@pytest.mark.slow
def test_html_export_with_widget_state_embeds_every_panel_view(executed):
    state = executed.metadata["widgets"][WIDGET_STATE]["state"]
    html = to_html(executed)
    assert f'<script type="{WIDGET_STATE}">' in html
    for i, out in panel_outputs(executed):
        model_id = out["data"][WIDGET_VIEW]["model_id"]
        assert model_id in state, f"cell {i}: its root widget is not in the saved state"
        assert f'"model_id": "{model_id}"' in html, f"cell {i}: no widget view in the HTML"
