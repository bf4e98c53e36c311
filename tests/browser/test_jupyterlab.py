"""The widgets in a real browser: JupyterLab driven end to end in headless Chromium.

Two notebooks are opened in a private JupyterLab (see ``conftest.py``) and run with *Run All*:

* ``notebooks/browser_checks.ipynb`` (dedicated, seconds): the ``%%curv_train`` dashboard is
  read twice while its cell runs (a file handshake pauses the training at steps 40 and 120
  until the test has read the page, so "while it runs" holds on any machine); the
  ``%curv_spectrum`` panel; the ``%curv_landscape`` explorer, whose first slider is dragged
  with the mouse and reset, and whose JS canvas is dragged with the pointer.
* ``example.ipynb`` (the walk-through, in its default small setting: digits and a small MLP).

Every check reads the page (SVG marks, HTML tables, canvas pixels) and, where a number is
shown, compares it with the kernel's own value fetched over the notebook's kernel
connection. Screenshots of every checked view go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from labdriver import PROGRESS_GATES, TRAIN_GATES, NotebookPage, wait_for

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUN_TIMEOUT = float(os.environ.get("JC_BROWSER_RUN_TIMEOUT", "420"))  # seconds per notebook
UI_TIMEOUT = 60.0  # seconds for the page to answer one interaction (kernel round trip)
NUMBER = r"-?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"

# --------------------------------------------------------------------------------------
# reading views


JS_EXPLORER = """(root) => {
  const html = Array.from(root.querySelectorAll('.widget-html-content'))
      .find(e => /at point/.test(e.textContent));
  let loss = null, where = null;
  if (html) {
    where = (html.querySelector('b') || {}).textContent || null;
    for (const tr of html.querySelectorAll('tbody tr')) {
      const td = tr.querySelectorAll('td');
      if (td.length > 1 && td[0].textContent.trim() === 'train loss') loss = td[1].textContent.trim();
    }
  }
  // ipywidgets writes negative readouts with a Unicode minus sign: compare in ASCII
  const sliders = Array.from(root.querySelectorAll('.widget-slider')).map(s => ({
    label: (s.querySelector('label') || {}).textContent || '',
    value: ((s.querySelector('.widget-readout') || {}).textContent || '')
        .trim().replace('\u2212', '-'),
  }));
  return {loss, where, sliders};
}"""

JS_CANVAS_PIXELS = """(canvas) => {
  const ctx = canvas.getContext('2d');
  const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let coloured = 0;
  const colours = new Set();
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0 && !(d[i] > 235 && d[i + 1] > 235 && d[i + 2] > 235)) {
      coloured++;
      colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    }
  }
  return {coloured, total: canvas.width * canvas.height, colours: colours.size};
}"""

JS_TABLES = """(root) => Array.from(root.querySelectorAll('.widget-html-content')).map(e => ({
  caption: (e.querySelector('b') || {}).textContent || '',
  rows: Array.from(e.querySelectorAll('tbody tr')).map(
      tr => Array.from(tr.querySelectorAll('td')).map(td => td.textContent.trim())),
}))"""


def explorer_view(nb: NotebookPage, out) -> dict:
    """Slider readouts, the displayed loss, and the 1D/2D marker positions of an explorer."""
    view = out.evaluate(JS_EXPLORER)
    view["marker1d"] = nb.figure(out, "1D curves")["dots"]
    view["marker2d"] = nb.figure(out, "2D map")["dots"]
    return view


def translate(t: str) -> tuple[float, float]:
    m = re.match(rf"translate\(({NUMBER}),\s*({NUMBER})\)", t or "")
    assert m, f"not a finite translate(x, y): {t!r}"
    return float(m.group(1)), float(m.group(2))


def same_markers(a: list[str], b: list[str], tol: float = 0.5) -> bool:
    if len(a) != len(b):
        return False
    return all(abs(p - q) <= tol for s, t in zip(a, b) for p, q in zip(translate(s), translate(t)))


def settle(read, changed, what: str, timeout: float = UI_TIMEOUT) -> dict:
    """Wait until ``changed(read())`` holds and the view stays the same for one second."""
    last = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = read()
        if changed(view) and view == last:
            return view
        last = view
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last view: {last}")


def drag(page, box_from: tuple[float, float], box_to: tuple[float, float]) -> None:
    page.mouse.move(*box_from)
    page.mouse.down()
    page.mouse.move(*box_to, steps=12)
    page.mouse.up()


def tables(out) -> dict[str, list[list[str]]]:
    return {t["caption"]: t["rows"] for t in out.evaluate(JS_TABLES) if t["caption"]}


def kernel_values(nb: NotebookPage, code: str) -> list[str]:
    text = nb.kernel_exec(code)
    assert "KERNEL ERROR" not in text, text
    return text.split()


def no_console_errors(nb: NotebookPage) -> None:
    errors = list(dict.fromkeys(nb.console_errors))  # unique, in order
    assert not errors, (
        f"{len(nb.console_errors)} uncaught error(s) in the browser console of {nb.notebook} "
        f"({len(errors)} distinct):\n  "
        + "\n  ".join(e[:300] for e in errors[:15])
        + "".join(f"\n  stack: {s}" for s in nb.exception_stacks[:5])
    )


def canvas_padding() -> dict[str, float]:
    """The canvas's plot-area margins, read from the widget's own ES module (``PAD``)."""
    js = (ROOT / "jupyter_curvature" / "static" / "landscape_canvas.js").read_text()
    m = re.search(r"const PAD = \{([^}]*)\}", js)
    assert m, "landscape_canvas.js no longer defines `const PAD = {...}`: update the test"
    return {k.strip(): float(v) for k, v in (p.split(":") for p in m.group(1).split(","))}


def line_points(fig: dict) -> list[int]:
    return [ln["points"] for ln in fig["lines"]]


# --------------------------------------------------------------------------------------
# the dedicated notebook


def _loss_points(nb: NotebookPage, out) -> int:
    figs = [f for f in nb.figures(out) if f["title"] == "Loss"]
    if not figs or not figs[0]["lines"]:
        return 0
    return figs[0]["lines"][0]["points"]  # the train curve is the first line


def _watch_dashboard(nb: NotebookPage, lab, artifacts: Path) -> dict:
    """Read the Loss curve of the running ``%%curv_train`` cell at the two pauses."""
    i = nb.cell_index("%%curv_train")
    out = nb.output(i)
    rec: dict = {"cell": i, "error": None}

    def gate(name: str) -> bool:
        if nb.error_outputs():
            raise AssertionError(f"a cell failed before the pause {name}: {nb.error_outputs()}")
        return lab.gate_reached(name)

    def read() -> tuple[int, str]:
        return _loss_points(nb, out), nb.prompt(i)

    try:
        wait_for(lambda: gate("train_middle"), RUN_TIMEOUT, "the training to pause at step 40")
        # the kernel waits at step 40; give the front end time to draw what it was sent
        rec["first"] = wait_for(
            lambda: (r := read())[0] > 0 and r,
            UI_TIMEOUT,
            "the Loss curve to show points while the cell runs (paused at step 40)",
        )
        nb.screenshot(out, artifacts / "checks_dashboard_running_step40.png")
        lab.release_gate("train_middle")
        wait_for(lambda: gate("train_end"), RUN_TIMEOUT, "the training to pause at step 120")
        n1 = rec["first"][0]
        rec["second"] = wait_for(
            lambda: (r := read())[0] > n1 and r,
            UI_TIMEOUT,
            f"the Loss curve to grow past {n1} points while the cell runs (paused at step 120)",
        )
        nb.screenshot(out, artifacts / "checks_dashboard_running_step120.png")
    except (AssertionError, TimeoutError) as exc:
        rec["error"] = str(exc)
        nb.screenshot(out, artifacts / "checks_dashboard_running_FAILED.png")
    finally:
        lab.release_all_gates(TRAIN_GATES)
    return rec


@contextmanager
def run_dedicated(lab, browser, artifacts: Path, notebook: str, workspace: str, watch, gates):
    """Open a dedicated notebook, Run All, ``watch(page, lab, artifacts)`` it while it runs,
    wait for the end; yields ``(page, what the watch saw)``. Its ``gates`` are released at
    the end whatever happened, so that no kernel waits forever."""
    name = lab.add_notebook(HERE / "notebooks" / notebook)
    nb = NotebookPage(browser, lab, name, workspace=workspace)
    try:
        nb.open()
        nb.run_all()
        seen = watch(nb, lab, artifacts)
        nb.wait_until_run(RUN_TIMEOUT)
        yield nb, seen
    finally:
        lab.release_all_gates(gates)
        nb.screenshot(None, artifacts / f"{workspace}_page_at_end.png")
        nb.close()


@pytest.fixture(scope="class")
def checks(lab, browser, artifacts):
    """browser_checks.ipynb opened and run; yields (page, what the dashboard watch saw)."""
    with run_dedicated(
        lab, browser, artifacts, "browser_checks.ipynb", "checks", _watch_dashboard, TRAIN_GATES
    ) as run:
        yield run


class TestChecksNotebook:
    def test_cells_run_without_error_output(self, checks):
        nb, _ = checks
        assert nb.error_outputs() == []
        assert nb.widget_problems() == []
        assert nb.prompt(nb.cell_index('print("done:"')) != "[*]:"

    def test_dashboard_updates_while_the_cell_runs(self, checks, artifacts):
        nb, live = checks
        assert live["error"] is None, (
            live["error"]
            + "\nconsole errors: "
            + "; ".join(dict.fromkeys(e[:160] for e in nb.console_errors))
        )
        (n1, prompt1), (n2, prompt2) = live["first"], live["second"]
        assert prompt1 == prompt2 == "[*]:", (prompt1, prompt2)  # the cell was running
        assert 0 < n1 < n2, (n1, n2)

    def test_dashboard_figures_have_data(self, checks, artifacts):
        nb, _ = checks
        i = nb.cell_index("%%curv_train")
        out = nb.output(i)
        nb.screenshot(out, artifacts / "checks_dashboard_done.png")
        figs = {f["title"]: f for f in nb.figures(out)}
        assert "Loss" in figs and "Top-1 accuracy" in figs, list(figs)
        steps = int(kernel_values(nb, "print(run.trainer.step)")[0])
        assert steps == 120
        for title in ("Loss", "Top-1 accuracy"):
            points = line_points(figs[title])
            assert points and points[0] == steps, f"{title}: train curve points {points}"
            assert not any(ln["nan"] for ln in figs[title]["lines"]), figs[title]["lines"]
        density = next(f for t, f in figs.items() if "spectral density" in t)
        assert max(line_points(density), default=0) >= 100, density
        top = next(f for t, f in figs.items() if t.startswith("Largest"))
        # λ1, λ2 and the 2/lr line, a point at each curvature check
        checks_done = int(kernel_values(nb, "print(len(run.history.spectrum_steps))")[0])
        assert checks_done >= 3 and line_points(top) == [checks_done] * 3, (checks_done, top)
        status = out.locator(".widget-html-content").first.inner_text()
        assert "finished" in status, status

    def test_spectrum_panel_shows_density_and_table(self, checks, artifacts):
        nb, _ = checks
        out = nb.output(nb.cell_index("%curv_spectrum"))
        nb.screenshot(out, artifacts / "checks_spectrum_panel.png")
        fig = nb.figure(out, "Hessian spectral density")
        points = line_points(fig)
        assert max(points) >= 300, points  # the density curve on its 600-point grid
        assert not any(ln["nan"] for ln in fig["lines"])
        assert len(fig["dots"]) >= 2, "no Ritz values drawn"
        tabs = tables(out)
        top = tabs.get("Top eigenvalues")
        assert top is not None and len(top) == 3, tabs
        kernel = kernel_values(nb, "print(*(f'{v:.6g}' for v in eig.eigenvalues.tolist()))")
        assert [row[1] for row in top] == kernel  # the page shows the kernel's numbers
        summary = dict(row[:2] for row in tabs["Summary"])
        largest = kernel_values(nb, "print(f'{dens.stats.largest:.6g}')")[0]
        assert summary["largest eigenvalue"] == largest

    def test_landscape_slider_drag_and_reset(self, checks, artifacts):
        nb, _ = checks
        page = nb.page
        out = nb.output(nb.cell_index("%curv_landscape"))
        out.scroll_into_view_if_needed()
        read = lambda: explorer_view(nb, out)  # noqa: E731
        first = read()
        assert first["loss"] is not None and first["where"] == "point (0, 0)", first
        assert [s["value"] for s in first["sliders"]] == ["0.000", "0.000"], first
        nb.screenshot(out, artifacts / "checks_explorer_at_origin.png")

        slider = out.locator(".widget-slider").filter(has_text="d0:").first
        handle = slider.locator(".noUi-handle").first
        track = slider.locator(".noUi-base").first
        handle.scroll_into_view_if_needed()
        hb, tb = handle.bounding_box(), track.bounding_box()
        y = hb["y"] + hb["height"] / 2
        drag(page, (hb["x"] + hb["width"] / 2, y), (tb["x"] + 0.8 * tb["width"], y))

        moved = settle(
            read,
            lambda v: (
                v["sliders"][0]["value"] != "0.000"
                and v["loss"] != first["loss"]
                and not same_markers(v["marker1d"], first["marker1d"])
                and not same_markers(v["marker2d"], first["marker2d"])
            ),
            "the slider drag to move the markers and change the displayed loss",
        )
        nb.screenshot(out, artifacts / "checks_explorer_after_slider_drag.png")
        value = float(moved["sliders"][0]["value"])
        assert 0.3 < value <= 1.0, moved  # dragged to 80 % of the track: right of the middle
        c0, c1, loss = kernel_values(
            nb, "print(*ex.coords.tolist(), f\"{ex.point_values['train_loss']:.6g}\")"
        )
        # the kernel is at the slider's value (shown with 3 decimals), the other coordinate 0
        assert abs(float(c0) - value) <= 6e-4 and float(c1) == 0.0, (c0, c1, moved)
        assert moved["loss"] == loss  # the page shows the kernel's loss at the new point

        reset = out.locator("button").filter(has_text=re.compile(r"^\s*reset\s*$")).first
        reset.click()
        back = settle(
            read,
            lambda v: (
                [s["value"] for s in v["sliders"]] == ["0.000", "0.000"]
                and v["loss"] == first["loss"]
            ),
            "reset to bring the sliders and the displayed loss back",
        )
        nb.screenshot(out, artifacts / "checks_explorer_after_reset.png")
        assert back["where"] == first["where"], back
        assert same_markers(back["marker1d"], first["marker1d"]), (back, first)
        assert same_markers(back["marker2d"], first["marker2d"]), (back, first)

    def test_canvas_renders_and_drag_reaches_the_kernel(self, checks, artifacts):
        nb, _ = checks
        page = nb.page
        out = nb.output(nb.cell_index("%curv_landscape"))
        widget = out.locator(".jc-landscape-canvas").first
        canvas = widget.locator("canvas").first
        readout = widget.locator(".jc-landscape-readout").first
        canvas.scroll_into_view_if_needed()
        nb.screenshot(widget, artifacts / "checks_canvas_before_drag.png")
        pixels = canvas.evaluate(JS_CANVAS_PIXELS)
        # the heat map fills the plot area: most pixels coloured, many colours
        assert pixels["coloured"] > 0.4 * pixels["total"] and pixels["colours"] > 50, pixels

        pattern = re.compile(rf"^\(({NUMBER}), ({NUMBER})\)\s+train_loss ({NUMBER})")
        before = readout.inner_text().strip()
        assert pattern.match(before), before

        # the kernel records every point it is sent (or sets) from now on
        kernel_values(
            nb,
            "_jc_seen = []\n"
            "ex.canvas.observe(lambda c: _jc_seen.append(list(c['new'])), names=['point'])",
        )
        x0, x1, y0, y1 = (
            float(v) for v in kernel_values(nb, "print(*ex.canvas.x_range, *ex.canvas.y_range)")
        )
        box = canvas.bounding_box()
        pad = canvas_padding()
        plot_w = box["width"] - pad["left"] - pad["right"]
        plot_h = box["height"] - pad["top"] - pad["bottom"]

        def pixel(x: float, y: float) -> tuple[float, float]:
            return (
                box["x"] + pad["left"] + (x - x0) / (x1 - x0) * plot_w,
                box["y"] + pad["top"] + (y1 - y) / (y1 - y0) * plot_h,
            )

        # drag from the centre to (0.31, 0.41): off the sliders' 0.02 grid on purpose
        target = (0.31, 0.41)
        drag(page, pixel(0.0, 0.0), pixel(*target))
        text = settle(
            lambda: {"t": readout.inner_text().strip()},
            lambda v: v["t"] != before and pattern.match(v["t"]) is not None,
            "the canvas readout to show the kernel's answer for the dragged point",
        )["t"]
        nb.screenshot(widget, artifacts / "checks_canvas_after_drag.png")
        x, y, shown = (float(v) if i < 2 else v for i, v in enumerate(pattern.match(text).groups()))
        got = json.loads(
            nb.kernel_exec(
                "import json; print(json.dumps({'seen': _jc_seen, 'point': ex.canvas.point, "
                "'coords': ex.coords.tolist(), 'loss': f\"{ex.point_values['train_loss']:.5g}\"}))"
            )
        )
        # the kernel received the dragged coordinates (within a pixel of the pointer's place)
        tol = 1.0 * (x1 - x0) / plot_w
        sent = [
            p for p in got["seen"] if abs(p[0] - target[0]) <= tol and abs(p[1] - target[1]) <= tol
        ]
        assert sent, f"the kernel never received a point near {target}: {got['seen']}"
        # ... and the explorer stays where the pointer left it (no echo moves it elsewhere)
        # (up to float rounding in the front end's slider: 1e-9 of the range)
        eps = 1e-9 * (x1 - x0)
        stays = all(
            abs(a - b) <= eps and abs(a - c) <= eps
            for a, b, c in zip(got["coords"], sent[-1], got["point"])
        )
        assert stays, (
            f"the canvas sent {sent[-1]}, the explorer ended at {got['coords']} "
            f"(canvas point {got['point']}); points the kernel saw: {got['seen']}"
        )
        # the page shows that point and the kernel's loss there (not the grid interpolation)
        assert abs(x - got["point"][0]) <= 5e-3 and abs(y - got["point"][1]) <= 5e-3, (text, got)
        assert shown == got["loss"], (text, got)
        view = explorer_view(nb, out)
        assert [s["value"] for s in view["sliders"]] == [f"{c:.3f}" for c in got["coords"]], view

    def test_no_console_errors(self, checks):
        nb, _ = checks
        no_console_errors(nb)


# --------------------------------------------------------------------------------------
# example.ipynb


@contextmanager
def run_to_the_end(lab, browser, artifacts: Path, source: Path, workspace: str):
    """``source`` opened in the lab and run to the end (*Run All*); a screenshot at the end."""
    nb = NotebookPage(browser, lab, lab.add_notebook(source), workspace=workspace)
    try:
        nb.open()
        started = time.monotonic()
        nb.run_all()
        nb.wait_until_run(RUN_TIMEOUT)
        print(f"{source.name} ran in {time.monotonic() - started:.0f} s")
        yield nb
    finally:
        nb.screenshot(None, artifacts / f"{workspace}_page_at_end.png")
        nb.close()


@pytest.fixture(scope="class")
def example(lab, browser, artifacts):
    """example.ipynb (default small setting) opened and run to the end."""
    with run_to_the_end(lab, browser, artifacts, ROOT / "example.ipynb", "example") as nb:
        yield nb


class TestExampleNotebook:
    def test_runs_without_errors(self, example):
        nb = example
        assert nb.error_outputs() == []
        assert nb.widget_problems() == []
        assert all(c["count"] is not None for c in nb.state()["cells"] if c["type"] == "code")

    def test_dashboard(self, example, artifacts):
        nb = example
        out = nb.output(nb.cell_index("%%curv_train"))
        nb.screenshot(out, artifacts / "example_dashboard.png")
        figs = {f["title"]: f for f in nb.figures(out)}
        steps = int(kernel_values(nb, "print(run.trainer.step)")[0])
        for title in ("Loss", "Top-1 accuracy"):
            assert title in figs, list(figs)
            points = line_points(figs[title])
            assert points and points[0] == steps, f"{title}: {points} points, {steps} steps"
            assert len(figs[title]["dots"]) >= 1, f"{title}: no test-set points"

    def test_spectrum_panels(self, example, artifacts):
        nb = example
        for name, cell, title, var in (
            (
                "ggn",
                "%curv_spectrum --model model --data curv_data --curvature ggn",
                "GGN spectral",
                "ggn_eigen",
            ),
            (
                "hessian",
                "%curv_spectrum --model model --data curv_data --num-iters",
                "Hessian spectral",
                "hess_eigen",
            ),
        ):
            out = nb.output(nb.cell_index(cell))
            nb.screenshot(out, artifacts / f"example_spectrum_{name}.png")
            fig = nb.figure(out, title)
            assert max(line_points(fig)) >= 300 and not any(ln["nan"] for ln in fig["lines"])
            top = tables(out)["Top eigenvalues"]
            kernel = kernel_values(
                nb, f"print(*(f'{{v:.6g}}' for v in {var}.eigenvalues.tolist()))"
            )
            assert [row[1] for row in top] == kernel

    def test_explorer(self, example, artifacts):
        nb = example
        out = nb.output(nb.cell_index("%curv_landscape"))
        nb.screenshot(out, artifacts / "example_explorer.png")
        one = nb.figure(out, "1D curves")
        assert line_points(one) == [21, 21], one  # two directions, 21 points each
        two = nb.figure(out, "2D map of train_loss: 21x21")
        assert two["heat"] and two["heat"][0] > 1000, two  # the heat map image is drawn
        pixels = out.locator(".jc-landscape-canvas canvas").first.evaluate(JS_CANVAS_PIXELS)
        assert pixels["coloured"] > 0.4 * pixels["total"], pixels
        # the next cell moved the explorer from Python: the page follows
        view = explorer_view(nb, out)
        coords = json.loads(nb.kernel_exec("print(explorer.coords.tolist())"))
        assert coords == [0.5, -0.25], (
            f"after explorer.move_to([0.5, -0.25]) the kernel is at {coords}; the page shows "
            f"{[s['value'] for s in view['sliders']]}"
        )
        assert [s["value"] for s in view["sliders"]] == ["0.500", "-0.250"], view

    def test_no_console_errors(self, example):
        no_console_errors(example)

    def test_bqplot_axis_guard_is_installed(self, example):
        # static/bqplot_guard.js: without it a push that lands while a figure renders throws
        guarded = example.page.evaluate("() => document.body.dataset.jcBqplotAxisGuard")
        why = [m for m in example.console_log if "bqplot axis guard" in m]
        assert guarded == "Axis,ColorAxis", (guarded, why)
        # every method of the race is still there to guard in this bqplot (an upgrade that
        # renames one shows here)
        methods = json.loads(
            example.page.evaluate("() => document.body.dataset.jcBqplotAxisGuardMethods")
        )
        assert methods["Axis"] == [
            "redraw_axisline",
            "update_scales",
            "set_tick_values",
            "tickformat_changed",
            "update_grid_lines",
        ], methods


# --------------------------------------------------------------------------------------
# progress_checks.ipynb: the progress line, Cancel, and the saved notebook reopened

PROGRESS_LINE = re.compile(
    r"GGN spectrum of model: density: step (\d+)/(\d+), (\d+) products, [\d.]+ s"
    r"(?:, about [\d.]+ s left)?"
)

JS_PROGRESS = """(root) => {
  const texts = Array.from(root.querySelectorAll('.widget-html-content'))
      .map(e => e.textContent.trim());
  const line = texts.find(t => t.startsWith('GGN spectrum of model')) || '';
  let partial = null;
  for (const e of root.querySelectorAll('.widget-html-content')) {
    if (!/Spectral density so far/.test(e.textContent)) continue;
    for (const tr of e.querySelectorAll('tbody tr')) {
      const td = tr.querySelectorAll('td');
      if (td.length > 1 && td[0].textContent.trim() === 'Lanczos steps') partial = td[1].textContent.trim();
    }
  }
  const button = Array.from(root.querySelectorAll('button'))
      .find(b => /Cancel/.test(b.textContent));
  return {line, partial, button: button ? button.textContent.trim() : null};
}"""


def progress_view(out) -> dict:
    """The progress line (parsed), the partial density's step count and the Cancel button."""
    view = out.evaluate(JS_PROGRESS)
    m = PROGRESS_LINE.search(view["line"])
    view["step"] = int(m.group(1)) if m else None
    view["products"] = int(m.group(3)) if m else None
    return view


