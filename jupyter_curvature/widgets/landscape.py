"""The landscape explorer panel: sliders that move a network along curvature eigen-directions.

:class:`LandscapeExplorer` is the view over a headless
:class:`~jupyter_curvature.landscape.explorer.HeadlessExplorer` (:attr:`~LandscapeExplorer.explorer`),
which holds the snapshot, the directions, the point, the 1D lines (live preview, cache and
background worker of exact lines), the 2D map and apply/undo. The panel shows one slider per
direction (labelled with its eigenvalue), the loss and accuracy at ``w = w0 + sum_i c_i d_i``,
the 1D curves through that point along each direction, and a 2D map over a chosen pair of
directions (a bqplot heat map and the custom
:class:`~jupyter_curvature.widgets.landscape_canvas.LandscapeCanvas`, whose point can be
dragged). It records slider moves in the explorer and draws what the explorer's callbacks
(:meth:`~jupyter_curvature.landscape.explorer.HeadlessExplorer.on`) announce; its widget
callbacks run under the explorer's lock, so a slider message handled on a comm subshell
thread (JupyterLab >= 4.4 with ipykernel 7) never interleaves with another redraw.

``%curv_landscape`` (in :mod:`jupyter_curvature.magics`) builds one in a line.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np

from ..landscape.direction_specs import DirectionSpec, parse_direction_spec
from ..landscape.explorer import HeadlessExplorer
from ..landscape.results import Landscape2D
from ._base import Panel, Throttle, html_table
from .landscape_canvas import LandscapeCanvas

__all__ = ["DirectionSpec", "LandscapeExplorer", "parse_direction_spec"]

_PALETTE = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
    "#393b79",
    "#637939",
]

#: explorer attributes and methods the panel reads through (``panel.x`` is ``panel.explorer.x``)
_FORWARDED = frozenset(
    {
        "model",
        "data",
        "test_data",
        "loss_fn",
        "params",
        "curvature",
        "bn",
        "seed",
        "tol",
        "directions",
        "kind",
        "pair",
        "metric",
        "metrics",
        "num_params",
        "span",
        "num_points",
        "distance",
        "points",
        "ts",
        "coords",
        "point_values",
        "origin_values",
        "lines",
        "line_exact",
        "preview_lines",
        "preview_samples",
        "grid",
        "grid_done",
        "grid_base",
        "grid_interrupted",
        "redraws",
        "applied",
        "evaluate",
        "weights_at",
        "preview_data",
        "lines_result",
        "grid_result",
        "wait_exact",
        "recompute",
        "num_samples",
    }
)


def _fill_nearest(z: np.ndarray, done: np.ndarray) -> np.ndarray:
    """``z`` with every missing entry replaced by its nearest computed neighbour (coarse preview)."""
    if done.all() or not done.any():
        return z.copy()
    from scipy.ndimage import distance_transform_edt

    _, (ii, jj) = distance_transform_edt(~done, return_indices=True)
    return z[ii, jj]


class LandscapeExplorer(Panel):
    """Sliders along curvature eigen-directions with live loss, accuracy, 1D curves and 2D map.

    Args:
        model, data: the network and its training data (see
            :class:`~jupyter_curvature.landscape.explorer.HeadlessExplorer`).
        canvas: also show the custom JS canvas (draggable point).
        **kwargs: the headless explorer's keywords (``loss_fn``, ``test_data``,
            ``directions``, ``eigen``, ``curvature``, ``params``, ``span``, ``num_points``,
            ``pair``, ``metric``, ``bn``, ``seed``, ``tol``, ``batch_points``, ``preview``).
        explorer: an existing headless explorer to show instead (then ``model`` and ``data``
            may be ``None`` and no other keyword is taken).

    Attributes:
        explorer: the headless explorer; every number shown is its. The panel forwards its
            state (``coords``, ``point_values``, ``lines``, ``grid``, ``directions``, ...)
            and its actions (:meth:`move_to`, :meth:`apply`, :meth:`undo`, ...).

    Raises:
        ValueError, TypeError: as the headless explorer's.
    """

    def __init__(
        self,
        model: Any = None,
        data: Any = None,
        *,
        canvas: bool = True,
        explorer: HeadlessExplorer | None = None,
        **kwargs: Any,
    ) -> None:
        if explorer is None:
            explorer = HeadlessExplorer(model, data, **kwargs)  # checks first
        elif kwargs or model is not None or data is not None:
            raise ValueError("give either explorer= or the model, data and settings, not both")
        self.explorer = explorer
        super().__init__()
        self._lock = explorer.lock  # the panel's callbacks and the worker's redraws: one lock
        self._hold = 0  # > 0: slider observers record but do not redraw
        self._hold_lock = threading.Lock()
        self._canvas_echo: list[float] | None = None
        self._build_widgets(canvas)
        self._set_root(
            [self._header, self._controls, self._plots, *([self.canvas] if self.canvas else [])]
        )
        ex = explorer
        ex.on("point", lambda c, v: self._on_point(c, v))
        ex.on("lines", lambda: self._draw_lines())
        ex.on("grid", lambda: self._on_grid())
        ex.on("directions", lambda: self._on_directions())
        ex.on("pair", lambda: self._on_pair_changed())
        ex.on("metric", lambda: self._on_metric_changed())
        ex.on("status", lambda kind, detail: self._on_status(kind, detail))
        ex.on("error", lambda exc, where: Panel.show_error(self, exc, where))
        if ex.point_values:
            self._on_point(ex.coords, ex.point_values)
        self._draw_lines()

    def __getattr__(self, name: str) -> Any:
        if name in _FORWARDED and "explorer" in self.__dict__:
            return getattr(self.__dict__["explorer"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def exact_delay(self) -> float:
        """Seconds the sliders stay still before the exact lines are computed."""
        return self.explorer.exact_delay

    @exact_delay.setter
    def exact_delay(self, value: float) -> None:
        self.explorer.exact_delay = float(value)

    @property
    def _evaluator(self) -> Any:
        return self.explorer.evaluator

    @property
    def _worker(self) -> Any:
        return self.explorer.worker

    def show_error(self, exc: BaseException, where: str = "callback") -> None:
        """Count ``exc`` in the explorer (a pending :meth:`wait_exact` settles) and show it."""
        self.explorer.report_error(exc, where)  # its "error" callback writes it here

    # ---------------------------------------------------------------------------------
    # widgets

    def _build_widgets(self, with_canvas: bool) -> None:
        ex = self.explorer
        k = len(ex.directions)
        self._header = self._own(W.HTML())
        self._kind = self._own(
            W.ToggleButtons(
                options=[("eigen-directions", "eigen"), ("random (filter-normalised)", "random")],
                value=ex.kind,
                tooltips=[
                    "eigenvectors of the curvature, unit norm",
                    "Gaussian, filter-normalised (Li et al. 2018)",
                ],
                style={"button_width": "190px"},
            )
        )
        self._kind.observe(self.callback(self._on_kind), names=["value"])
        # step=None: the front end would otherwise snap values set from Python (move_to, canvas
        # drags) to its step grid and send the snapped value back, moving the point
        self.sliders = [
            self._own(
                W.FloatSlider(
                    value=0.0,
                    min=-ex.span,
                    max=ex.span,
                    step=None,
                    continuous_update=True,
                    readout_format=".3f",
                    layout=W.Layout(width="460px"),
                    style={"description_width": "150px"},
                )
            )
            for _ in range(k)
        ]
        for i, s in enumerate(self.sliders):
            s.observe(self._slider_observer(i), names=["value"])
        self._readout = self._own(W.HTML())
        self._status = self._own(W.HTML())
        buttons = {
            "reset": ("reset", "back to the origin w0", self.reset),
            "apply": (
                "apply to model",
                "write the current point into the model's weights",
                self.apply,
            ),
            "undo": (
                "undo apply",
                "restore the weights the last apply overwrote (bitwise)",
                self.undo,
            ),
            "grid": (
                "compute 2D map",
                "evaluate the full grid over the pair (coarse first)",
                self.compute_grid,
            ),
        }
        self.buttons: dict[str, W.Button] = {}
        for key, (label, tip, fn) in buttons.items():
            b = self._own(W.Button(description=label, tooltip=tip, layout=W.Layout(width="150px")))
            b.on_click(self.callback(lambda _b, fn=fn: fn()))
            self.buttons[key] = b
        self.buttons["undo"].disabled = not ex.applied
        options = [(ex.short_label(i), i) for i in range(k)]
        self._pair_x = self._own(
            W.Dropdown(
                options=options,
                value=ex.pair[0],
                description="map x",
                layout=W.Layout(width="230px"),
            )
        )
        self._pair_y = self._own(
            W.Dropdown(
                options=options,
                value=ex.pair[1],
                description="map y",
                layout=W.Layout(width="230px"),
            )
        )
        self._pair_x.observe(self.callback(self._on_pair), names=["value"])
        self._pair_y.observe(self.callback(self._on_pair), names=["value"])
        self._metric = self._own(
            W.Dropdown(
                options=ex.metrics,
                value=ex.metric,
                description="show",
                layout=W.Layout(width="230px"),
            )
        )
        self._metric.observe(self.callback(self._on_metric), names=["value"])
        self.progress = self._own(
            W.IntProgress(
                value=0,
                min=0,
                max=ex.num_points**2,
                description="2D map",
                layout=W.Layout(width="300px"),
            )
        )
        self._fig1d = self._make_fig1d()
        self._fig2d = self._make_fig2d()
        self.canvas = self._own(LandscapeCanvas(levels=8)) if with_canvas else None
        if self.canvas is not None:
            self.canvas.on_move(self.callback(self._on_canvas))
        self._throttle = Throttle(0.25)
        self._relabel()
        self._controls = self._own(
            W.HBox(
                [
                    W.VBox(
                        [
                            self._kind,
                            *self.sliders,
                            W.HBox(list(self.buttons.values())[:3]),
                            W.HBox([self.buttons["grid"], self.progress]),
                            self._status,
                        ]
                    ),
                    W.VBox([self._readout, self._metric, self._pair_x, self._pair_y]),
                ]
            )
        )
        self._plots = self._own(W.HBox([self._fig1d, self._fig2d]))

    def _make_fig1d(self) -> bq.Figure:
        ex = self.explorer
        k = len(ex.directions)
        sx, sy = bq.LinearScale(), bq.LinearScale()
        self._line = bq.Lines(
            x=ex.ts,
            y=np.full((k, ex.num_points), np.nan),
            scales={"x": sx, "y": sy},
            colors=_PALETTE[:k] if k <= len(_PALETTE) else _PALETTE,
            display_legend=True,
            labels=[ex.short_label(i) for i in range(k)],
        )
        self._marker1d = bq.Scatter(
            x=np.zeros(k),
            y=np.zeros(k),
            scales={"x": sx, "y": sy},
            colors=_PALETTE[:k],
            default_size=70,
            stroke="white",
        )
        self._ax1d_y = bq.Axis(scale=sy, side="left", label=ex.metric, tick_format=".3g")
        return self._own(
            bq.Figure(
                marks=[self._line, self._marker1d],
                axes=[
                    bq.Axis(scale=sx, label="t (distance from w0 along each direction)"),
                    self._ax1d_y,
                ],
                title="1D curves through the current point",
                legend_location="top",
                layout=W.Layout(width="480px", height="360px"),
                fig_margin={"top": 50, "bottom": 45, "left": 60, "right": 20},
            )
        )

    def _make_fig2d(self) -> bq.Figure:
        ex = self.explorer
        sx, sy = bq.LinearScale(), bq.LinearScale()
        sc = bq.ColorScale(scheme="viridis")
        self._heat = bq.HeatMap(
            x=ex.ts,
            y=ex.ts,
            color=np.zeros((ex.num_points, ex.num_points)),
            scales={"x": sx, "y": sy, "color": sc},
        )
        self._marker2d = bq.Scatter(
            x=[0.0],
            y=[0.0],
            scales={"x": sx, "y": sy},
            colors=["#e4572e"],
            default_size=90,
            stroke="white",
        )
        self._ax2d_x = bq.Axis(scale=sx, label="")
        self._ax2d_y = bq.Axis(scale=sy, side="left", label="")
        return self._own(
            bq.Figure(
                marks=[self._heat, self._marker2d],
                axes=[
                    self._ax2d_x,
                    self._ax2d_y,
                    bq.ColorAxis(scale=sc, side="right", tick_format=".3g"),
                ],
                title="2D map (not computed yet)",
                layout=W.Layout(width="460px", height="400px"),
                fig_margin={"top": 50, "bottom": 45, "left": 60, "right": 70},
            )
        )

    def _short_label(self, i: int) -> str:
        return self.explorer.short_label(i)

    def _relabel(self) -> None:
        """Labels that depend on the directions (after a switch eigen <-> random)."""
        ex = self.explorer
        k = len(ex.directions)
        for i, s in enumerate(self.sliders):
            s.description = f"d{i}: {ex.short_label(i)}"
            s.description_allow_html = False
        labels = [ex.short_label(i) for i in range(k)]
        self._line.labels = labels
        a, b = ex.pair
        self._ax2d_x.label = f"d{a}: {labels[a]}"
        self._ax2d_y.label = f"d{b}: {labels[b]}"
        if self.canvas is not None:
            with self.canvas.hold_sync():
                self.canvas.xlabel = f"d{a}: {labels[a]}"
                self.canvas.ylabel = f"d{b}: {labels[b]}"
                self.canvas.x_range = [-ex.span, ex.span]
                self.canvas.y_range = [-ex.span, ex.span]
                self.canvas.title = f"{ex.metric} over (d{a}, d{b})"
        kind = {
            "eigen": f"{ex.curvature} eigenvectors (unit)",
            "random": "random, filter-normalised (Li et al. 2018)",
        }[ex.kind]
        if ex.given_directions and ex.kind == "eigen":
            kind = "given directions"
        self._header.value = (
            f"<b>Landscape explorer</b> — {type(ex.model).__name__}, {ex.num_params:,} "
            f"parameters, {k} direction(s): {html.escape(kind)}; w = w0 + Σ c<sub>i</sub> "
            "d<sub>i</sub> from the saved origin w0. The model is not changed unless you press "
            "<i>apply</i>."
        )

    # ---------------------------------------------------------------------------------
    # slider path

    @contextmanager
    def _holding(self) -> Iterator[None]:
        """Slider (and toggle) changes made inside record, but do not redraw."""
        with self._hold_lock:
            self._hold += 1
        try:
            yield
        finally:
            with self._hold_lock:
                self._hold -= 1

    def _held(self) -> bool:
        with self._hold_lock:
            return self._hold > 0

    def _slider_observer(self, i: int) -> Callable[[dict], None]:
        def observer(change: dict) -> None:
            self.explorer.set_coord(i, float(change["new"]))
            if not self._held():
                self._process()

        return observer

    def _process(self) -> None:
        """Redraw for the latest coordinates (errors shown in the panel)."""
        if not self.closed:
            self.callback(self.explorer.drain)()

    # ---------------------------------------------------------------------------------
    # drawing what the explorer announces

    def _on_point(self, coords: np.ndarray, vals: dict[str, float]) -> None:
        ex = self.explorer
        m = ex.metric
        y = vals[m]
        with self._marker1d.hold_sync():
            self._marker1d.x = coords.copy()
            self._marker1d.y = np.full(len(coords), y)
        a, b = ex.pair
        with self._marker2d.hold_sync():
            self._marker2d.x = [float(coords[a])]
            self._marker2d.y = [float(coords[b])]
        self._readout.value = self._readout_html(coords, vals)
        if self.canvas is not None:
            pt = [float(coords[a]), float(coords[b])]
            with self.canvas.hold_sync():
                if list(self.canvas.point) != pt:
                    self._canvas_echo = pt
                    self.canvas.point = pt
                self.canvas.show_readout(f"{m} {y:.5g}", pt)

    def _draw_lines(self) -> None:
        ex = self.explorer
        if ex.metric in ex.lines:
            self._line.y = ex.lines[ex.metric]
        title = "1D curves through the current point"
        if ex.preview_samples is not None:
            n = ex.num_samples(ex.metric.split("_", 1)[0])
            if ex.line_exact.all():
                title += f" (exact, {n} samples)"
            else:
                shown = min(ex.preview_samples, n)
                title += f": preview on {shown} of {n} samples, exact lines follow"
        self._fig1d.title = title

    def _readout_html(self, coords: np.ndarray, vals: dict[str, float]) -> str:
        ex = self.explorer
        rows = []
        for name in ex.metrics:
            origin = ex.origin_values.get(name, np.nan)
            rows.append([name.replace("_", " "), vals[name], origin, vals[name] - origin])
        where = ", ".join(f"{c:.4g}" for c in coords)
        return html_table(["", "at point", "at w0", "change"], rows, title=f"point ({where})")

    def _set_status(self, text: str) -> None:
        self._status.value = f"<span style='color:#555'>{text}</span>"

    def _on_status(self, kind: str, detail: Any) -> None:
        if kind == "grid_stale":
            self._set_status(
                "the 2D map was computed at other values of the remaining "
                "coordinates: press <i>compute 2D map</i> to redo it here"
            )
        elif kind == "applied":
            self._set_status(
                f"applied the point ({', '.join(f'{c:.4g}' for c in detail)}) to the "
                "model; <i>undo apply</i> restores the previous weights"
            )
        elif kind == "undone":
            self._set_status("restored the weights from before the last apply")
        elif kind == "clear":
            self._set_status("")
        self.buttons["undo"].disabled = not self.explorer.applied

    def _on_directions(self) -> None:
        ex = self.explorer
        n = ex.num_points
        self._heat.color = np.zeros((n, n))
        self._fig2d.title = "2D map (not computed yet)"
        if self.canvas is not None:
            self.canvas.set_grid(np.full((n, n), np.nan))
        self._relabel()
        with self._holding():
            if self._kind.value != ex.kind:
                self._kind.value = ex.kind
            for s in self.sliders:
                s.value = 0.0

    def _on_pair_changed(self) -> None:
        n = self.explorer.num_points
        self._heat.color = np.zeros((n, n))
        self._fig2d.title = "2D map (not computed yet)"
        self._relabel()

    def _on_metric_changed(self) -> None:
        self._ax1d_y.label = self.explorer.metric
        self._draw_grid(force=True)
        self._relabel()

    # ---------------------------------------------------------------------------------
    # widget callbacks

    def _on_kind(self, change: dict) -> None:
        if not self._held() and change["new"] != self.explorer.kind:
            self.explorer.set_kind(change["new"])

    def _on_pair(self, _change: dict) -> None:
        try:
            self.explorer.set_pair((self._pair_x.value, self._pair_y.value))
        except ValueError:
            # a refused pair (the same direction twice): the dropdowns go back to the pair
            # the map shows, so that they never disagree with it; the error is shown
            self._pair_x.value, self._pair_y.value = self.explorer.pair
            raise

    def _on_metric(self, change: dict) -> None:
        self.explorer.set_metric(change["new"])

    def _on_canvas(self, x: float, y: float) -> None:
        if self._canvas_echo == [x, y]:
            return  # our own update of the canvas's point
        ex = self.explorer
        a, b = ex.pair
        c = ex.coords
        c[a], c[b] = np.clip([x, y], -ex.span, ex.span)
        self.move_to(c)

    # ---------------------------------------------------------------------------------
    # 2D map, progressive

    def compute_grid(self, coarse: int = 5) -> Landscape2D:
        """Evaluate the full 2D map over the pair, coarse levels first, drawn as it fills in.

        The explorer's :meth:`~jupyter_curvature.landscape.explorer.HeadlessExplorer.compute_grid`
        (the landscape engine's map through the current point); each finished level (and, at
        most 4 times a second, the points in between) is drawn at once, missing points shown
        by their nearest computed neighbour. A ``KeyboardInterrupt`` keeps the finished
        points, then propagates.
        """
        ex = self.explorer
        self.progress.value = 0
        self._fig2d.title = "2D map: computing (coarse first)…"
        try:
            ex.compute_grid(coarse=coarse, progress_interval=self._throttle.interval)
        except KeyboardInterrupt:
            n = ex.num_points
            self._fig2d.title = f"2D map interrupted: {int(ex.grid_done.sum())} of {n**2} points"
            raise
        return ex.grid_result()

    def _on_grid(self) -> None:
        ex = self.explorer
        self.progress.value = ex.grid_progress
        self._draw_grid()
        seconds = getattr(ex, "grid_seconds", None)
        if seconds is not None and ex.grid_done.all():
            n = ex.num_points
            self._fig2d.title = f"2D map of {ex.metric}: {n}x{n} points in {seconds:.2f} s"

    def _draw_grid(self, force: bool = False) -> None:
        ex = self.explorer
        if not ex.grid or not ex.grid_done.any():
            return
        z = _fill_nearest(ex.grid[ex.metric], ex.grid_done)  # [ix, iy]
        with self._heat.hold_sync():
            self._heat.color = z.T  # bqplot: rows along y
        if self.canvas is not None:
            shown = np.where(ex.grid_done, ex.grid[ex.metric], np.nan)
            preview = z if not ex.grid_done.all() else shown
            self.canvas.set_grid(
                preview.T, x_range=(ex.ts[0], ex.ts[-1]), y_range=(ex.ts[0], ex.ts[-1])
            )
            self.canvas.status = (
                ""
                if ex.grid_done.all()
                else f"{int(ex.grid_done.sum())}/{ex.grid_done.size} points"
            )

    # ---------------------------------------------------------------------------------
    # public actions

    def move_to(self, coords: Any) -> None:
        """Move the sliders to ``coords`` (one redraw)."""
        c = self.explorer.check_coords(coords)
        with self._holding():
            for i, s in enumerate(self.sliders):
                s.value = float(c[i])
            self.explorer.set_coords(c)
        self._process()

    def reset(self) -> None:
        """Move back to the origin ``w0`` (the model is not touched)."""
        self.move_to(np.zeros(len(self.explorer.directions)))

    def apply(self) -> None:
        """Write the current point into the model's weights (:meth:`undo` restores them)."""
        self.explorer.apply()

    def undo(self) -> None:
        """Restore, bitwise, the weights the last :meth:`apply` overwrote."""
        self.explorer.undo()

    def set_kind(self, kind: str) -> None:
        """Switch between ``"eigen"`` directions and ``"random"`` filter-normalised ones."""
        if kind not in ("eigen", "random"):
            raise ValueError(f"kind must be 'eigen' or 'random', got {kind!r}")
        self.explorer.set_kind(kind)

    def to_matplotlib(self, **kw: Any) -> Any:
        """The current metric along each line and over the 2D map (computed points), as a
        matplotlib figure (the static fallback of a saved notebook)."""
        from ..plotting import plot_landscape_overview

        ex = self.explorer
        with ex.lock:
            lines = ex.lines_result()
            grid = ex.grid_result() if ex.grid and ex.grid_done.any() else None
            metric = ex.metric
        return plot_landscape_overview(lines, grid, metric=kw.pop("metric", metric), **kw)

    # ---------------------------------------------------------------------------------
    # lifecycle

    def show(self, grid: bool = True) -> LandscapeExplorer:
        """Display the panel, then compute the 2D map progressively (it fills in live); the
        output then gets its static fallback (:meth:`~Panel.publish_static`)."""
        self.display()
        if grid and len(self.explorer.directions) > 1:
            self.compute_grid()
        self.publish_static()
        return self

    def close(self) -> None:
        """Stop the explorer's worker and close every widget. The model keeps its weights
        (changed only by an apply)."""
        if self.closed:
            return
        self.explorer.close()
        super().close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        ex = self.explorer
        labels = [ex.short_label(i) for i in range(len(ex.directions))]
        return (
            f"<LandscapeExplorer ({state}): {len(labels)} {ex.kind} directions {labels}, "
            f"point {ex.coords.tolist()}, t in [-{ex.span}, {ex.span}] x "
            f"{ex.num_points}, model {'applied' if ex.applied else 'unchanged'}>"
        )
