"""The landscape explorer: sliders that move a network along curvature eigen-directions, live.

:class:`LandscapeExplorer` shows one slider per direction (labelled with its eigenvalue), the
loss and accuracy at the point ``w = w0 + sum_i c_i d_i``, the 1D curves through that point
along each direction, and a 2D map over a chosen pair of directions (a bqplot heat map and
the custom :class:`~jupyter_curvature.widgets.landscape_canvas.LandscapeCanvas`, whose point
can be dragged). ``%curv_landscape`` (:func:`curv_landscape_magic`) builds one in a line.

How it stays exact and safe:

- **From the saved origin.** The model is copied once, at construction (``w0`` and the
  buffers). Every point is formed from that copy as ``w0 + sum_i c_i d_i`` by the landscape
  engine (:class:`~jupyter_curvature.landscape.Perturber`,
  :class:`~jupyter_curvature.landscape.evaluator.LandscapeEvaluator`), never by adding
  steps, so any sequence of slider moves gives the numbers of a fresh evaluation at the last
  coordinates, and the explorer's numbers are the engine's.
- **The model is never touched** except by :meth:`LandscapeExplorer.apply` (and
  :meth:`~LandscapeExplorer.undo`, which puts back, bitwise, what ``apply`` overwrote). Points
  are evaluated on a private copy through ``torch.func.functional_call``, so a slider message
  handled on a comm subshell thread while a training cell runs (JupyterLab >= 4.4 with
  ipykernel 7) neither reads a half-updated weight nor changes one; closing the panel, an
  error or a kernel interrupt leave the model as it was.
- **Coalescing.** Slider messages that arrive while a redraw runs are merged: the next
  redraw uses the latest coordinates only.
- **Live preview, exact after.** When a full-data line costs more than the live budget
  (``preview="auto"`` measures it; convolutional networks on a CPU), a slider move draws the
  changed 1D lines on a fixed, seeded subsample of the data
  (:func:`~jupyter_curvature.landscape.subsample_data`, the engine's numbers on that
  subsample), and a background worker replaces each with the exact full-data line once the
  sliders have been still for ``exact_delay`` seconds. A move cancels the worker's pending
  work after its current chunk. Exact lines are cached by their coordinates, so returning
  to a place shows them at once. The point's loss and accuracy (the readout and markers)
  are always the full-data numbers.

Directions (``directions=``): ``"top:K"`` (the K largest eigenvalues), ``"bottom:K"`` (the K
smallest), ``"index:i,j,..."`` (positions in an eigenpairs result), ``"random:K"``
(Gaussian directions, filter-normalised as in Li et al., "Visualizing the Loss Landscape of
Neural Nets", NeurIPS 2018, Sec. 4), or a :class:`~jupyter_curvature.landscape.Directions`.
Eigenvectors come from ``eigen=`` (an :func:`~jupyter_curvature.eigenpairs` result) or are
computed on the snapshot with the certified Lanczos of :mod:`jupyter_curvature.spectral`.
"""

from __future__ import annotations

import argparse
import copy
import html
import math
import re
import shlex
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import bqplot as bq
import ipywidgets as W
import numpy as np
import torch
from torch import nn

from ..core.params import ParamSpec, select_parameters
from ..landscape._data import NestedSubsamples
from ..landscape.directions import Directions, as_directions, eigen_directions, random_directions
from ..landscape.perturb import Perturber, _copy_all
from ..landscape.results import METRICS, Landscape1D, Landscape2D
from ._base import Panel, Throttle, html_table, track_panel
from .landscape_canvas import LandscapeCanvas

__all__ = [
    "DirectionSpec",
    "LandscapeExplorer",
    "curv_landscape_magic",
    "parse_direction_spec",
]

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
#: seconds a live 1D line may take to evaluate (the bar is 200 ms for the whole redraw, point
#: included); ``preview="auto"`` turns the subsample preview on when a full-data line costs more
LIVE_LINE_BUDGET = 0.1
#: subsample sizes ``preview="auto"`` chooses from (the largest that fits the budget)
PREVIEW_SIZES = (1024, 512, 256, 128, 64)
#: entries of the cache of exact lines
_CACHE_LINES = 256


# --------------------------------------------------------------------------------------
# direction specs


def _metric_copies(store: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """Each metric's array copied out of ``store`` (``None`` for a metric not computed)."""
    return {m: store[m].copy() if m in store else None for m in METRICS}


@dataclass(frozen=True)
class DirectionSpec:
    """A parsed ``--directions`` value.

    Attributes:
        kind: ``"top"``, ``"bottom"``, ``"index"`` or ``"random"``.
        count: how many directions.
        indices: the positions for ``"index"``, else ``None``.
    """

    kind: str
    count: int
    indices: tuple[int, ...] | None = None

    @property
    def is_eigen(self) -> bool:
        return self.kind != "random"

    @property
    def needed(self) -> int:
        """How many eigenpairs must be computed to serve this spec."""
        return max(self.indices) + 1 if self.indices is not None else self.count

    def __str__(self) -> str:
        if self.indices is not None:
            return "index:" + ",".join(str(i) for i in self.indices)
        return f"{self.kind}:{self.count}"


_SPEC_HELP = "use top:K, bottom:K, index:i,j,... or random:K (for example top:2)"


def parse_direction_spec(spec: str) -> DirectionSpec:
    """Parse ``top:K | bottom:K | index:i,j,... | random:K`` (``top`` alone means ``top:2``).

    Raises:
        ValueError: an unknown kind, a count below 1, a negative or repeated index.
    """
    if not isinstance(spec, str):
        raise TypeError(
            f"directions must be a spec string or Directions, got {type(spec).__name__}"
        )
    text = spec.strip().lower()
    kind, _, arg = text.partition(":")
    if kind not in ("top", "bottom", "index", "random"):
        raise ValueError(f"unknown direction spec {spec!r}: {_SPEC_HELP}")
    if kind == "index":
        try:
            idx = tuple(int(s) for s in arg.split(",") if s.strip())
        except ValueError:
            raise ValueError(
                f"direction spec {spec!r}: indices must be integers; {_SPEC_HELP}"
            ) from None
        if not idx:
            raise ValueError(f"direction spec {spec!r} names no index; {_SPEC_HELP}")
        if min(idx) < 0:
            raise ValueError(f"direction spec {spec!r}: indices start at 0")
        if len(set(idx)) != len(idx):
            raise ValueError(f"direction spec {spec!r} repeats an index")
        return DirectionSpec("index", len(idx), idx)
    try:
        count = int(arg) if arg.strip() else 2
    except ValueError:
        raise ValueError(
            f"direction spec {spec!r}: the count must be an integer; {_SPEC_HELP}"
        ) from None
    if count < 1:
        raise ValueError(f"direction spec {spec!r} asks for {count} directions; ask for at least 1")
    return DirectionSpec(kind, count)


def _eigen_count(eigen: Any) -> int:
    values = getattr(eigen, "eigenvalues", None)
    if values is None and isinstance(eigen, tuple) and len(eigen) == 2:
        values = eigen[0]
    return int(np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values).size)