def _at_gate(nb: NotebookPage, out, i: int, after: int = 0) -> dict:
    """Once the kernel waits at a gate: the page's line, drawn up to the last event sent
    (``interval = 0``: every event is drawn), past ``after`` products and agreeing with the
    partial density's step count."""

    def ready() -> dict | None:
        v = progress_view(out)
        settled = (
            v["products"] is not None
            and v["products"] > after
            and v["partial"] == f"{v['step']} of {PROGRESS_LINE.search(v['line']).group(2)}"
        )
        return {**v, "prompt": nb.prompt(i)} if settled else None

    return wait_for(ready, UI_TIMEOUT, f"the progress line to pass {after} products", 0.5)


def _watch_progress(nb: NotebookPage, lab, artifacts: Path) -> dict:
    """Read the live spectrum's progress line at its two pauses, then press Cancel during
    the second spectrum while its model waits, and release it."""
    live = nb.cell_index("# live progress")
    cancel = nb.cell_index("# cancel")
    rec: dict = {"error": None}

    def gate(name: str) -> bool:
        if nb.error_outputs():
            raise AssertionError(f"a cell failed before the pause {name}: {nb.error_outputs()}")
        return lab.gate_reached(name)

    try:
        out = nb.output(live)
        wait_for(lambda: gate("live_first"), RUN_TIMEOUT, "the spectrum to pause (first)")
        rec["first"] = _at_gate(nb, out, live)
        nb.screenshot(out, artifacts / "progress_line_first.png")
        lab.release_gate("live_first")
        wait_for(lambda: gate("live_second"), RUN_TIMEOUT, "the spectrum to pause (second)")
        rec["second"] = _at_gate(nb, out, live, after=rec["first"]["products"])
        nb.screenshot(out, artifacts / "progress_line_second.png")
        lab.release_gate("live_second")

        out = nb.output(cancel)
        wait_for(lambda: gate("cancel_here"), RUN_TIMEOUT, "the second spectrum to pause")
        rec["at_cancel"] = _at_gate(nb, out, cancel)
        out.locator("button").filter(has_text="Cancel").first.click()
        # the kernel handled the click while the cell runs (a comm subshell): it says so
        wait_for(
            lambda: (progress_view(out)["button"] or "").startswith("Cancelling"),
            UI_TIMEOUT,
            "the kernel to answer the Cancel click while the cell runs",
            0.5,
        )
        rec["cancel_prompt"] = nb.prompt(cancel)
        lab.release_gate("cancel_here")
    except (AssertionError, TimeoutError) as exc:
        rec["error"] = str(exc)
        nb.screenshot(None, artifacts / "progress_FAILED.png")
    finally:
        lab.release_all_gates(PROGRESS_GATES)
    return rec


