"""Saved notebooks keep their figures: each finished panel adds a static fallback to its output.

Without a kernel: the mime bundle a panel publishes holds the widget view *and* an
``image/png`` (or, for a panel with no figure, ``text/html``), drawn from the same data the
widgets show; failures of the fallback are shown in the panel, never raised. The spectrum
legend names every entry bqplot draws (no default ``C2``). The end-to-end check (a notebook
run by nbclient, exported by nbconvert) is in ``tests/test_notebook_magics.py``.
"""

from __future__ import annotations

import base64
import re
import struct

import numpy as np
import pytest
import torch
from ipywidgets.widgets.widget import _instances
from torch import nn

from jupyter_curvature import tasks
from jupyter_curvature.core.progress import ProgressEvent
from jupyter_curvature.plotting import plot_spectrum
from jupyter_curvature.widgets import ProgressPanel, SpectrumPanel, StatsPanel
from jupyter_curvature.widgets._base import STATIC_DPI

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def png_size(text: str) -> tuple[int, int]:
    """Width and height from a base64 PNG's IHDR chunk (and proof that it is a PNG)."""
    raw = base64.b64decode(text)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR", raw[:16]
    return struct.unpack(">II", raw[16:24])


class FakeHandle:
    """Stands for IPython's ``DisplayHandle``: records what ``update`` would send."""

    def __init__(self) -> None:
        self.bundles: list[dict] = []

    def update(self, obj) -> None:
        self.bundles.append(obj._repr_mimebundle_())


@pytest.fixture
def leak_check():
    before = len(_instances)
    yield
    assert len(_instances) == before, f"{len(_instances) - before} widgets left open"


@pytest.fixture(scope="module")
def spectrum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=g)
    return tasks.spectrum(model, [(x, y)], num_iters=20, num_probes=2, top_k=2, seed=0)


# ----------------------------------------------------------------------------- the legend
def legend_entries(mark) -> list[str]:
    """The legend texts bqplot's front end draws for ``mark`` (bqplot 0.13's rules):
    ``Lines``: one entry per line, a missing label becoming ``"C<i+1>"``; ``Scatter``: one."""
    if not mark.display_legend:
        return []
    labels = list(mark.labels)
    if type(mark).__name__ == "Scatter":
        return labels[:1]
    y = np.asarray(mark.y)
    lines = y.shape[0] if y.ndim == 2 else 1
    return (labels + [f"C{i + 1}" for i in range(len(labels), lines)])[:lines]


def test_spectrum_legend_names_every_entry_and_no_default_label(spectrum, leak_check):
    panel = SpectrumPanel(spectrum)
    try:
        shown = [text for mark in panel.figure.marks for text in legend_entries(mark)]
        assert shown == ["Ritz values (weight, right axis)", "± 2 s.e. over probes", "density"]
        # the band is one closed outline: the lower bound out, the upper bound back, and the
        # density (checked against a direct Gaussian sum in test_widgets) lies inside it
        curve = panel.density.density(panel.grid, panel.sigma)
        n = panel.grid.size
        np.testing.assert_array_equal(panel.band.x, np.concatenate([panel.grid, panel.grid[::-1]]))
        lower, upper = np.asarray(panel.band.y[:n]), np.asarray(panel.band.y[n:])[::-1]
        np.testing.assert_array_equal(lower, curve.lower)
        np.testing.assert_array_equal(upper, curve.upper)
        mean = np.asarray(panel.density_line.y)
        assert (lower <= mean + 1e-12).all() and (mean <= upper + 1e-12).all()
        panel.scale_toggle.value = "log"  # floored for the log axis, still one line
        assert np.asarray(panel.band.y).shape == (2 * n,) and panel.band.fill == "inside"
    finally:
        panel.close()


# ----------------------------------------------------------------------------- fallbacks
def test_finished_panels_carry_a_png_of_their_matplotlib_figure(spectrum, leak_check):
    panel = SpectrumPanel(spectrum)
    try:
        bundle = panel._repr_mimebundle_()
        assert bundle[WIDGET_VIEW]["model_id"] == panel.root.model_id
        # the image is the matplotlib figure of the same panel, at STATIC_DPI
        fig = plot_spectrum(panel.density, eigen=panel.eigen, sigma=panel.sigma)
        w, h = fig.get_size_inches() * STATIC_DPI
        assert png_size(bundle["image/png"]) == (round(w), round(h))
    finally:
        panel.close()
    stats = tasks.statistics(
        nn.Sequential(nn.Linear(4, 3)).double(),
        [(torch.randn(8, 4, dtype=torch.float64), torch.arange(8) % 3)],
        include=["norms"],
    )
    panel = StatsPanel(stats)
    try:
        assert png_size(panel._repr_mimebundle_()["image/png"])[0] > 100
    finally:
        panel.close()