def _eigen_length(eigen: Any) -> int | None:
    vectors = getattr(eigen, "eigenvectors", None)
    if vectors is None and isinstance(eigen, tuple) and len(eigen) == 2:
        vectors = eigen[1]
    return None if vectors is None else int(vectors.shape[0])


def _changed_shape_error(what: str, n_dirs: int, n_model: int) -> ValueError:
    return ValueError(
        f"the model's parameters changed shape since the directions were computed: {what} have "
        f"{n_dirs} entries, the model's chosen parameters {n_model}; recompute the directions "
        "(omit eigen= / --eigen to compute them afresh, or call explorer.recompute())"
    )


# --------------------------------------------------------------------------------------
# grids


def _fill_nearest(z: np.ndarray, done: np.ndarray) -> np.ndarray:
    """``z`` with every missing entry replaced by its nearest computed neighbour (coarse preview)."""
    if done.all() or not done.any():
        return z.copy()
    from scipy.ndimage import distance_transform_edt

    _, (ii, jj) = distance_transform_edt(~done, return_indices=True)
    return z[ii, jj]


# --------------------------------------------------------------------------------------
# the explorer


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
        raise TypeError(f"points must be an integer, got {points!r}")
    if points < 2:
        raise ValueError(
            f"points must be at least 2 (the number of grid points per direction), got {points}"
        )
    return int(points)


def _check_preview(preview: Any) -> int | str | None:
    if preview is None or preview == "auto":
        return preview
    if isinstance(preview, bool) or not isinstance(preview, (int, np.integer)) or preview < 1:
        raise ValueError(
            f"preview must be 'auto', None or a positive number of samples, got {preview!r}"
        )
    return int(preview)