@pytest.fixture(scope="class")
def progress(lab, browser, artifacts):
    """progress_checks.ipynb opened and run; yields (page, what the progress watch saw)."""
    with run_dedicated(
        lab,
        browser,
        artifacts,
        "progress_checks.ipynb",
        "progress",
        _watch_progress,
        PROGRESS_GATES,
    ) as run:
        yield run


def _watch_error(nb: NotebookPage, rec: dict) -> str:
    return f"{rec['error']}\nconsole errors: " + "; ".join(
        dict.fromkeys(e[:160] for e in nb.console_errors)
    )


class TestProgressNotebook:
    def test_cells_run_without_error_output(self, progress):
        nb, _ = progress
        assert nb.error_outputs() == []
        assert nb.widget_problems() == []

    def test_progress_line_advances_while_the_spectrum_runs(self, progress):
        nb, rec = progress
        assert rec["error"] is None, _watch_error(nb, rec)
        first, second = rec["first"], rec["second"]
        assert first["prompt"] == second["prompt"] == "[*]:", (first, second)  # still running
        assert 0 < first["products"] < second["products"], (first, second)
        assert 0 < first["step"] < second["step"] <= 40, (first, second)
        assert "s left" in second["line"], second  # an ETA once steps are timed
        assert first["button"] == second["button"] == "Cancel", (first, second)

    def test_cancel_stops_at_the_next_product_and_keeps_the_partial_result(
        self, progress, artifacts
    ):
        nb, rec = progress
        assert rec["error"] is None, _watch_error(nb, rec)
        assert rec["cancel_prompt"] == "[*]:", rec  # pressed while the cell ran
        out = nb.output(nb.cell_index("# cancel"))
        nb.screenshot(out, artifacts / "progress_cancelled.png")
        status = progress_view(out)["line"]
        assert "cancelled" in status and "partial result" in status, status
        line = nb.output(nb.cell_index("workers = ")).inner_text().split()
        assert line[0] == "done:", line
        full, cancelled, steps, workers = int(line[1]), line[2], int(line[3]), line[4:]
        assert full == 40 and cancelled == "True", line  # the first ran to the end
        # the model waited inside product k + 1 when Cancel was pressed: that product ends,
        # and the next one is not made
        k = rec["at_cancel"]["step"]
        assert k <= steps <= k + 1 < 200, (k, steps)
        assert workers == ["[]"], f"worker threads left running: {workers}"
        # the partial result is drawn and its summary is the kernel's
        fig = nb.figure(out, "GGN spectral density")
        assert max(line_points(fig)) >= 300 and not any(ln["nan"] for ln in fig["lines"])
        summary = dict(row[:2] for row in tables(out)["Summary"])
        assert summary["Lanczos steps"] == str(steps), summary

    def test_no_console_errors(self, progress):
        nb, _ = progress
        no_console_errors(nb)

    def test_saved_notebook_reopens_with_its_panels(self, progress, lab, browser, artifacts):
        import nbformat

        nb, _ = progress
        cells = {prefix: nb.cell_index(prefix) for prefix in ("# live progress", "# cancel")}
        nb.save()
        saved = nbformat.read(lab.root / nb.notebook, as_version=4)
        state = saved.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
        for prefix, i in cells.items():
            (view,) = [
                o["data"]["application/vnd.jupyter.widget-view+json"]
                for o in saved.cells[i].outputs
                if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
            ]
            assert view["model_id"] in state, f"{prefix}: the panel is not in the saved state"
            assert any("image/png" in o.get("data", {}) for o in saved.cells[i].outputs), prefix
        nb.close()  # the kernel goes too: the reopened page can only use the saved state
        lab.shutdown_kernels()  # the page's shutdown request is fire and forget: make sure
        wait_for(lambda: lab.api("GET", "/api/kernels") == [], UI_TIMEOUT, "the kernel to stop")

        again = NotebookPage(browser, lab, nb.notebook, workspace="reopened")
        try:
            again.open()
            for prefix, status in (("# live progress", "done"), ("# cancel", "cancelled")):
                out = again.output(again.cell_index(prefix))

                def drawn(out=out) -> dict | None:
                    figs = [f for f in again.figures(out) if f["title"].startswith("GGN")]
                    ok = figs and max(line_points(figs[0]), default=0) >= 300
                    return figs[0] if ok else None

                fig = wait_for(drawn, UI_TIMEOUT, f"the saved {prefix!r} panel to render")
                assert not any(ln["nan"] for ln in fig["lines"]), fig
                assert status in progress_view(out)["line"], progress_view(out)
                again.screenshot(out, artifacts / f"reopened_{prefix[2:].replace(' ', '_')}.png")
            assert again.error_outputs() == [] and again.widget_problems() == []
            # nothing ran: the views come from the saved state, not from a new computation
            assert again.kernel_exec("print('dens_live' in globals())").strip() == "False"
            no_console_errors(again)
        finally:
            again.close()


