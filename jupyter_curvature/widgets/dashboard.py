"""The live training dashboard of ``%%curv_train``: a :class:`TrainCallback` drawn with bqplot.

Layout (top to bottom): a status line and a progress bar; four figures (loss and accuracy
against the step, train and test; the latest spectral density of the Hessian or GGN with its
band across probes; the largest Ritz values against the step with the stability threshold
``2 / lr``); a statistics table and an event log; the error area of :class:`Panel`.

Updates are throttled by time (:class:`Throttle`, 0.25 s by default: at most 4 pushes a
second) and each mark's attributes change inside ``mark.hold_sync()``, so one message carries
``x`` and ``y`` (``fig.hold_sync()`` does not batch a mark's traits: its children's
messages go out one by one). Histories are downsampled to at most ``max_points`` points
before they are sent, so an update costs the same at step 100 and at step 100 000.
"""

from __future__ import annotations

import html
import time
from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np

from ._base import Panel, Throttle, html_table

__all__ = ["TrainingDashboard", "downsample"]

TRAIN_COLOR = "#1f77b4"
TEST_COLOR = "#d62728"
TOP_COLORS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
]


def downsample(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point (always keeping the last) so that at most ``max_points`` remain."""
    n = len(x)
    if n <= max_points:
        return x, y
    idx = np.unique(np.r_[np.linspace(0, n - 1, max_points - 1).astype(int), n - 1])
    return x[idx], y[..., idx] if y.ndim > 1 else y[idx]


def _figure(title: str, marks: list, axes: list, **kw: Any) -> bq.Figure:
    return bq.Figure(
        marks=marks,
        axes=axes,
        title=title,
        fig_margin={"top": 40, "bottom": 45, "left": 60, "right": 20},
        layout=W.Layout(width="100%", height="280px", min_width="260px"),
        legend_location="top-right",
        **kw,
    )


class TrainingDashboard(Panel):
    """Live view of a training run; pass it as a callback to :func:`jupyter_curvature.tasks.train`.

    It reads the :class:`~jupyter_curvature.tasks.TrainHistory` of the :class:`TrainState` it is
    handed; ``tasks.train`` runs the engine's ``Trainer`` and keeps that history through a
    trainer callback, so the dashboard never touches the trainer itself.

    Args:
        title: shown on the status line.
        interval: minimum seconds between two pushes to the front end (0.25: 4 per second).
        max_points: most points per curve sent in one update.
        progress: show the progress bar (inside the panel).

    Attributes (for tests and users): ``loss_fig``, ``acc_fig``, ``density_fig``, ``top_fig``
    (bqplot Figures); ``loss_lines`` / ``acc_lines`` (train and test ``Lines``),
    ``density_line``, ``density_band``, ``top_lines``, ``threshold_line``; ``progress``
    (``IntProgress``); ``status`` (HTML); ``stats_html``; ``events_html``; ``throttle``.
    """

    def __init__(
        self,
        title: str = "Training",
        *,
        interval: float = 0.25,
        max_points: int = 500,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.title = title
        self.max_points = int(max_points)
        self.throttle = Throttle(interval)
        self.pushes = 0
        self._state: Any = None
        self._t0 = time.perf_counter()
        self._dirty = {"curves": False, "spectrum": False, "stats": False, "events": False}

        self.status = W.HTML(f"<b>{html.escape(title)}</b>: waiting")
        self.progress = W.IntProgress(
            value=0, min=0, max=1, description="step", layout=W.Layout(width="50%")
        )
        self.progress.layout.display = None if progress else "none"
        self.progress_text = W.Label("")

        # loss and accuracy ------------------------------------------------------------
        xs = bq.LinearScale()
        ys = bq.LinearScale()
        self.loss_lines = bq.Lines(
            x=np.zeros(0),
            y=np.zeros(0),
            scales={"x": xs, "y": ys},
            colors=[TRAIN_COLOR],
            labels=["train (batch)"],
            display_legend=True,
        )
        self.loss_test_line = bq.Lines(
            x=np.zeros(0),
            y=np.zeros(0),
            scales={"x": xs, "y": ys},
            colors=[TEST_COLOR],
            labels=["test"],
            display_legend=True,
        )
        # the test points also get markers (they are few; the train curve is dense)
        self.loss_test = bq.Scatter(
            x=np.zeros(0),
            y=np.zeros(0),
            scales={"x": xs, "y": ys},
            colors=[TEST_COLOR],
            default_size=24,
        )
        self.loss_fig = _figure(
            "Loss",
            [self.loss_lines, self.loss_test_line, self.loss_test],
            [
                bq.Axis(scale=xs, label="step"),
                bq.Axis(scale=ys, side="left", label="loss", tick_format=".3g"),
            ],
        )
        axs = bq.LinearScale()
        ays = bq.LinearScale(min=0.0, max=1.0)
        self.acc_lines = bq.Lines(
            x=np.zeros(0),
            y=np.zeros(0),
            scales={"x": axs, "y": ays},
            colors=[TRAIN_COLOR],
            labels=["train (batch)"],
            display_legend=True,
        )
        self.acc_test_line = bq.Lines(
            x=np.zeros(0),
            y=np.zeros(0),
            scales={"x": axs, "y": ays},
            colors=[TEST_COLOR],
            labels=["test"],
            display_legend=True,
        )
        self.acc_test = bq.Scatter(
            x=np.zeros(0),
            y=np.zeros(0),
            scales={"x": axs, "y": ays},
            colors=[TEST_COLOR],
            default_size=24,
        )
        self.acc_fig = _figure(
            "Top-1 accuracy",
            [self.acc_lines, self.acc_test_line, self.acc_test],
            [
                bq.Axis(scale=axs, label="step"),
                bq.Axis(scale=ays, side="left", label="accuracy", tick_format=".0%"),
            ],
        )

        # spectral density ---------------------------------------------------------------
        dxs = bq.LinearScale()
        dys = bq.LinearScale(min=0.0)
        self.density_band = bq.Lines(
            x=np.zeros(0),
            y=np.zeros((2, 0)),
            scales={"x": dxs, "y": dys},
            fill="between",
            colors=["#9ecae1"],
            fill_colors=["#9ecae1"],
            fill_opacities=[0.45],
            stroke_width=0,
            labels=["mean ± 2 s.e. over probes"],
        )
        self.density_line = bq.Lines(
            x=np.zeros(0),
            y=np.zeros(0),
            scales={"x": dxs, "y": dys},
            colors=[TRAIN_COLOR],
            labels=["density"],
        )
        self.density_fig = _figure(
            "Spectral density (no check yet)",
            [self.density_band, self.density_line],
            [
                bq.Axis(scale=dxs, label="eigenvalue"),
                bq.Axis(scale=dys, side="left", label="density", tick_format=".2g"),
            ],
        )

        # top eigenvalues against 2 / lr -------------------------------------------------
        txs = bq.LinearScale()
        tys = bq.LinearScale()
        self.top_lines = bq.Lines(
            x=np.zeros(0),
            y=np.zeros((1, 0)),
            scales={"x": txs, "y": tys},
            colors=TOP_COLORS,
            marker="circle",
            marker_size=16,
            display_legend=True,
            labels=["λ1"],
        )
        self.threshold_line = bq.Lines(
            x=np.zeros(0),
            y=np.zeros(0),
            scales={"x": txs, "y": tys},
            colors=["#555555"],
            line_style="dashed",
            labels=["2 / lr"],
            display_legend=True,
        )
        self.top_fig = _figure(
            "Largest eigenvalues",
            [self.top_lines, self.threshold_line],
            [
                bq.Axis(scale=txs, label="step"),
                bq.Axis(scale=tys, side="left", label="eigenvalue", tick_format=".3g"),
            ],
        )

        self.stats_html = W.HTML("")
        self.events_html = W.HTML("")
        grid = W.GridBox(
            [self.loss_fig, self.acc_fig, self.density_fig, self.top_fig],
            layout=W.Layout(grid_template_columns="repeat(2, minmax(260px, 1fr))", width="100%"),
        )
        self._set_root(
            [
                self.status,
                W.HBox([self.progress, self.progress_text]),
                grid,
                W.HBox([self.stats_html, self.events_html], layout=W.Layout(grid_gap="24px")),
            ],
            width="100%",
        )

    # ------------------------------------------------------------------ callback hooks
    def on_train_begin(self, state: Any) -> None:
        self._state = state
        self._t0 = time.perf_counter()
        self.progress.max = max(int(state.total_steps), 1)
        self.progress.value = 0
        self.status.value = f"<b>{html.escape(self.title)}</b>: running ({state.total_steps} steps)"
        self.top_fig.title = f"Largest {state.history.curvature} eigenvalues"

    def on_step_end(self, state: Any) -> None:
        self._state = state
        self._dirty["curves"] = True
        self._maybe_push()

    def on_evaluate(self, state: Any) -> None:
        self._dirty["curves"] = True
        self._dirty["stats"] = True
        self._maybe_push()

    def on_spectrum(self, state: Any) -> None:
        self._state = state
        self._dirty["spectrum"] = True
        self._dirty["stats"] = True
        self._maybe_push(force=True)  # rare and expensive to compute: always show at once

    def on_event(self, state: Any, text: str) -> None:
        self._dirty["events"] = True

    def on_train_end(self, state: Any) -> None:
        self._state = state
        self._dirty = dict.fromkeys(self._dirty, True)
        self.flush()
        hist = state.history
        word = {
            "finished": "finished",
            "interrupted": f"interrupted at step {hist.steps_done}",
            "failed": f"failed at step {hist.steps_done + 1}",
        }.get(hist.status, hist.status)
        color = {"finished": "green", "interrupted": "#b8860b", "failed": "#c00"}.get(
            hist.status, "black"
        )
        self.status.value = (
            f"<b>{html.escape(self.title)}</b>: <span style='color:{color}'>{word}</span> "
            f"after {hist.seconds:.1f} s ({hist.curvature_seconds:.1f} s in curvature and evaluation)"
        )
        self.progress.bar_style = {
            "finished": "success",
            "interrupted": "warning",
            "failed": "danger",
        }.get(hist.status, "")

    # ------------------------------------------------------------------ drawing
    def _maybe_push(self, force: bool = False) -> None:
        if self.closed:
            return
        if self.throttle.ready(force):
            self.flush()

    def flush(self) -> None:
        """Push everything that changed since the last push (ignores the throttle)."""
        if self.closed or self._state is None:
            return
        try:
            self._push()
        except Exception as exc:  # a drawing bug must not stop the training: show it
            self.show_error(exc, "dashboard update")

    def _push(self) -> None:
        state = self._state
        hist = state.history
        self.pushes += 1
        self.progress.value = min(hist.steps_done, self.progress.max)
        elapsed = time.perf_counter() - self._t0
        rate = hist.steps_done / elapsed if elapsed > 0 else 0.0
        last = f"loss {hist.loss[-1]:.4g}" if hist.loss else ""
        self.progress_text.value = (
            f"{hist.steps_done}/{state.total_steps}  {last}  {rate:.1f} steps/s"
        )
        if self._dirty["curves"]:
            self._draw_curves(hist)
        if self._dirty["spectrum"] and hist.spectra:
            self._draw_spectrum(hist)
        if self._dirty["stats"]:
            self._draw_stats(hist)
        if self._dirty["events"]:
            rows = [[s, t] for s, t in hist.events[-8:]]
            self.events_html.value = (
                html_table(["step", "event"], rows, title="Events") if rows else ""
            )
        self._dirty = dict.fromkeys(self._dirty, False)

    def _draw_curves(self, hist: Any) -> None:
        steps = np.asarray(hist.steps, dtype=float)
        ev = np.asarray(hist.eval_steps, dtype=float)
        for lines, tline, scatter, train, test in (
            (self.loss_lines, self.loss_test_line, self.loss_test, hist.loss, hist.test_loss),
            (self.acc_lines, self.acc_test_line, self.acc_test, hist.accuracy, hist.test_accuracy),
        ):
            sx, sy = downsample(steps, np.asarray(train, dtype=float), self.max_points)
            tx, ty = downsample(ev, np.asarray(test, dtype=float), self.max_points)
            with lines.hold_sync():
                lines.x, lines.y = sx, sy
            with tline.hold_sync():
                tline.x, tline.y = tx, ty
            with scatter.hold_sync():
                scatter.x, scatter.y = tx, ty

    def _draw_spectrum(self, hist: Any) -> None:
        dens = hist.spectra[-1]
        curve = dens.density()
        with self.density_band.hold_sync():
            self.density_band.x = curve.grid
            self.density_band.y = np.vstack([curve.lower, curve.upper])
        with self.density_line.hold_sync():
            self.density_line.x = curve.grid
            self.density_line.y = curve.density
        self.density_fig.title = f"{hist.curvature.upper() if hist.curvature == 'ggn' else 'Hessian'} spectral density at step {hist.spectrum_steps[-1]}"
        steps = np.asarray(hist.spectrum_steps, dtype=float)
        k = max(len(t) for t in hist.top_eigenvalues)
        top = np.full((k, len(steps)), np.nan)
        for j, vals in enumerate(hist.top_eigenvalues):
            top[: len(vals), j] = vals
        with self.top_lines.hold_sync():
            self.top_lines.x = steps
            self.top_lines.y = top
            self.top_lines.labels = [f"λ{i + 1}" for i in range(k)]
        lrs = np.asarray(hist.lr, dtype=float)
        if lrs.size and np.isfinite(lrs).all() and (lrs > 0).all():
            # 2/lr at each check (the learning rate in force at that step)
            idx = np.clip(steps.astype(int) - 1, 0, len(lrs) - 1)
            thr = 2.0 / lrs[idx]
            with self.threshold_line.hold_sync():
                self.threshold_line.x = steps
                self.threshold_line.y = thr

    def _draw_stats(self, hist: Any) -> None:
        rows: list[list[Any]] = []
        if hist.loss:
            rows.append(["train loss (last batch)", hist.loss[-1]])
        if hist.test_loss:
            rows.append([f"test loss (step {hist.eval_steps[-1]})", hist.test_loss[-1]])
            rows.append(["test accuracy", hist.test_accuracy[-1]])
        if hist.spectra:
            st = hist.spectra[-1].stats
            rows += [
                [f"λ max ({hist.curvature}, step {hist.spectrum_steps[-1]})", st.largest],
                ["λ min", st.smallest],
                ["trace", st.trace],
                ["negative mass", st.negative_mass],
            ]
            if hist.lr and hist.lr[-1] > 0:
                rows.append(["2 / lr", 2.0 / hist.lr[-1]])
        self.stats_html.value = (
            html_table(["quantity", "value"], rows, title="Statistics") if rows else ""
        )

    # ------------------------------------------------------------------ static version
    def to_matplotlib(self, **kw: Any) -> Any:
        """The same four views as a matplotlib figure (for papers, or front ends without widgets)."""
        from .static_plots import plot_training

        if self._state is None:
            raise ValueError("the dashboard has seen no training yet")
        return plot_training(self._state.history, **kw)
