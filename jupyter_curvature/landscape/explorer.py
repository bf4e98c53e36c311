"""The headless landscape explorer: a network moved along directions, live, without widgets.

:class:`HeadlessExplorer` holds everything the landscape explorer computes: a snapshot of the
model, the directions (curvature eigenvectors or filter-normalised random ones, see
:mod:`~jupyter_curvature.landscape.direction_specs`), the current point ``c`` and its loss
and accuracy at ``w = w0 + sum_i c_i d_i``, the 1D lines through that point along each
direction, the 2D map over a pair, *apply* / *undo*, and the export as
:class:`~jupyter_curvature.landscape.results.Landscape1D` /
:class:`~jupyter_curvature.landscape.results.Landscape2D`. A view (the ipywidgets panel
:class:`jupyter_curvature.widgets.landscape.LandscapeExplorer`) registers callbacks with
:meth:`HeadlessExplorer.on` and draws what they announce; the explorer never calls widgets.

How it stays exact and safe:

- **From the saved origin.** The model is copied once, at construction (``w0`` and the
  buffers). Every point is formed from that copy as ``w0 + sum_i c_i d_i`` by the landscape
  engine (:class:`~jupyter_curvature.landscape.Perturber`,
  :class:`~jupyter_curvature.landscape.evaluator.LandscapeEvaluator`), never by adding steps,
  so any sequence of moves gives the numbers of a fresh evaluation at the last coordinates.
- **The model is never touched** except by :meth:`HeadlessExplorer.apply` (and
  :meth:`~HeadlessExplorer.undo`, which puts back, bitwise, what ``apply`` overwrote). Points
  are evaluated on the private copy through ``torch.func.functional_call``, so a move made on
  another thread while a training loop runs neither reads a half-updated weight nor changes
  one.
- **Coalescing.** Moves recorded (:meth:`~HeadlessExplorer.set_coord`) while a redraw runs
  are merged: :meth:`~HeadlessExplorer.drain` redraws for the latest coordinates only.
- **Live preview, exact after** (:mod:`~jupyter_curvature.landscape.explorer_lines`): when a
  full-data line costs more than the live budget, a move computes the changed 1D lines on a
  fixed, seeded subsample, and a background worker replaces each with the exact full-data
  line once the coordinates have been still for ``exact_delay`` seconds. Exact lines are
  cached by their coordinates. The point's numbers are always the full-data ones.

Threading: :attr:`HeadlessExplorer.lock` (re-entrant) serialises every state change; a view
runs its callbacks under the same lock. The worker takes it (never blocking while a move
makes its work stale) only to store and announce a finished line.
"""

from __future__ import annotations

import copy
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.params import ParamSpec, select_parameters
from .direction_specs import DirectionSpec, check_pair, parse_direction_spec, resolve_directions
from .directions import Directions
from .explorer_lines import ExactLines
from .perturb import Perturber, copy_all
from .results import METRICS, Landscape1D, Landscape2D

__all__ = ["EVENTS", "HeadlessExplorer"]

#: the events a view can register for with :meth:`HeadlessExplorer.on`, and their arguments
EVENTS = {
    "point": "(coords, values): the point was evaluated",
    "lines": "(): the 1D lines changed (called before wait_exact may return)",
    "grid": "(): the 2D map progressed, finished or was interrupted",
    "directions": "(): new directions (kind switch or recompute); coordinates back to 0",
    "pair": "(): another pair of directions for the 2D map (the map is cleared)",
    "metric": "(): another metric shown",
    "status": "(kind, detail): 'grid_stale', 'applied' (coords), 'undone' or 'clear'",
    "error": "(exc, where): an error in the background worker or reported by a view",
}