# --------------------------------------------------------------------------------------
# the README's notebook section, as a user types it


def readme_notebook(path: Path) -> Path:
    """The README's "In a notebook" code blocks as a notebook: a cell magic block is one cell,
    line magics one cell each (as a user runs them)."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## In a notebook") : readme.index("## Python API")]
    cells = []
    for block in re.findall(r"```python\n(.*?)```", section, re.S):
        if block.startswith("%%"):
            cells.append(block.strip())
        else:
            cells += [line for line in block.splitlines() if line.strip()]
    assert len(cells) >= 6, f"the README's notebook section lost its cells: {cells}"
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells]), path)
    return path


@pytest.fixture(scope="class")
def readme(lab, browser, artifacts, tmp_path_factory):
    source = readme_notebook(tmp_path_factory.mktemp("readme") / "readme.ipynb")
    with run_to_the_end(lab, browser, artifacts, source, "readme") as nb:
        yield nb


class TestReadmeNotebookSection:
    """Every line of the README's "In a notebook" section runs in JupyterLab and shows its panel."""

    def test_every_line_runs_without_errors(self, readme):
        assert readme.error_outputs() == []
        assert readme.widget_problems() == []
        cells = [c for c in readme.state()["cells"] if c["type"] == "code"]
        assert cells and all(c["count"] is not None for c in cells)

    def test_each_magic_shows_its_panel(self, readme, artifacts):
        nb = readme
        for start, title in (
            ("%%curv_train", "Loss"),
            ("%curv_spectrum --model run.model --data digits --num-iters", "Hessian spectral"),
            ("%curv_spectrum --model run.model --data digits --curvature ggn", "GGN spectral"),
            ("%curv_landscape", "1D curves"),
        ):
            out = nb.output(nb.cell_index(start))
            titles = [f["title"] for f in nb.figures(out)]
            assert any(t.startswith(title) for t in titles), (start, titles)
            assert not any(ln["nan"] for f in nb.figures(out) for ln in f["lines"]), start
        stats = nb.output(nb.cell_index("%curv_stats"))
        assert tables(stats), "the statistics panel shows no table"
        spectrum = nb.output(
            nb.cell_index("%curv_spectrum --model run.model --data digits --num-iters")
        )
        assert len(tables(spectrum)["Top eigenvalues"]) == 5  # --top-k 5
        assert kernel_values(nb, "print(spec.num_iters, spec.num_probes)") == ["80", "4"]

    def test_no_console_errors(self, readme):
        no_console_errors(readme)