class LandscapeExplorer(Panel):
    """Sliders along curvature eigen-directions with live loss, accuracy, 1D curves and 2D map.

    Args:
        model: the network (copied once; never changed unless you press *apply*).
        data: training data (DataLoader, iterable of ``(inputs, targets)`` or one batch),
            used for the loss/accuracy and, when eigenvectors are computed, the curvature.
        loss_fn: ``loss_fn(outputs, targets)``, reduction ``"mean"`` or ``"sum"`` (default
            ``nn.CrossEntropyLoss()``).
        test_data: optional test data, evaluated at every point too.
        directions: ``"top:K"``, ``"bottom:K"``, ``"index:i,j"``, ``"random:K"`` or a
            :class:`~jupyter_curvature.landscape.Directions` (see the module docstring).
        eigen: an eigenpairs result (``.eigenvalues``, ``.eigenvectors``) to take eigen
            directions from; computed on the snapshot when ``None``.
        curvature: ``"hessian"`` or ``"ggn"``, the matrix whose eigenvectors are computed.
        params: which parameters the directions live on (default: all trainable).
        distance: the sliders and grids span ``[-distance, distance]`` along each direction
            (unit eigenvectors, so it is the L2 distance from ``w0``; default 1.0 as in the
            original package's ``build_loss_landscape``).
        points: grid points per direction (default 21, the original's).
        pair: the two directions of the 2D map.
        metric: what the curves and the map show (``"train_loss"``, ``"train_accuracy"``,
            ``"test_loss"``, ``"test_accuracy"``).
        bn: BatchNorm at each point, ``"eval"`` (running statistics of ``w0``) or
            ``"recalibrate"`` (recomputed per point, the original's behaviour; slower).
        seed: seed of the random directions and of the Lanczos start vector.
        tol: relative residual tolerance of computed eigenpairs.
        canvas: also show the custom JS canvas (draggable point).
        batch_points: passed to the evaluator (``"auto"``, 1, or points per batched pass).
        preview: the live 1D lines: ``"auto"`` (on a subsample when a full-data line is
            measured above :data:`LIVE_LINE_BUDGET`, of the largest size in
            :data:`PREVIEW_SIZES` that fits), a number of samples (a preview on that many,
            when the data has more), or ``None`` (always full data, computed in the slider's
            callback). With a preview, the exact lines follow in the background.

    Raises:
        ValueError: a bad spec, more directions asked than computed, ``distance <= 0``,
            ``points < 2``, directions for other parameter shapes, a pair out of range.
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
        distance: float = 1.0,
        points: int = 21,
        pair: Sequence[int] = (0, 1),
        metric: str = "train_loss",
        bn: str = "eval",
        seed: int = 0,
        tol: float = 1e-3,
        canvas: bool = True,
        batch_points: int | str = "auto",
        preview: int | str | None = "auto",
    ) -> None:
        # ---- checks first: bad input leaves nothing behind -----------------------------
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if curvature not in ("hessian", "ggn"):
            raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
        self.distance = _check_positive_number(
            distance, "distance (--range)", "the sliders span [-distance, distance]"
        )
        self.points = _check_points(points)
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
        self._preview_request = _check_preview(preview)
        self.preview_samples: int | None = None  # decided after the first (exact) lines
        # per source, every preview size from one read of the data (sizes are tried in turn)
        self._subsamples: dict[str, NestedSubsamples] = {}
        self._preview_bp = batch_points
        self._preview_evals: dict[str, Any] = {}
        self._eigen = eigen
        self._given = None if isinstance(directions, str) else directions
        super().__init__()

        # ---- engine state: snapshot, directions, evaluator ----------------------------
        self._snapshot_model()
        self.kind = "random" if self._spec is not None and self._spec.kind == "random" else "eigen"
        self.directions = self._make_directions(self.kind)
        self.pair = self._check_pair(pair, len(self.directions))
        self._build_engine()

        # ---- panel state ---------------------------------------------------------------
        k = len(self.directions)
        self.ts = np.linspace(-self.distance, self.distance, self.points)
        self._coords = np.zeros(k)
        self._dirty: set[int] = set()
        self._state_lock = threading.Lock()
        self._hold = 0  # > 0: slider observers record but do not redraw
        self._undo: list[tuple[list[torch.Tensor], np.ndarray]] = []
        self.point_values: dict[str, float] = {}
        self.origin_values: dict[str, float] = {}
        self.lines: dict[str, np.ndarray] = {}
        self._lines_have: set[int] = set()
        self.grid: dict[str, np.ndarray] = {}
        self.grid_done = np.zeros((self.points, self.points), dtype=bool)
        self.grid_base: np.ndarray | None = None  # the coordinates the map was computed at
        self.grid_interrupted = False
        self.redraws = 0  # slider redraws done (for tests and benchmarks)
        # live preview and the exact lines' background worker
        self.line_exact = np.zeros(k, dtype=bool)  # whether line j holds full-data values
        self.preview_lines: dict[str, np.ndarray] = {}  # the last preview values, per metric
        self._exact_cache: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()
        self.exact_delay = 0.1  # seconds the sliders stay still before exact lines are computed
        self._generation = 0  # bumped by every move: cancels the worker's stale work
        self._epoch = 0  # bumped by new directions or origin: part of every cache key
        self._cv = threading.Condition()
        self._want: tuple[int, int, np.ndarray] | None = None
        self._want_time = 0.0
        self._worker: threading.Thread | None = None
        self._worker_busy = False
        self._stop = False
        # wait_exact's event: notified after every redraw of the 1D lines, a worker error and
        # close. It guards only the flag below and is never held while taking another lock.
        self._lines_shown = threading.Condition()
        self._exact_shown = False  # whether the last redraw showed every line exact
        self._build_widgets(canvas)
        self._set_root(
            [self._header, self._controls, self._plots, *([self.canvas] if self.canvas else [])]
        )
        self._refresh(set(range(k)))
        self._decide_preview()
        self._draw_lines()

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
        k = min(spec.needed, op.shape[0] - 1)
        which = "SA" if spec.kind == "bottom" else "LA"
        return eigenpairs(op, k=k, which=which, tol=self.tol, seed=self.seed, warn=False)

    def _make_directions(self, kind: str) -> Directions:
        n = self.num_params
        if self._given is not None:
            try:
                dirs = as_directions(self._given, n, param_names=self._param_names)
            except ValueError as exc:
                if "entries" in str(exc) or "shape" in str(exc):
                    length = getattr(self._given, "num_params", None)
                    if length is None and hasattr(self._given, "shape"):
                        length = max(self._given.shape)  # type: ignore[union-attr]
                    raise _changed_shape_error("the directions", int(length or 0), n) from exc
                raise
            shapes = getattr(self._given, "param_shapes", None)
            if shapes is not None and [tuple(s) for s in shapes] != self._param_shapes:
                raise _changed_shape_error("the directions", dirs.num_params, n)
            if kind == "random":
                return random_directions(
                    self._snapshot, len(dirs), seed=self.seed, params=self.params
                )
            return dirs
        spec = self._spec
        assert spec is not None
        if kind == "random":
            return random_directions(self._snapshot, spec.count, seed=self.seed, params=self.params)
        eigen_spec = spec if spec.is_eigen else DirectionSpec("top", spec.count)
        if self._eigen is None:
            self._eigen = self._compute_eigen(eigen_spec)
        computed = _eigen_count(self._eigen)
        length = _eigen_length(self._eigen)
        if length is not None and length != n:
            raise _changed_shape_error("the eigenvectors", length, n)
        if eigen_spec.needed > computed:
            raise ValueError(
                f"direction spec {eigen_spec} names {eigen_spec.needed} eigen-directions but only "
                f"{computed} were computed; ask for fewer, or recompute with k >= "
                f"{eigen_spec.needed}"
            )
        if eigen_spec.kind == "index":
            which: Any = list(eigen_spec.indices or ())
        else:
            which = "largest" if eigen_spec.kind == "top" else "smallest"
        return eigen_directions(
            self._eigen,
            which,
            k=None if eigen_spec.kind == "index" else eigen_spec.count,
            model=self._snapshot,
            params=self.params,
        )

    @staticmethod
    def _check_pair(pair: Sequence[int], k: int) -> tuple[int, int]:
        try:
            a, b = (int(v) for v in pair)
        except (TypeError, ValueError):
            raise ValueError(f"pair must be two direction indices, got {pair!r}") from None
        if k == 1:
            return (0, 0)
        if not (0 <= a < k and 0 <= b < k) or a == b:
            raise ValueError(
                f"pair must be two different direction indices in 0..{k - 1}, got {pair!r}"
            )
        return (a, b)

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

    def _num_samples(self, source: str) -> int:
        return self._evaluator.info()[f"{source}_samples"]

    def _decide_preview(self) -> None:
        """Turn the subsample preview on when a full-data line is too slow to be live."""
        req = self._preview_request
        n_train = self._num_samples("train")
        if req is None:
            return
        if req == "auto":
            per_point = self._evaluator.seconds_per_point()
            if per_point is None or self.points * per_point <= LIVE_LINE_BUDGET:
                return
            # one source per preview (the one shown); the cost scales with the samples
            per_sample = per_point / (n_train + self._num_samples("test"))
            fits = [s for s in PREVIEW_SIZES if self.points * per_sample * s <= LIVE_LINE_BUDGET]
            size = fits[0] if fits else PREVIEW_SIZES[-1]
            if 2 * size > n_train:
                return  # too little to gain over the full data
            self.preview_samples = self._calibrate_preview(size, n_train)
            return
        size = int(req)
        if size < n_train:
            self.preview_samples = size

    def _time_preview(self, size: int) -> float:
        """Seconds of one live line on ``size`` samples (best of two, warm), with the
        faster of one point at a time and all the line's points in one batched pass."""
        self.preview_samples = size
        self._preview_evals = {}
        block = self._line_block(np.zeros(len(self.directions)), [0])
        best, choice = math.inf, 1
        options = [1, self.points] if self._batch_points == "auto" else [self._batch_points]
        for bp in options:
            self._preview_bp = bp
            self._preview_evals = {}
            times = []
            for _ in range(3):  # the first pays for warm-up
                t0 = time.perf_counter()
                self._preview_evaluate("train", block)
                times.append(time.perf_counter() - t0)
            if min(times[1:]) < best:
                best, choice = min(times[1:]), bp
        self._preview_bp = choice
        self._preview_evals = {}
        return best

    def _calibrate_preview(self, size: int, n_train: int) -> int:
        """The largest size in :data:`PREVIEW_SIZES` (below half the data) whose measured
        live line fits :data:`LIVE_LINE_BUDGET`, searched from the estimate ``size``."""
        sizes = [s for s in PREVIEW_SIZES if 2 * s <= n_train] or [PREVIEW_SIZES[-1]]
        i = sizes.index(size) if size in sizes else len(sizes) - 1
        fits = self._time_preview(sizes[i]) <= LIVE_LINE_BUDGET
        if fits:
            while i > 0 and self._time_preview(sizes[i - 1]) <= LIVE_LINE_BUDGET:
                i -= 1
        else:
            while i < len(sizes) - 1:
                i += 1
                if self._time_preview(sizes[i]) <= LIVE_LINE_BUDGET:
                    break
        if self.preview_samples != sizes[i]:
            self._time_preview(sizes[i])  # choose the strategy for this size
        return sizes[i]

    def preview_data(self, source: str = "train") -> tuple[torch.Tensor, Any]:
        """The fixed, seeded subsample the live lines of ``source`` ("train" or "test") are
        evaluated on: :func:`~jupyter_curvature.landscape.subsample_data` of that data with
        ``preview_samples`` samples and this explorer's ``seed``."""
        if self.preview_samples is None:
            raise ValueError("this explorer draws exact lines live (no preview)")
        if source not in ("train", "test") or (source == "test" and self.test_data is None):
            raise ValueError(f"source must be 'train' or 'test' (with test data), got {source!r}")
        subsamples = self._subsamples.get(source)
        if subsamples is None or self.preview_samples > subsamples.max_samples:
            total = self._num_samples(source)
            tried = [s for s in PREVIEW_SIZES if 2 * s <= total]  # what calibration may try
            subsamples = NestedSubsamples(
                self.data if source == "train" else self.test_data,
                max(*tried, self.preview_samples) if tried else self.preview_samples,
                seed=self.seed,
                total=total,
            )
            self._subsamples[source] = subsamples
        return subsamples.take(self.preview_samples)

    def _preview_evaluate(self, source: str, coords: np.ndarray) -> dict[str, np.ndarray]:
        """The engine's metrics of ``source`` at ``coords`` on its preview subsample, named
        ``{source}_loss`` / ``{source}_accuracy``; a summed loss is scaled by ``N / n``."""
        ev = self._preview_evals.get(source)
        if ev is None:
            ev = self._perturber.new_evaluator(
                self.loss_fn, self.preview_data(source), bn=self.bn, batch_points=self._preview_bp
            )
            self._preview_evals[source] = ev
        vals = ev.evaluate(coords)
        loss = vals["train_loss"]
        if ev.reduction == "sum":
            loss = loss * (self._num_samples(source) / len(self.preview_data(source)[1]))
        return {f"{source}_loss": loss, f"{source}_accuracy": vals["train_accuracy"]}

    # ---------------------------------------------------------------------------------
    # pure evaluation (no widgets)

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
    # widgets

    def _build_widgets(self, with_canvas: bool) -> None:
        k = len(self.directions)
        self._header = self._own(W.HTML())
        self._kind = self._own(
            W.ToggleButtons(
                options=[("eigen-directions", "eigen"), ("random (filter-normalised)", "random")],
                value=self.kind,
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
                    min=-self.distance,
                    max=self.distance,
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
        self.buttons["undo"].disabled = True
        options = [(self._short_label(i), i) for i in range(k)]
        self._pair_x = self._own(
            W.Dropdown(
                options=options,
                value=self.pair[0],
                description="map x",
                layout=W.Layout(width="230px"),
            )
        )
        self._pair_y = self._own(
            W.Dropdown(
                options=options,
                value=self.pair[1],
                description="map y",
                layout=W.Layout(width="230px"),
            )
        )
        self._pair_x.observe(self.callback(self._on_pair), names=["value"])
        self._pair_y.observe(self.callback(self._on_pair), names=["value"])
        self._metric = self._own(
            W.Dropdown(
                options=self.metrics,
                value=self.metric,
                description="show",
                layout=W.Layout(width="230px"),
            )
        )
        self._metric.observe(self.callback(self._on_metric), names=["value"])
        self.progress = self._own(
            W.IntProgress(
                value=0,
                min=0,
                max=self.points**2,
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
        k = len(self.directions)
        sx, sy = bq.LinearScale(), bq.LinearScale()
        self._line = bq.Lines(
            x=self.ts,
            y=np.full((k, self.points), np.nan),
            scales={"x": sx, "y": sy},
            colors=_PALETTE[:k] if k <= len(_PALETTE) else _PALETTE,
            display_legend=True,
            labels=[self._short_label(i) for i in range(k)],
        )
        self._marker1d = bq.Scatter(
            x=np.zeros(k),
            y=np.zeros(k),
            scales={"x": sx, "y": sy},
            colors=_PALETTE[:k],
            default_size=70,
            stroke="white",
        )
        self._ax1d_y = bq.Axis(scale=sy, side="left", label=self.metric, tick_format=".3g")
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
        sx, sy = bq.LinearScale(), bq.LinearScale()
        sc = bq.ColorScale(scheme="viridis")
        self._heat = bq.HeatMap(
            x=self.ts,
            y=self.ts,
            color=np.zeros((self.points, self.points)),
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
        d = self.directions[i]
        if d.eigenvalue is not None:
            return f"λ={d.eigenvalue:.4g}"
        return d.label

    def _relabel(self) -> None:
        """Labels that depend on the directions (after a switch eigen <-> random)."""
        k = len(self.directions)
        for i, s in enumerate(self.sliders):
            s.description = f"d{i}: {self._short_label(i)}"
            s.description_allow_html = False
        labels = [self._short_label(i) for i in range(k)]
        self._line.labels = labels
        a, b = self.pair
        self._ax2d_x.label = f"d{a}: {labels[a]}"
        self._ax2d_y.label = f"d{b}: {labels[b]}"
        if self.canvas is not None:
            with self.canvas.hold_sync():
                self.canvas.xlabel = f"d{a}: {labels[a]}"
                self.canvas.ylabel = f"d{b}: {labels[b]}"
                self.canvas.x_range = [-self.distance, self.distance]
                self.canvas.y_range = [-self.distance, self.distance]
                self.canvas.title = f"{self.metric} over (d{a}, d{b})"
        kind = {
            "eigen": f"{self.curvature} eigenvectors (unit)",
            "random": "random, filter-normalised (Li et al. 2018)",
        }[self.kind]
        if self._given is not None and self.kind == "eigen":
            kind = "given directions"
        self._header.value = (
            f"<b>Landscape explorer</b> — {type(self.model).__name__}, {self.num_params:,} "
            f"parameters, {k} direction(s): {html.escape(kind)}; w = w0 + Σ c<sub>i</sub> "
            "d<sub>i</sub> from the saved origin w0. The model is not changed unless you press "
            "<i>apply</i>."
        )

    # ---------------------------------------------------------------------------------
    # slider path

    def _slider_observer(self, i: int) -> Callable[[dict], None]:
        def observer(change: dict) -> None:
            with self._state_lock:
                self._coords[i] = float(change["new"])
                self._dirty.add(i)
                self._generation += 1  # the worker stops after its current chunk
                hold = self._hold > 0
            if not hold:
                self._process()

        return observer

    def _process(self) -> None:
        """Redraw for the latest coordinates; merges moves that arrive meanwhile."""
        self.callback(self._drain)()

    def _drain(self) -> None:
        while True:
            with self._state_lock:
                moved, self._dirty = self._dirty, set()
                coords = self._coords.copy()
            if not moved or self.closed:
                return
            self._refresh(moved, coords)

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
            self._set_status(
                "the 2D map was computed at other values of the remaining "
                "coordinates: press <i>compute 2D map</i> to redo it here"
            )
        self.redraws += 1

    def _update_point(self, coords: np.ndarray) -> None:
        """The fast path: evaluate the point, move the markers, show the numbers."""
        vals = self.evaluate(coords)
        self.point_values = vals
        if not self.origin_values and not coords.any():
            self.origin_values = dict(vals)
        m = self.metric
        y = vals[m]
        with self._marker1d.hold_sync():
            self._marker1d.x = coords.copy()
            self._marker1d.y = np.full(len(coords), y)
        a, b = self.pair
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

    def _update_lines(self, coords: np.ndarray, moved: set[int]) -> None:
        """Redraw the 1D curve along each direction ``j`` whose line the move changed.

        A line along ``j`` changes when any coordinate but ``j`` moved. It comes from the
        cache of exact lines when it was computed before; else it is evaluated on the full
        data (no preview) or on the preview subsample, and then the background worker is
        asked for the exact line."""
        k = len(coords)
        redo = [j for j in range(k) if moved != {j} or j not in self._lines_have]
        fresh = []
        for j in redo:
            cached = self._cache_get(j, coords)
            if cached is None:
                fresh.append(j)
            else:
                self._set_line(j, cached, exact=True)
        if fresh:
            block = self._line_block(coords, fresh)
            if self.preview_samples is None:
                vals = self.evaluate(block)
                for r, j in enumerate(fresh):
                    line = {m: vals[m][r * self.points : (r + 1) * self.points] for m in vals}
                    self._cache_put(j, coords, line)
                    self._set_line(j, line, exact=True)
            else:
                self._preview_rows(coords, fresh)
        self._lines_have |= set(redo)
        if not self.line_exact.all():
            self._request_exact(coords)
        self._draw_lines()

    def _line_block(self, coords: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        """The points of the lines along ``rows`` through ``coords``, line after line."""
        block = np.repeat(coords[None, :], len(rows) * self.points, axis=0)
        for r, j in enumerate(rows):
            block[r * self.points : (r + 1) * self.points, j] = self.ts
        return block

    def _preview_rows(self, coords: np.ndarray, rows: Sequence[int]) -> None:
        """Preview lines along ``rows``: the shown metric's data only, on its subsample."""
        source = self.metric.split("_", 1)[0]
        vals = self._preview_evaluate(source, self._line_block(coords, rows))
        for r, j in enumerate(rows):
            line = {m: v[r * self.points : (r + 1) * self.points] for m, v in vals.items()}
            for m in self.metrics:
                arr = self.preview_lines.get(m)
                if arr is None:
                    arr = self.preview_lines[m] = np.full((len(coords), self.points), np.nan)
                arr[j] = line.get(m, np.nan)
            self._set_line(j, line, exact=False)

    def _set_line(self, j: int, line: dict[str, np.ndarray], exact: bool) -> None:
        """Store line ``j`` (metrics missing from ``line`` become NaN until the exact line)."""
        k = len(self.directions)
        for name in self.metrics:
            arr = self.lines.get(name)
            arr = np.full((k, self.points), np.nan) if arr is None else arr.copy()
            arr[j] = line.get(name, np.nan)
            self.lines[name] = arr
        self.line_exact[j] = exact

    def _draw_lines(self) -> None:
        if self.metric in self.lines:
            self._line.y = self.lines[self.metric]
        title = "1D curves through the current point"
        if self.preview_samples is not None:
            n = self._num_samples(self.metric.split("_", 1)[0])
            if self.line_exact.all():
                title += f" (exact, {n} samples)"
            else:
                shown = min(self.preview_samples, n)
                title += f": preview on {shown} of {n} samples, exact lines follow"
        self._fig1d.title = title
        self._notify_lines_shown(exact=bool(self.line_exact.all()))

    def _notify_lines_shown(self, exact: bool | None = None) -> None:
        with self._lines_shown:
            if exact is not None:
                self._exact_shown = exact
            self._lines_shown.notify_all()

    # ---- the cache of exact lines -----------------------------------------------------

    @staticmethod
    def _line_key(epoch: int, j: int, coords: np.ndarray) -> tuple:
        # the line along j depends on the other coordinates only (and on the directions)
        return (epoch, j, *(float(c) for i, c in enumerate(coords) if i != j))

    def _cache_get(
        self, j: int, coords: np.ndarray, epoch: int | None = None
    ) -> dict[str, np.ndarray] | None:
        with self._cv:
            key = self._line_key(self._epoch if epoch is None else epoch, j, coords)
            line = self._exact_cache.get(key)
            if line is not None:
                self._exact_cache.move_to_end(key)
            return line

    def _cache_put(
        self, j: int, coords: np.ndarray, line: dict[str, np.ndarray], epoch: int | None = None
    ) -> None:
        with self._cv:
            key = self._line_key(self._epoch if epoch is None else epoch, j, coords)
            self._exact_cache[key] = {m: v.copy() for m, v in line.items()}
            while len(self._exact_cache) > _CACHE_LINES:
                self._exact_cache.popitem(last=False)

    # ---- the background worker of exact lines -----------------------------------------

    def _request_exact(self, coords: np.ndarray) -> None:
        with self._cv:
            if self._stop:
                return
            self._want = (self._generation, self._epoch, coords.copy())
            self._want_time = time.monotonic()
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="landscape-exact-lines", daemon=True
                )
                self._worker.start()
            self._cv.notify_all()

    def _work(self) -> None:
        """The worker: waits for the sliders to stay still, then computes exact lines."""
        while True:
            with self._cv:
                while not self._stop and self._want is None:
                    self._cv.wait()
                if self._stop:
                    return
                gen, epoch, coords = self._want
                wait = self._want_time + self.exact_delay - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue  # the request may have been replaced meanwhile
                self._want = None
                self._worker_busy = True
            try:
                self._compute_exact(gen, epoch, coords)
            except Exception as exc:  # shown in the panel, like a callback's
                self.show_error(exc, "exact 1D lines")
                self._notify_lines_shown()
            finally:
                with self._cv:
                    self._worker_busy = False
                    self._cv.notify_all()

    def _stale(self, gen: int) -> bool:
        return self._stop or self._generation != gen

    def _compute_exact(self, gen: int, epoch: int, coords: np.ndarray) -> None:
        """The exact full-data lines at ``coords``, line by line, each drawn when done; gives
        up (keeping finished lines in the cache) as soon as a move makes them stale."""
        for j in [j for j in range(len(coords)) if not self.line_exact[j]]:
            line = self._cache_get(j, coords, epoch)
            if line is None:
                ev = self._evaluator
                if ev is None or self._stale(gen):
                    return
                c = ev.check_coords(self._line_block(coords, [j]))
                out = {m: np.full(self.points, np.nan) for m in ev.metrics}
                for idx, vals in ev.iter_chunks(c):
                    for m in ev.metrics:
                        out[m][idx] = vals[m]
                    if self._stale(gen):
                        return
                self._cache_put(j, coords, out, epoch)
                line = out
            # never wait on the panel's lock while a closing thread may hold it
            while not self._lock.acquire(timeout=0.05):
                if self._stale(gen):
                    return
            try:
                if self._stale(gen) or self.closed:
                    return
                self._set_line(j, line, exact=True)
                self._draw_lines()
            finally:
                self._lock.release()

    def wait_exact(self, timeout: float = 60.0) -> bool:
        """Block until the 1D lines are drawn with their exact full-data values (``True``),
        or until ``timeout`` seconds passed, the panel closed or the worker failed (``False``).

        It waits on the redraw itself, not on :attr:`line_exact`: the worker marks a line
        exact a moment before it redraws the figure, and a caller that returned in between
        would read the preview's title."""
        errors = self.error_count

        def settled() -> bool:
            return self._exact_shown or self.closed or self.error_count > errors

        with self._lines_shown:
            self._lines_shown.wait_for(settled, timeout)
            return self._exact_shown and not self.closed and self.error_count == errors

    def _readout_html(self, coords: np.ndarray, vals: dict[str, float]) -> str:
        rows = []
        for name in self.metrics:
            origin = self.origin_values.get(name, math.nan)
            rows.append([name.replace("_", " "), vals[name], origin, vals[name] - origin])
        where = ", ".join(f"{c:.4g}" for c in coords)
        return html_table(["", "at point", "at w0", "change"], rows, title=f"point ({where})")

    def _set_status(self, text: str) -> None:
        self._status.value = f"<span style='color:#555'>{text}</span>"

    # ---------------------------------------------------------------------------------
    # public actions

    def move_to(self, coords: Any) -> None:
        """Move the sliders to ``coords`` (one redraw)."""
        c = np.asarray(coords, dtype=np.float64).reshape(-1)
        k = len(self.directions)
        if c.size != k or not np.isfinite(c).all():
            raise ValueError(f"coords must be {k} finite numbers, got {coords!r}")
        if np.abs(c).max(initial=0) > self.distance:
            raise ValueError(
                f"coords {c.tolist()} lie outside the sliders' range [-{self.distance}, "
                f"{self.distance}]; make the explorer with a larger distance"
            )
        with self._state_lock:
            self._hold += 1
        try:
            for i, s in enumerate(self.sliders):
                s.value = float(c[i])
            with self._state_lock:
                self._coords[:] = c
                self._dirty |= set(range(k))
        finally:
            with self._state_lock:
                self._hold -= 1
        self._process()

    def reset(self) -> None:
        """Move back to the origin ``w0`` (the model is not touched)."""
        self.move_to(np.zeros(len(self.directions)))

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
        tensors = self._current_tensors()
        coords = self.coords
        new = self.weights_at(coords)
        saved = [p.detach().clone() for p in tensors]
        self._undo.append((saved, coords))
        _copy_all(tensors, new)  # finishes even when interrupted midway
        self.buttons["undo"].disabled = False
        self._set_status(
            f"applied the point ({', '.join(f'{c:.4g}' for c in coords)}) to the "
            "model; <i>undo apply</i> restores the previous weights"
        )

    def undo(self) -> None:
        """Restore, bitwise, the weights the last :meth:`apply` overwrote."""
        if not self._undo:
            raise ValueError("nothing to undo: apply() has not been called")
        tensors = self._current_tensors()
        saved, _ = self._undo.pop()
        _copy_all(tensors, saved)
        self.buttons["undo"].disabled = not self._undo
        self._set_status("restored the weights from before the last apply")

    @property
    def applied(self) -> bool:
        """Whether an :meth:`apply` is in effect (not undone)."""
        return bool(self._undo)

    def set_kind(self, kind: str) -> None:
        """Switch between ``"eigen"`` directions and ``"random"`` filter-normalised ones."""
        if kind not in ("eigen", "random"):
            raise ValueError(f"kind must be 'eigen' or 'random', got {kind!r}")
        if self._kind.value != kind:
            self._kind.value = kind  # the observer does the work
        elif kind != self.kind:
            self._switch(kind)

    def _on_kind(self, change: dict) -> None:
        if change["new"] != self.kind:
            self._switch(change["new"])

    def _switch(self, kind: str) -> None:
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
        self._snapshot_model()
        if self._spec is not None and self._spec.is_eigen:
            self._eigen = None
        if self._given is not None:
            self._given = None
            self._spec = DirectionSpec("top", len(self.directions))
        self.directions = self._make_directions(self.kind)
        self._build_engine()
        self._after_new_directions()

    def _after_new_directions(self) -> None:
        self.origin_values = {}
        self.lines = {}
        self._lines_have = set()
        self.preview_lines = {}
        self.line_exact[:] = False
        with self._cv:
            self._exact_cache.clear()
            self._epoch += 1
            self._generation += 1
        self.grid = {}
        self.grid_done[:] = False
        self.grid_base = None
        self._heat.color = np.zeros((self.points, self.points))
        self._fig2d.title = "2D map (not computed yet)"
        if self.canvas is not None:
            self.canvas.set_grid(np.full((self.points, self.points), np.nan))
        self._relabel()
        with self._state_lock:
            self._hold += 1
        try:
            for s in self.sliders:
                s.value = 0.0
            with self._state_lock:
                self._coords[:] = 0.0
                self._dirty.clear()
        finally:
            with self._state_lock:
                self._hold -= 1
        self._refresh(set(range(len(self.directions))), np.zeros(len(self.directions)))

    def _on_pair(self, _change: dict) -> None:
        pair = self._check_pair((self._pair_x.value, self._pair_y.value), len(self.directions))
        if pair == self.pair:
            return
        self.pair = pair
        self.grid = {}
        self.grid_done[:] = False
        self.grid_base = None
        self._heat.color = np.zeros((self.points, self.points))
        self._fig2d.title = "2D map (not computed yet)"
        self._relabel()
        self._update_point(self.coords)

    def _on_metric(self, change: dict) -> None:
        self.metric = change["new"]
        self._ax1d_y.label = self.metric
        waiting = [j for j in range(len(self.directions)) if not self.line_exact[j]]
        if waiting:  # the previews were of the other data: preview this metric's
            self._preview_rows(self.coords, waiting)
        self._draw_lines()
        self._draw_grid(force=True)
        self._relabel()
        self._update_point(self.coords)

    def _on_canvas(self, x: float, y: float) -> None:
        if getattr(self, "_canvas_echo", None) == [x, y]:
            return  # our own update of the canvas's point
        a, b = self.pair
        c = self.coords
        c[a], c[b] = np.clip([x, y], -self.distance, self.distance)
        self.move_to(c)

    # ---------------------------------------------------------------------------------
    # 2D map, progressive

    def compute_grid(self, coarse: int = 5) -> Landscape2D:
        """Evaluate the full ``points x points`` map over the pair, coarse levels first.

        The map is the landscape engine's
        (:func:`~jupyter_curvature.landscape.iter_landscape_2d` on this explorer's evaluator):
        the plane through the current point, the other coordinates held at their values.
        Each finished level (and, at most 4 times a second, the points in between) is drawn
        at once, missing points shown by their nearest computed neighbour. A
        ``KeyboardInterrupt`` keeps the finished points (``grid_interrupted``), then
        propagates. Returns the map as a
        :class:`~jupyter_curvature.landscape.results.Landscape2D` record.
        """
        from ..landscape.grid import iter_landscape_2d

        a, b = self.pair
        if a == b:
            raise ValueError("the 2D map needs two directions; this explorer has one")
        base = self.coords
        centre = base.copy()
        centre[[a, b]] = 0.0  # the map's axes are the absolute slider values of a and b
        self.grid_base = base
        self.grid_interrupted = False
        self.progress.value = 0
        self._fig2d.title = "2D map: computing (coarse first)…"
        gen = iter_landscape_2d(
            self._evaluator,
            xs=self.ts,
            ys=self.ts,
            axes=(a, b),
            base=centre,
            coarse=coarse,
            progress_interval=self._throttle.interval,
        )
        result = None
        try:
            for progress in gen:
                if result is None:
                    result = progress.result
                    self.grid = {m: getattr(result, m) for m in result.metrics}
                    self.grid_done = result.done
                self.progress.value = progress.num_done
                self._draw_grid()
        except KeyboardInterrupt:
            self.grid_interrupted = True
            if result is not None:
                result.interrupted = True
            self._draw_grid()
            self._fig2d.title = (
                f"2D map interrupted: {int(self.grid_done.sum())} of {self.points**2} points"
            )
            raise
        finally:
            gen.close()
        seconds = 0.0 if result is None else result.meta.get("seconds", 0.0)
        self._fig2d.title = (
            f"2D map of {self.metric}: {self.points}x{self.points} points in {seconds:.2f} s"
        )
        self._set_status("")
        return self.grid_result()

    def _draw_grid(self, force: bool = False) -> None:
        if not self.grid or not self.grid_done.any():
            return
        z = _fill_nearest(self.grid[self.metric], self.grid_done)  # [ix, iy]
        with self._heat.hold_sync():
            self._heat.color = z.T  # bqplot: rows along y
        if self.canvas is not None:
            shown = np.where(self.grid_done, self.grid[self.metric], np.nan)
            preview = z if not self.grid_done.all() else shown
            self.canvas.set_grid(
                preview.T, x_range=(self.ts[0], self.ts[-1]), y_range=(self.ts[0], self.ts[-1])
            )
            self.canvas.status = (
                ""
                if self.grid_done.all()
                else f"{int(self.grid_done.sum())}/{self.grid_done.size} points"
            )

    # ---------------------------------------------------------------------------------
    # results

    def _direction_records(self, which: Sequence[int]) -> list[dict[str, Any]]:
        return [self.directions[i].info() for i in which]

    def lines_result(self) -> Landscape1D:
        """The current 1D curves as a :class:`~jupyter_curvature.landscape.results.Landscape1D`
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
    # lifecycle

    def show(self, grid: bool = True) -> LandscapeExplorer:
        """Display the panel, then compute the 2D map progressively (it fills in live)."""
        from IPython.display import display

        display(self)
        if grid and len(self.directions) > 1:
            self.compute_grid()
        return self

    def close(self) -> None:
        """Close every widget. The model keeps its weights (changed only by an apply)."""
        if self.closed:
            return
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        worker = self._worker
        super().close()
        self._notify_lines_shown()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=30)  # at most one chunk of points
        self._evaluator = None  # type: ignore[assignment]  # frees the cached data
        self._perturber = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        labels = [self._short_label(i) for i in range(len(self.directions))]
        return (
            f"<LandscapeExplorer ({state}): {len(labels)} {self.kind} directions {labels}, "
            f"point {self.coords.tolist()}, t in [-{self.distance}, {self.distance}] x "
            f"{self.points}, model {'applied' if self.applied else 'unchanged'}>"
        )


# --------------------------------------------------------------------------------------
# %curv_landscape


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit the kernel
        raise ValueError(f"%curv_landscape: {message}")


def _parser() -> _Parser:
    p = _Parser(
        prog="%curv_landscape",
        add_help=False,
        description="Explore the loss landscape along curvature eigen-directions.",
    )
    p.add_argument(
        "--model", required=True, help="model variable (dotted paths work) or registry name"
    )
    p.add_argument("--data", required=True, help="training data variable or built-in name (digits)")
    p.add_argument("--test-data", dest="test_data", help="variable holding test data")
    p.add_argument(
        "--directions",
        default="top:2",
        help="top:K | bottom:K | index:i,j | random:K (default top:2)",
    )
    p.add_argument(
        "--range", dest="distance", type=float, default=1.0, help="sliders span [-R, R] (default 1)"
    )
    p.add_argument("--points", type=int, default=21, help="grid points per direction (default 21)")
    p.add_argument("--out", help="store the explorer in this variable")
    p.add_argument("--loss", help="variable holding the loss function (default CrossEntropyLoss)")
    p.add_argument("--eigen", help="variable holding an eigenpairs result to take directions from")
    p.add_argument("--ggn", action="store_true", help="eigenvectors of the GGN, not the Hessian")
    p.add_argument("--params", help="parameter selection (glob, module prefix or re:<regex>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--preview",
        default="auto",
        help="live 1D lines on a seeded subsample: auto (when full data is too slow), N "
        "samples, or none (always exact)",
    )
    p.add_argument(
        "--no-grid", dest="grid", action="store_false", help="do not compute the 2D map now"
    )
    p.add_argument(
        "--no-canvas", dest="canvas", action="store_false", help="leave out the draggable JS canvas"
    )
    return p


def curv_landscape_magic(shell: Any, line: str) -> LandscapeExplorer | None:
    """``%curv_landscape --model NAME --data NAME [--test-data NAME] [--directions SPEC]
    [--range R] [--points N] [--out NAME] [--loss NAME] [--eigen NAME] [--ggn]
    [--params PATTERN] [--seed S] [--preview auto|N|none] [--no-grid] [--no-canvas]``

    NAME is a notebook variable (dotted paths such as ``run.model`` work) or, as in the other
    ``%curv_*`` magics, a built-in name (``--model mlp``, ``--data digits``; the test split
    of built-in data is used as test data by default).

    Shows a :class:`LandscapeExplorer` and fills its 2D map in (coarse first). User mistakes
    raise IPython's ``UsageError`` with a one-line message. Returns ``None`` (the explorer
    is stored in ``--out NAME`` when given).

    Examples::

        %curv_landscape --model model --data train_loader
        %curv_landscape --model model --data train_loader --test-data test_loader --directions index:0,3 --range 0.5 --out ex
        %curv_landscape --model model --data train_loader --directions random:2
    """
    from IPython.core.error import UsageError
    from IPython.display import display

    from ..tasks import names as api

    try:
        args = _parser().parse_args(shlex.split(line))
        ns = shell.user_ns
        model = api.resolve_model(args.model, ns)
        data = api.resolve_data(args.data, ns)
        test_data = api.resolve_test_data(args.test_data, args.data, ns)
        loss_fn = api.resolve_loss(args.loss, ns)
        eigen = None
        if args.eigen is not None:
            eigen = api.lookup(args.eigen, ns)
            if eigen is api.MISSING:
                raise ValueError(f"--eigen {args.eigen!r} is not a variable of the notebook")
            if not (
                hasattr(eigen, "eigenvalues") or (isinstance(eigen, tuple) and len(eigen) == 2)
            ):
                raise ValueError(
                    f"--eigen {args.eigen!r} is a {type(eigen).__name__}, not an eigenpairs result "
                    "(%curv_spectrum --top K --out-eigen NAME makes one)"
                )
        if args.out is not None and not re.fullmatch(r"[A-Za-z_]\w*", args.out):
            raise ValueError(f"--out: {args.out!r} is not a valid variable name")
        if args.points < 2:
            raise ValueError(f"--points must be at least 2, got {args.points}")
        preview: int | str | None = args.preview.strip().lower()
        if preview in ("none", "off", "exact"):
            preview = None
        elif preview != "auto":
            try:
                preview = int(preview)
            except ValueError:
                raise ValueError(
                    f"--preview must be auto, none or a number of samples, got {args.preview!r}"
                ) from None
        if not (math.isfinite(args.distance) and args.distance > 0):
            raise ValueError(f"--range must be a positive number, got {args.distance}")
        if args.out is not None and isinstance(shell.user_ns.get(args.out), LandscapeExplorer):
            shell.user_ns[args.out].close()  # re-running the cell replaces its panel
        explorer = LandscapeExplorer(
            model,
            data,
            loss_fn=loss_fn,
            test_data=test_data,
            directions=args.directions,
            eigen=eigen,
            curvature="ggn" if args.ggn else "hessian",
            params=args.params,
            distance=args.distance,
            points=args.points,
            seed=args.seed,
            canvas=args.canvas,
            preview=preview,
        )
    except (ValueError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            msg if msg.startswith("%curv_landscape") else f"%curv_landscape: {msg}"
        ) from None
    if args.out is not None:
        shell.user_ns[args.out] = explorer
    display(explorer)
    track_panel(shell, explorer)  # re-running the cell (or %unload_ext) closes this panel
    if args.grid and len(explorer.directions) > 1:
        explorer.compute_grid()
    return None