def _metric_copies(store: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """Each metric's array copied out of ``store`` (``None`` for a metric not computed)."""
    return {m: store[m].copy() if m in store else None for m in METRICS}


def _check_positive_number(value: Any, name: str, remedy: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}; {remedy}")
    return v


def _check_points(points: Any) -> int:
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)):
        raise TypeError(f"num_points must be an integer, got {points!r}")
    if points < 2:
        raise ValueError(
            f"num_points must be at least 2 (the number of grid points per direction), got {points}"
        )
    return int(points)


def _alias(value: Any, old: Any, new_name: str, old_name: str) -> Any:
    """``value``, or the deprecated ``old`` keyword's value (with a warning naming the new)."""
    if old is None:
        return value
    warnings.warn(
        f"{old_name}= is deprecated; use {new_name}= (docs/vocabulary.md)",
        DeprecationWarning,
        stacklevel=3,
    )
    return old


class HeadlessExplorer(ExactLines):
    """A network moved along curvature eigen-directions: the point, 1D lines, 2D map, apply.

    Args:
        model: the network (copied once; never changed unless :meth:`apply` is called).
        data: training data (DataLoader, iterable of ``(inputs, targets)`` or one batch),
            used for the loss/accuracy and, when eigenvectors are computed, the curvature.
        loss_fn: ``loss_fn(outputs, targets)``, reduction ``"mean"`` or ``"sum"`` (default
            ``nn.CrossEntropyLoss()``).
        test_data: optional test data, evaluated at every point too.
        directions: ``"top:K"``, ``"bottom:K"``, ``"index:i,j"``, ``"random:K"`` (see
            :func:`~jupyter_curvature.landscape.direction_specs.parse_direction_spec`) or a
            :class:`~jupyter_curvature.landscape.Directions`.
        eigen: an eigenpairs result (``.eigenvalues``, ``.eigenvectors``) to take eigen
            directions from; computed on the snapshot when ``None``.
        curvature: ``"hessian"`` or ``"ggn"``, the matrix whose eigenvectors are computed.
        params: which parameters the directions live on (default: all trainable).
        span: the coordinates and grids span ``[-span, span]`` along each direction (unit
            eigenvectors, so it is the L2 distance from ``w0``; default 1.0 as in the
            original package's ``build_loss_landscape``). ``distance=`` is its deprecated
            alias.
        num_points: grid points per direction (default 21, the original's). ``points=`` is
            its deprecated alias.
        pair: the two directions of the 2D map.
        metric: what the lines and the map show (``"train_loss"``, ``"train_accuracy"``,
            ``"test_loss"``, ``"test_accuracy"``); the preview computes this one's data.
        bn: BatchNorm at each point, ``"eval"`` (running statistics of ``w0``) or
            ``"recalibrate"`` (recomputed per point, the original's behaviour; slower).
        seed: seed of the random directions, of the Lanczos start vector and of the preview
            subsample.
        tol: relative residual tolerance of computed eigenpairs.
        batch_points: passed to the evaluator (``"auto"``, 1, or points per batched pass).
        preview: the live 1D lines: ``"auto"`` (on a subsample when a full-data line is
            measured above :data:`~jupyter_curvature.landscape.explorer_lines.LIVE_LINE_BUDGET`),
            a number of samples, or ``None`` (always full data, computed in the move).

    Raises:
        ValueError: a bad spec, more directions asked than computed, ``span <= 0``,
            ``num_points < 2``, directions for other parameter shapes, a pair out of range.
        TypeError: a model that is not an ``nn.Module``, a loss that is not callable.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        test_data: Any = None,
        directions: str | Directions | Any = "top:2",
        eigen: Any = None,
        curvature: str = "hessian",
        params: ParamSpec = None,
        span: float = 1.0,
        num_points: int = 21,
        pair: Sequence[int] = (0, 1),
        metric: str = "train_loss",
        bn: str = "eval",
        seed: int = 0,
        tol: float = 1e-3,
        batch_points: int | str = "auto",
        preview: int | str | None = "auto",
        distance: float | None = None,
        points: int | None = None,
    ) -> None:
        # ---- checks first: bad input leaves nothing behind -----------------------------
        span = _alias(span, distance, "span", "distance")
        num_points = _alias(num_points, points, "num_points", "points")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if curvature not in ("hessian", "ggn"):
            raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
        self.span = _check_positive_number(
            span, "span (--span)", "the coordinates span [-span, span]"
        )
        self.num_points = _check_points(num_points)
        self._spec: DirectionSpec | None = None
        if isinstance(directions, str):
            self._spec = parse_direction_spec(directions)
        if metric not in METRICS or (metric.startswith("test") and test_data is None):
            valid = METRICS if test_data is not None else METRICS[:2]
            raise ValueError(f"metric must be one of {valid}, got {metric!r}")
        self.model = model
        self.params = params
        self.loss_fn = loss_fn
        self.data = data
        self.test_data = test_data
        self.curvature = curvature
        self.bn = bn
        self.seed = int(seed)
        self.tol = float(tol)
        self.metric = metric
        self._batch_points = batch_points
        self._eigen = eigen
        self._given = None if isinstance(directions, str) else directions
        self.lock = threading.RLock()  # every state change; a view's callbacks share it
        self.closed = False
        self.error_count = 0
        self.last_error: BaseException | None = None
        self._listeners: dict[str, list[Callable[..., Any]]] = {e: [] for e in EVENTS}

        # ---- engine state: snapshot, directions, evaluator ----------------------------
        self._snapshot_model()
        self.kind = "random" if self._spec is not None and self._spec.kind == "random" else "eigen"
        self.directions = self._make_directions(self.kind)
        self.pair = check_pair(pair, len(self.directions))
        self._init_preview(preview)
        self._build_engine()

        # ---- the point, the lines, the map --------------------------------------------
        k = len(self.directions)
        self.ts = np.linspace(-self.span, self.span, self.num_points)
        self._coords = np.zeros(k)
        self._dirty: set[int] = set()
        self._state_lock = threading.Lock()
        self._undo: list[tuple[list[torch.Tensor], np.ndarray]] = []
        self.point_values: dict[str, float] = {}
        self.origin_values: dict[str, float] = {}
        self.grid: dict[str, np.ndarray] = {}
        self.grid_done = np.zeros((self.num_points, self.num_points), dtype=bool)
        self.grid_base: np.ndarray | None = None  # the coordinates the map was computed at
        self.grid_interrupted = False
        self.grid_progress = 0  # points of the map done
        self.grid_seconds: float | None = None  # the last finished map's time
        self.redraws = 0  # redraws done (for tests and benchmarks)
        self._init_lines(k)
        self._refresh(set(range(k)))
        self._decide_preview()
        self._lines_changed()

    # ---------------------------------------------------------------------------------
    # aliases of the old names (docs/vocabulary.md)

    @property
    def distance(self) -> float:
        """The old name of :attr:`span`."""
        return self.span

    @property
    def points(self) -> int:
        """The old name of :attr:`num_points`."""
        return self.num_points

    # ---------------------------------------------------------------------------------
    # callbacks

    def on(self, event: str, callback: Callable[..., Any]) -> None:
        """Call ``callback`` on ``event`` (one of :data:`EVENTS`), on the thread that caused it.

        Callbacks run in registration order; an exception in one propagates to the caller
        of the action (the worker reports it as an ``"error"`` event instead).
        """
        if event not in self._listeners:
            raise ValueError(f"event must be one of {sorted(EVENTS)}, got {event!r}")
        self._listeners[event].append(callback)

    def _emit(self, event: str, *args: Any) -> None:
        for callback in list(self._listeners[event]):
            callback(*args)

    def report_error(self, exc: BaseException, where: str = "callback") -> None:
        """Count ``exc`` (a failed :meth:`wait_exact` settles on it) and announce it."""
        self.error_count += 1
        self.last_error = exc
        self._emit("error", exc, where)

    # ---------------------------------------------------------------------------------
    # engine

    def _snapshot_model(self) -> None:
        named = select_parameters(self.model, self.params)
        self._param_names = [n for n, _ in named]
        self._param_shapes = [tuple(p.shape) for _, p in named]
        try:
            self._snapshot = copy.deepcopy(self.model)
        except Exception as exc:  # noqa: BLE001 - one remedy for any failure
            raise TypeError(
                f"the model cannot be copied with copy.deepcopy ({type(exc).__name__}: {exc}); "
                "the explorer evaluates on a private copy so that the model is never changed"
            ) from exc
        # the snapshot keeps requires_grad flags: params=None selects by them
        self.num_params = sum(math.prod(s) for s in self._param_shapes)

    def _compute_eigen(self, spec: DirectionSpec) -> Any:
        from ..operators import GGNOperator, HessianOperator
        from ..spectral.eigenpairs import eigenpairs

        cls = HessianOperator if self.curvature == "hessian" else GGNOperator
        op = cls(self._snapshot, self.loss_fn, self.data, params=self.params)
        k = spec.needed
        if k > op.shape[0] - 1:  # refused now, not after computing all that are possible
            raise ValueError(
                f"direction spec {spec} needs {k} eigenpairs of {op.shape[0]} parameters; "
                f"Lanczos gives at most {op.shape[0] - 1}: ask for fewer directions"
            )
        which = "SA" if spec.kind == "bottom" else "LA"
        return eigenpairs(op, k=k, which=which, tol=self.tol, seed=self.seed, warn=False)

    def _make_directions(self, kind: str) -> Directions:
        dirs, self._eigen = resolve_directions(
            kind,
            snapshot=self._snapshot,
            param_names=self._param_names,
            param_shapes=self._param_shapes,
            params=self.params,
            spec=self._spec,
            given=self._given,
            eigen=self._eigen,
            compute_eigen=self._compute_eigen,
            seed=self.seed,
        )
        return dirs

    def _build_engine(self) -> None:
        self._perturber = Perturber(self._snapshot, self.directions, params=self.params)
        self._evaluator = self._perturber.evaluator(
            self.loss_fn,
            self.data,
            test_data=self.test_data,
            bn=self.bn,
            batch_points=self._batch_points,
        )
        self.metrics = list(self._evaluator.metrics)
        self._preview_evals = {}  # built again, lazily, for the new origin or directions

    @property
    def evaluator(self) -> Any:
        """The full-data :class:`~jupyter_curvature.landscape.evaluator.LandscapeEvaluator`."""
        return self._evaluator

    def num_samples(self, source: str) -> int:
        """How many samples the ``"train"`` or ``"test"`` data holds."""
        return self._evaluator.info()[f"{source}_samples"]

    # ---------------------------------------------------------------------------------
    # pure evaluation

    def evaluate(self, coords: Any) -> dict[str, Any]:
        """Metrics at one point ``(k,)`` (floats) or at ``P`` points ``(P, k)`` (arrays),
        computed by the landscape engine from the saved origin; the model is not touched."""
        c = np.asarray(coords, dtype=np.float64)
        if c.ndim == 2:
            return self._evaluator.evaluate(c)
        return self._evaluator(c)

    def weights_at(self, coords: Any) -> list[torch.Tensor]:
        """The chosen parameters at ``coords`` (new tensors; what :meth:`apply` writes)."""
        return self._perturber.weights_at(coords)

    @property
    def coords(self) -> np.ndarray:
        """The current point's coordinates (a copy)."""
        with self._state_lock:
            return self._coords.copy()

    # ---------------------------------------------------------------------------------
    # moves

    def check_coords(self, coords: Any) -> np.ndarray:
        """``coords`` as ``k`` finite numbers within ``[-span, span]``, or a ``ValueError``."""
        c = np.asarray(coords, dtype=np.float64).reshape(-1)
        k = len(self.directions)
        if c.size != k or not np.isfinite(c).all():
            raise ValueError(f"coords must be {k} finite numbers, got {coords!r}")
        if np.abs(c).max(initial=0) > self.span:
            raise ValueError(
                f"coords {c.tolist()} lie outside the range [-{self.span}, {self.span}]; make "
                "the explorer with a larger span"
            )
        return c

    def set_coord(self, i: int, value: float) -> None:
        """Record coordinate ``i`` (no evaluation: :meth:`drain` redraws); cancels the
        worker's pending work after its current chunk. Safe from any thread."""
        with self._state_lock:
            self._coords[i] = float(value)
            self._dirty.add(i)
            self._generation += 1  # the worker stops after its current chunk

    def set_coords(self, coords: np.ndarray) -> None:
        """Record every coordinate (checked by :meth:`check_coords` first)."""
        with self._state_lock:
            self._coords[:] = coords
            self._dirty |= set(range(len(coords)))

    def drain(self) -> None:
        """Redraw for the latest recorded coordinates; merges moves recorded meanwhile."""
        with self.lock:
            while True:
                with self._state_lock:
                    moved, self._dirty = self._dirty, set()
                    coords = self._coords.copy()
                if not moved or self.closed:
                    return
                self._refresh(moved, coords)

    def move_to(self, coords: Any) -> None:
        """Move to ``coords`` (one redraw)."""
        self.set_coords(self.check_coords(coords))
        self.drain()

    def reset(self) -> None:
        """Move back to the origin ``w0`` (the model is not touched)."""
        self.move_to(np.zeros(len(self.directions)))

    def _refresh(self, moved: set[int], coords: np.ndarray | None = None) -> None:
        coords = self.coords if coords is None else coords
        with self._state_lock:
            self._generation += 1
        self._update_point(coords)
        self._update_lines(coords, moved)
        a, b = self.pair
        if self.grid_base is not None and any(
            j not in (a, b) and coords[j] != self.grid_base[j] for j in range(len(coords))
        ):
            self._emit("status", "grid_stale", None)
        self.redraws += 1

    def _update_point(self, coords: np.ndarray) -> None:
        """The fast path: evaluate the point (full data) and announce it."""
        vals = self.evaluate(coords)
        self.point_values = vals
        if not self.origin_values and not coords.any():
            self.origin_values = dict(vals)
        self._emit("point", coords, vals)

    # ---------------------------------------------------------------------------------
    # what is shown

    def set_pair(self, pair: Sequence[int]) -> None:
        """Choose the two directions of the 2D map (clears the map)."""
        with self.lock:
            pair = check_pair(pair, len(self.directions))
            if pair == self.pair:
                return
            self.pair = pair
            self._clear_grid()
            self._emit("pair")
            self._update_point(self.coords)

    def set_metric(self, metric: str) -> None:
        """Choose the metric the lines and the map show (the preview computes its data)."""
        with self.lock:
            if metric not in self.metrics:
                raise ValueError(f"metric must be one of {self.metrics}, got {metric!r}")
            self.metric = metric
            waiting = [j for j in range(len(self.directions)) if not self.line_exact[j]]
            if waiting:  # the previews were of the other data: preview this metric's
                self._preview_rows(self.coords, waiting)
            self._emit("metric")
            self._lines_changed()
            self._update_point(self.coords)

    def _clear_grid(self) -> None:
        self.grid = {}
        self.grid_done = np.zeros((self.num_points, self.num_points), dtype=bool)
        self.grid_base = None
        self.grid_progress = 0

    # ---------------------------------------------------------------------------------
    # 2D map, progressive

    def compute_grid(self, coarse: int = 5, progress_interval: float = 0.25) -> Landscape2D:
        """Evaluate the full ``num_points x num_points`` map over the pair, coarse levels first.

        The map is the landscape engine's
        (:func:`~jupyter_curvature.landscape.iter_landscape_2d` on this explorer's evaluator):
        the plane through the current point, the other coordinates held at their values.
        Each finished level (and, at most every ``progress_interval`` seconds, the points in
        between) is announced as a ``"grid"`` event. A ``KeyboardInterrupt`` keeps the
        finished points (:attr:`grid_interrupted`), then propagates.
        """
        from .grid import iter_landscape_2d

        a, b = self.pair
        if a == b:
            raise ValueError("the 2D map needs two directions; this explorer has one")
        base = self.coords
        centre = base.copy()
        centre[[a, b]] = 0.0  # the map's axes are the absolute values of coordinates a and b
        self.grid_base = base
        self.grid_interrupted = False
        self.grid_progress = 0
        gen = iter_landscape_2d(
            self._evaluator,
            xs=self.ts,
            ys=self.ts,
            axes=(a, b),
            base=centre,
            coarse=coarse,
            progress_interval=progress_interval,
        )
        result = None
        self.grid_seconds = None
        try:
            for progress in gen:
                if result is None:
                    result = progress.result
                    self.grid = {m: getattr(result, m) for m in result.metrics}
                    self.grid_done = result.done
                self.grid_progress = progress.num_done
                self._emit("grid")
        except KeyboardInterrupt:
            self.grid_interrupted = True
            if result is not None:
                result.interrupted = True
            self._emit("grid")
            raise
        finally:
            gen.close()
        self.grid_seconds = 0.0 if result is None else result.meta.get("seconds", 0.0)
        self._emit("grid")
        self._emit("status", "clear", None)
        return self.grid_result()

    # ---------------------------------------------------------------------------------
    # results

    def _direction_records(self, which: Sequence[int]) -> list[dict[str, Any]]:
        return [self.directions[i].info() for i in which]

    def lines_result(self) -> Landscape1D:
        """The current 1D lines as a :class:`~jupyter_curvature.landscape.results.Landscape1D`
        (each line passes through the current point; ``meta["through"]`` holds it)."""
        return Landscape1D(
            directions=self._direction_records(range(len(self.directions))),
            bn=self.bn,
            reduction=self._evaluator.reduction,
            **_metric_copies(self.lines),
            coords=self.ts.copy(),
            meta={
                "through": self.coords.tolist(),
                "exact": bool(self.line_exact.all()),
                "preview_samples": self.preview_samples,
                **self._evaluator.info(),
            },
        )

    def grid_result(self) -> Landscape2D:
        """The 2D map as a :class:`~jupyter_curvature.landscape.results.Landscape2D`
        (``[i, j]`` at ``(xs[i], ys[j])``; NaN where not computed)."""
        if not self.grid:
            raise ValueError("no 2D map yet: call compute_grid() first")
        a, b = self.pair
        return Landscape2D(
            directions=self._direction_records((a, b)),
            bn=self.bn,
            reduction=self._evaluator.reduction,
            **_metric_copies(self.grid),
            done=self.grid_done.copy(),
            interrupted=self.grid_interrupted,
            xs=self.ts.copy(),
            ys=self.ts.copy(),
            meta={
                "base": None if self.grid_base is None else self.grid_base.tolist(),
                "pair": [a, b],
                **self._evaluator.info(),
            },
        )

    # ---------------------------------------------------------------------------------
    # apply / undo

    def _current_tensors(self) -> list[torch.Tensor]:
        named = select_parameters(self.model, self.params)
        names = [n for n, _ in named]
        shapes = [tuple(p.shape) for _, p in named]
        if names != self._param_names or shapes != self._param_shapes:
            changed = [
                f"{n}: {s0} -> {s1}"
                for n, s0, s1 in zip(names, self._param_shapes, shapes)
                if s0 != s1
            ]
            detail = f" ({changed[0]})" if changed else ""
            raise ValueError(
                f"the model's parameters changed shape since the directions were computed{detail}; "
                "call explorer.recompute() (or re-run %curv_landscape) to take a new origin"
            )
        return [p for _, p in named]

    def apply(self) -> None:
        """Write the current point ``w0 + sum_i c_i d_i`` into the model's weights.

        What it overwrites is kept; :meth:`undo` restores it bitwise. Buffers (BatchNorm
        running statistics) are left as they are.
        """
        with self.lock:
            tensors = self._current_tensors()
            coords = self.coords
            new = self.weights_at(coords)
            saved = [p.detach().clone() for p in tensors]
            self._undo.append((saved, coords))
            copy_all(tensors, new)  # finishes even when interrupted midway
            self._emit("status", "applied", coords)

    def undo(self) -> None:
        """Restore, bitwise, the weights the last :meth:`apply` overwrote."""
        with self.lock:
            if not self._undo:
                raise ValueError("nothing to undo: apply() has not been called")
            tensors = self._current_tensors()
            saved, _ = self._undo.pop()
            copy_all(tensors, saved)
            self._emit("status", "undone", None)

    @property
    def applied(self) -> bool:
        """Whether an :meth:`apply` is in effect (not undone)."""
        return bool(self._undo)

    # ---------------------------------------------------------------------------------
    # new directions

    def set_kind(self, kind: str) -> None:
        """Switch between ``"eigen"`` directions and ``"random"`` filter-normalised ones."""
        if kind not in ("eigen", "random"):
            raise ValueError(f"kind must be 'eigen' or 'random', got {kind!r}")
        with self.lock:
            if kind == self.kind:
                return
            dirs = self._make_directions(kind)
            if len(dirs) != len(self.directions):
                raise ValueError("the new directions differ in number")  # cannot happen
            self.kind = kind
            self.directions = dirs
            self._build_engine()
            self._after_new_directions()

    def recompute(self) -> None:
        """Take the model's current weights as the new origin and recompute the directions
        (the remedy when the model changed, or was trained, since the explorer was made)."""
        with self.lock:
            self._snapshot_model()
            if self._spec is not None and self._spec.is_eigen:
                self._eigen = None
            if self._given is not None:
                self._given = None
                self._spec = DirectionSpec("top", len(self.directions))
            self.directions = self._make_directions(self.kind)
            self._build_engine()
            self._after_new_directions()

    @property
    def given_directions(self) -> bool:
        """Whether the directions were given as an object (not a spec)."""
        return self._given is not None

    def _after_new_directions(self) -> None:
        self.origin_values = {}
        self._reset_lines()
        self._clear_grid()
        self._emit("directions")
        with self._state_lock:
            self._coords[:] = 0.0
            self._dirty.clear()
        self._refresh(set(range(len(self.directions))), np.zeros(len(self.directions)))

    # ---------------------------------------------------------------------------------
    # lifecycle

    def close(self) -> None:
        """Stop the worker and free the evaluator (the model keeps its weights; idempotent)."""
        if self.closed:
            return
        self._stop_worker()
        self.closed = True
        self._notify_lines_shown()
        self._join_worker()
        self._evaluator = None  # type: ignore[assignment]  # frees the cached data
        self._perturber = None  # type: ignore[assignment]

    def __enter__(self) -> HeadlessExplorer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def short_label(self, i: int) -> str:
        """Direction ``i``'s label: ``λ=<eigenvalue>`` or its own label."""
        d = self.directions[i]
        if d.eigenvalue is not None:
            return f"λ={d.eigenvalue:.4g}"
        return d.label

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        labels = [self.short_label(i) for i in range(len(self.directions))]
        return (
            f"<{type(self).__name__} ({state}): {len(labels)} {self.kind} directions {labels}, "
            f"point {self.coords.tolist()}, t in [-{self.span}, {self.span}] x "
            f"{self.num_points}, model {'applied' if self.applied else 'unchanged'}>"
        )