def test_progress_panel_publishes_the_finished_figure_into_its_output(spectrum, leak_check):
    panel = ProgressPanel("Hessian spectrum of m")
    try:
        assert "image/png" not in panel._repr_mimebundle_()  # running: the widget only
        assert panel.publish_static() is False  # not shown through display(): nothing to update
        panel.display_handle = handle = FakeHandle()
        panel.finish(SpectrumPanel(spectrum))
        assert panel.publish_static() is True
        (bundle,) = handle.bundles
        assert bundle[WIDGET_VIEW]["model_id"] == panel.root.model_id
        assert png_size(bundle["image/png"]) == png_size(
            panel.result_panel._repr_mimebundle_()["image/png"]
        )
    finally:
        panel.close()
    assert panel.publish_static() is False  # closed: nothing is sent
    assert len(handle.bundles) == 1


def test_a_panel_without_figure_falls_back_to_its_text(leak_check):
    panel = ProgressPanel("Hessian spectrum of m", interval=0)
    try:
        panel.display_handle = handle = FakeHandle()
        event = ProgressEvent(phase="density", step=3, total=80, products=3, elapsed=0.5, eta=None)
        panel.update(event)
        panel.finish(message="cancelled before the first product")
        assert panel.publish_static() is True
        text = handle.bundles[0]["text/html"]
        assert "cancelled before the first product" in text and "image/png" not in handle.bundles[0]
    finally:
        panel.close()


def test_a_figure_that_fails_is_shown_in_the_panel_not_raised(spectrum, leak_check, monkeypatch):
    panel = ProgressPanel("Hessian spectrum of m")
    try:
        panel.display_handle = handle = FakeHandle()
        panel.finish(SpectrumPanel(spectrum))

        def broken(**kw):
            raise RuntimeError("no figure today")

        monkeypatch.setattr(panel.result_panel, "to_matplotlib", broken)
        assert panel.publish_static() is False and handle.bundles == []
        assert panel.error_count == 1 and "no figure today" in str(panel.last_error)
    finally:
        panel.close()


def test_pyplot_figures_of_the_fallback_are_closed():
    # the inline backend shows every open pyplot figure at the end of a cell: a fallback
    # drawn through pyplot must not appear a second time as an extra output
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jupyter_curvature.widgets._base import png_base64

    before = plt.get_fignums()
    fig = plt.figure(figsize=(2, 1))
    assert re.fullmatch(r"[A-Za-z0-9+/=]+", png_base64(fig))
    assert plt.get_fignums() == before


# ----------------------------------------------------------------------------- Cancel
KERNEL_SETUP = """
import threading, time
from jupyter_curvature.core.progress import Worker
from jupyter_curvature.widgets import ProgressPanel

def task(progress=None, cancel=None):
    while not cancel.is_set():  # a computation that checks before each 'product'
        time.sleep(0.01)
    return "stopped"

panel = ProgressPanel("test")
worker = panel.attach(Worker(task))
print(panel.cancel_button.model_id)
"""
KERNEL_RUN = """
worker.start()
print("started", flush=True)
ended = worker.done.wait(120)
print("ended", ended, worker.token.cancelled, worker.result)
"""


def test_cancel_click_is_handled_while_the_cell_runs():
    """A click sent on a subshell (as JupyterLab >= 4.4 sends comm messages) stops the worker
    while its cell still runs; without the routing of ``receive_while_cells_run`` ipykernel 7
    queued it behind the cell."""
    manager = pytest.importorskip("jupyter_client.manager")
    km, kc = manager.start_new_kernel(kernel_name="python3")

    def run(code: str, until: str | None = None) -> str:
        kc.execute(code)
        text = ""
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["msg_type"] == "stream":
                text += msg["content"]["text"]
                if until and until in text:
                    return text
            if msg["msg_type"] == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            idle = msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
            if idle and msg["parent_header"].get("msg_type") == "execute_request":
                return text

    try:
        kc.kernel_info()
        info = kc.get_shell_msg(timeout=60)["content"]
        if "kernel subshells" not in info.get("supported_features", []):
            pytest.skip("this ipykernel has no subshells: only a kernel interrupt cancels")
        button = run(KERNEL_SETUP).strip()
        kc.control_channel.send(kc.session.msg("create_subshell_request", {}))
        subshell = kc.control_channel.get_msg(timeout=60)["content"]["subshell_id"]
        assert "started" in run(KERNEL_RUN, until="started")  # the cell now waits
        click = kc.session.msg(
            "comm_msg",
            {"comm_id": button, "data": {"method": "custom", "content": {"event": "click"}}},
        )
        click["header"]["subshell_id"] = subshell
        kc.shell_channel.send(click)
        text = ""
        while "ended" not in text:  # the rest of the same cell's output
            msg = kc.get_iopub_msg(timeout=120)
            if msg["msg_type"] == "stream":
                text += msg["content"]["text"]
        assert text.split()[-3:] == ["True", "True", "stopped"], text
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
