"""The live training dashboard of ``%%curv_train``: a Trainer callback drawn with bqplot.

:class:`TrainingDashboard` is an ordinary callback of
:class:`~jupyter_curvature.training.Trainer` (the hooks of
:class:`~jupyter_curvature.training.Callback`): pass it in ``callbacks=`` and it draws the
trainer's :class:`~jupyter_curvature.training.History` (steps, evaluations, curvature
records, events); the spectral densities come from the trainer's
:class:`~jupyter_curvature.training.CurvatureCallback` (its kept ``results``).

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

from ..plotting import curvature_label
from ..training import Callback
from ..training.view import training_view
from ._base import Panel, Throttle, html_table

__all__ = ["TrainingDashboard", "downsample", "training_view"]

TRAIN_COLOR = "#1f77b4"
TEST_COLOR = "#d62728"
#: the colours of each ``Trainer.status`` on the status line and the progress bar
_COLORS = {"completed": "green", "stopped": "#b8860b", "interrupted": "#b8860b", "failed": "#c00"}
_BAR = {"completed": "success", "stopped": "warning", "interrupted": "warning", "failed": "danger"}

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


class TrainingDashboard(Panel, Callback):
    """Live view of a training run: a :class:`~jupyter_curvature.training.Trainer` callback.

    >>> dash = TrainingDashboard()  # doctest: +SKIP
    >>> Trainer(model, opt, data, callbacks=[CurvatureCallback(every=50), dash]).fit()  # doctest: +SKIP

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
        self._trainer: Any = None
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

    # ------------------------------------------------------------------ other loops
    def feed(self, total_steps: int | None = None) -> Any:
        """A logger for a tracker (``jc.track``, the Lightning and Hugging Face callbacks)
        that draws its checks here: ``CurvatureCallback(..., loggers=[dash.feed()])``
        (:class:`~jupyter_curvature.widgets.feed.CheckFeed`)."""
        from .feed import CheckFeed

        return CheckFeed(self, total_steps)

    def refresh(self, source: Any, part: str, force: bool = False) -> None:
        """Draw ``source`` (a trainer, or a :class:`CheckFeed` with a ``view()``): ``part``
        is ``"curves"``, ``"spectrum"`` or ``"all"``, ``force`` ignores the throttle."""
        first = self._trainer is None
        self._trainer = source
        if first:
            self.progress.max = max(int(source.total_steps or 1), 1)
            self.progress.layout.display = None if source.total_steps else "none"
        parts = list(self._dirty) if part == "all" else [part, "stats"]
        self._dirty.update(dict.fromkeys(parts, True))
        self.status.value = (
            f"<b>{html.escape(self.title)}</b>: {source.status} at step {source.steps_done} "
            f"({len(source.records)} checks, {source.curvature_seconds:.1f} s in curvature)"
        )
        if source.status != "running":
            self.progress.bar_style = "success"
        self._maybe_push(force)

    def _view(self) -> Any:
        view = getattr(self._trainer, "view", None)
        return view() if callable(view) else training_view(self._trainer)

    # ------------------------------------------------------------------ Trainer hooks
    def on_train_begin(self, trainer: Any) -> None:
        self._trainer = trainer
        self._t0 = time.perf_counter()
        self.progress.max = max(int(trainer.total_steps), 1)
        self.progress.value = min(trainer.step, self.progress.max)
        self.progress.bar_style = ""
        self.status.value = (
            f"<b>{html.escape(self.title)}</b>: running ({trainer.total_steps} steps)"
        )
        kind = training_view(trainer).curvature
        self.top_fig.title = f"Largest {curvature_label(kind)} eigenvalues"

    def on_step_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        self._trainer = trainer
        self._dirty["curves"] = True
        self._maybe_push()

    def on_epoch_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        if logs.get("test_loss") is not None:
            self._dirty["curves"] = self._dirty["stats"] = True
            self._maybe_push()

    def on_curvature(self, trainer: Any, record: dict[str, Any]) -> None:
        self._trainer = trainer
        self._dirty["spectrum"] = self._dirty["stats"] = True
        self._maybe_push(force=True)  # rare and expensive to compute: always show at once

    def on_event(self, trainer: Any, event: dict[str, Any]) -> None:
        if event.get("event") == "evaluation":
            self._dirty["curves"] = self._dirty["stats"] = True
            self._maybe_push()
        else:
            self._dirty["events"] = True

    def on_train_end(self, trainer: Any, logs: dict[str, Any]) -> None:
        self._trainer = trainer
        self._dirty = dict.fromkeys(self._dirty, True)
        self.flush()
        status, step = logs.get("status", trainer.status), trainer.step
        word = {
            "completed": "finished",
            "stopped": f"stopped at step {step}",
            "interrupted": f"interrupted at step {step}",
            "failed": f"failed at step {step + 1}",
        }.get(status, status)
        color = _COLORS.get(status, "black")
        seconds = time.perf_counter() - self._t0
        self.status.value = (
            f"<b>{html.escape(self.title)}</b>: <span style='color:{color}'>{word}</span> "
            f"after {seconds:.1f} s ({trainer.history.curvature_seconds:.1f} s in curvature)"
        )
        self.progress.bar_style = _BAR.get(status, "")

    # ------------------------------------------------------------------ drawing
    def _maybe_push(self, force: bool = False) -> None:
        if self.closed:
            return
        if self.throttle.ready(force):
            self.flush()

    def flush(self) -> None:
        """Push everything that changed since the last push (ignores the throttle)."""
        if self.closed or self._trainer is None:
            return
        try:
            self._push()
        except Exception as exc:  # a drawing bug must not stop the training: show it
            self.show_error(exc, "dashboard update")

    def _push(self) -> None:
        view = self._view()
        self.pushes += 1
        self.progress.value = min(view.steps_done, self.progress.max)
        elapsed = time.perf_counter() - self._t0
        rate = view.steps_done / elapsed if elapsed > 0 else 0.0
        last = f"loss {view.loss[-1]:.4g}" if view.loss else ""
        self.progress_text.value = (
            f"{view.steps_done}/{view.total_steps}  {last}  {rate:.1f} steps/s"
        )
        if self._dirty["curves"]:
            self._draw_curves(view)
        if self._dirty["spectrum"] and view.top_steps:
            self._draw_spectrum(view)
        if self._dirty["stats"]:
            self._draw_stats(view)
        if self._dirty["events"]:
            rows = [[s, t] for s, t in view.events[-8:]]
            self.events_html.value = (
                html_table(["step", "event"], rows, title="Events") if rows else ""
            )
        self._dirty = dict.fromkeys(self._dirty, False)

    def _draw_curves(self, view: Any) -> None:
        steps = np.asarray(view.steps, dtype=float)
        ev = np.asarray(view.eval_steps, dtype=float)
        for lines, tline, scatter, train, test in (
            (self.loss_lines, self.loss_test_line, self.loss_test, view.loss, view.test_loss),
            (self.acc_lines, self.acc_test_line, self.acc_test, view.accuracy, view.test_accuracy),
        ):
            sx, sy = downsample(steps, np.asarray(train, dtype=float), self.max_points)
            tx, ty = downsample(ev, np.asarray(test, dtype=float), self.max_points)
            with lines.hold_sync():
                lines.x, lines.y = sx, sy
            with tline.hold_sync():
                tline.x, tline.y = tx, ty
            with scatter.hold_sync():
                scatter.x, scatter.y = tx, ty

    def _draw_spectrum(self, view: Any) -> None:
        name = view.curvature.upper() if view.curvature == "ggn" else "Hessian"
        if view.spectra:
            curve = view.spectra[-1].density()
            with self.density_band.hold_sync():
                self.density_band.x = curve.grid
                self.density_band.y = np.vstack([curve.lower, curve.upper])
            with self.density_line.hold_sync():
                self.density_line.x = curve.grid
                self.density_line.y = curve.density
            self.density_fig.title = f"{name} spectral density at step {view.spectrum_steps[-1]}"
        steps = np.asarray(view.top_steps, dtype=float)
        k = max(len(t) for t in view.top_eigenvalues) if view.top_eigenvalues else 0
        if k:
            top = np.full((k, len(steps)), np.nan)
            for j, vals in enumerate(view.top_eigenvalues):
                top[: len(vals), j] = vals
            with self.top_lines.hold_sync():
                self.top_lines.x = steps
                self.top_lines.y = top
                self.top_lines.labels = [f"λ{i + 1}" for i in range(k)]
        thr = np.asarray(view.thresholds, dtype=float)  # 2/lr in force at each check
        if thr.size and np.isfinite(thr).all():
            with self.threshold_line.hold_sync():
                self.threshold_line.x = steps
                self.threshold_line.y = thr

    def _draw_stats(self, view: Any) -> None:
        rows: list[list[Any]] = []
        if view.loss:
            rows.append(["train loss (last batch)", view.loss[-1]])
        if view.test_loss:
            rows.append([f"test loss (step {view.eval_steps[-1]})", view.test_loss[-1]])
            rows.append(["test accuracy", view.test_accuracy[-1]])
        st = view.stats
        if view.top_steps and st:
            rows += [
                [
                    f"λ max ({curvature_label(view.curvature)}, step {view.top_steps[-1]})",
                    st.get("largest"),
                ],
                ["λ min", st.get("smallest")],
                ["trace", st.get("trace")],
                ["negative mass", st.get("negative_mass")],
            ]
            if view.thresholds and np.isfinite(view.thresholds[-1]):
                rows.append(["2 / lr", view.thresholds[-1]])
        self.stats_html.value = (
            html_table(["quantity", "value"], rows, title="Statistics") if rows else ""
        )

    # ------------------------------------------------------------------ static version
    def to_matplotlib(self, **kw: Any) -> Any:
        """The same four views as a matplotlib figure (for papers, or front ends without widgets)."""
        from ..plotting import plot_training

        if self._trainer is None:
            raise ValueError("the dashboard has seen no training yet")
        return plot_training(self._view(), **kw)
