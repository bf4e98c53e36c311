"""1D and 2D loss landscapes: many points per pass, coarse to fine, interruptible.

:func:`landscape_1d` draws lines ``w0 + t d_i`` through the origin, one per direction
(the original package's picture); :func:`landscape_2d` a plane ``w0 + x d_a + y d_b``.
Both evaluate on a private copy of the model (:class:`LandscapeEvaluator`), so the model is
never changed, and report train (and test) loss and top-1 accuracy at each point.

**Progressive**: with ``progressive=True`` (default) the points come in levels: about
``coarse`` points per axis first (5 x 5 for a plane), then about twice as many per axis,
and so on to the full grid; a point shared by several cells (the origin of a 1D plot) is
evaluated once. ``callback(progress)`` is called as points arrive (at least at the end of
each level, at most every ``progress_interval`` seconds in between) and may return
``False`` to stop; :func:`iter_landscape_1d` / :func:`iter_landscape_2d` are the same as
generators. A ``KeyboardInterrupt`` keeps the finished points (``on_interrupt="return"``):
the result comes back with ``interrupted=True`` and ``done`` marking what was computed, and
``resume=`` continues it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.params import ParamSpec
from .evaluator import LandscapeEvaluator
from .results import METRICS, Landscape1D, Landscape2D, LandscapeResult

__all__ = [
    "LandscapeProgress",
    "landscape_1d",
    "landscape_2d",
    "iter_landscape_1d",
    "iter_landscape_2d",
    "axis_levels",
]


@dataclass
class LandscapeProgress:
    """Where a landscape computation stands; ``result`` is filled in place as it goes.

    Attributes:
        result: the result so far (NaN and ``done=False`` where not computed yet). It is
            the same object at every step: take ``result.copy()`` to keep a snapshot.
        new_points: points finished since the previous report.
        num_done, num_total: grid points finished, and in all.
        level, num_levels: the current refinement level (0 is the coarse grid).
        level_complete: every point of levels ``<= level`` is done.
        elapsed: seconds since the start.
    """

    result: LandscapeResult
    new_points: int
    num_done: int
    num_total: int
    level: int
    num_levels: int
    level_complete: bool
    elapsed: float

    @property
    def fraction(self) -> float:
        return self.num_done / self.num_total if self.num_total else 1.0


def axis_levels(n: int, coarse: int = 5) -> np.ndarray:
    """Refinement level of each of ``n`` grid indices along one axis.

    Level 0 holds ``min(coarse, n)`` indices spread evenly from the first to the last,
    level ``l+1`` those added by ``2 m_l - 1`` evenly spread indices, up to all ``n``.

    >>> axis_levels(9, 3).tolist()
    [0, 2, 1, 2, 0, 2, 1, 2, 0]
    """
    if coarse < 2:
        raise ValueError(f"coarse must be at least 2 points per axis, got {coarse}")
    level = np.full(n, -1)
    m, current = min(coarse, n), 0
    while True:
        idx = np.unique(np.round(np.linspace(0, n - 1, m)).astype(int))
        fresh = idx[level[idx] < 0]
        level[fresh] = current
        if m >= n:
            break
        m, current = min(n, 2 * m - 1), current + 1
    return np.unique(level, return_inverse=True)[1].reshape(n)


def _axis(span: Any, num_points: int, coords: Any, what: str) -> np.ndarray:
    if coords is not None:
        arr = np.asarray(coords, dtype=np.float64).reshape(-1)
        if arr.size == 0:
            raise ValueError(f"{what} is empty; the grid needs at least one point")
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        return arr
    if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)):
        raise TypeError(f"num_points must be an int, got {num_points!r}")
    if num_points < 1:
        raise ValueError(f"num_points must be at least 1, got {num_points}: the grid is empty")
    if np.ndim(span) == 0:
        s = float(span)
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"span must be a positive number or a (low, high) pair, got {span!r}")
        lo, hi = -s, s
    else:
        try:
            lo, hi = (float(v) for v in span)
        except (TypeError, ValueError):
            raise ValueError(
                f"span must be a positive number or a (low, high) pair, got {span!r}"
            ) from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"span (low, high) needs low < high, both finite; got {span!r}")
    if num_points == 1:
        return np.array([(lo + hi) / 2])
    return np.linspace(lo, hi, num_points)


_EVALUATOR_KEYS = (
    "test_data",
    "bn",
    "bn_data",
    "params",
    "origin",
    "batch_points",
    "memory_budget",
    "cache_data",
    "accuracy_fn",
    "batch_layout",
    "outputs",
)


def _evaluator(
    model: nn.Module | LandscapeEvaluator,
    loss_fn: Any,
    data: Any,
    directions: Any,
    options: dict[str, Any],
) -> LandscapeEvaluator:
    if isinstance(model, LandscapeEvaluator):
        named = {"loss_fn": loss_fn, "data": data, "directions": directions}
        given = [k for k, v in named.items() if v is not None]
        given += [k for k in _EVALUATOR_KEYS if options.get(k) is not None]
        if given:
            raise ValueError(
                f"with a LandscapeEvaluator as first argument, leave out {given}: the evaluator "
                "already fixes them"
            )
        return model
    if loss_fn is None or data is None or directions is None:
        raise TypeError("landscape needs model, loss_fn, data and directions")
    kwargs = {k: v for k, v in options.items() if v is not None}
    return LandscapeEvaluator(model, loss_fn, data, directions, **kwargs)


def _base(ev: LandscapeEvaluator, base: Any) -> np.ndarray:
    k = ev.num_directions
    if base is None:
        return np.zeros(k)
    b = np.asarray(base, dtype=np.float64).reshape(-1)
    if b.size != k or not np.isfinite(b).all():
        raise ValueError(f"base must hold {k} finite coordinates (one per direction), got {base!r}")
    return b


def _new_metrics(ev: LandscapeEvaluator, shape: tuple[int, ...]) -> dict[str, np.ndarray | None]:
    return {m: np.full(shape, np.nan) if m in ev.metrics else None for m in METRICS}


def _check_resume(resume: LandscapeResult | None, result: LandscapeResult) -> None:
    if resume is None:
        return
    if type(resume) is not type(result):
        raise ValueError(f"resume is a {type(resume).__name__}, not a {type(result).__name__}")
    for name in result._grid_fields:
        a, b = np.asarray(getattr(resume, name)), np.asarray(getattr(result, name))
        if a.shape != b.shape or not np.array_equal(a, b):
            raise ValueError(f"resume was computed on other {name}; pass the same grid")
    if resume.metrics != result.metrics or resume.bn != result.bn:
        raise ValueError("resume was computed with other data or BatchNorm mode")
    if resume.labels != result.labels or resume.eigenvalues != result.eigenvalues:
        raise ValueError(
            f"resume was computed along other directions ({resume.labels}, not "
            f"{result.labels}); pass the same directions"
        )
    for m in result.metrics:
        getattr(result, m)[...] = getattr(resume, m)
    result.done[...] = resume.done


def _drive(
    ev: LandscapeEvaluator,
    result: LandscapeResult,
    cells: np.ndarray,
    levels: np.ndarray,
    progress_interval: float,
) -> Iterator[LandscapeProgress]:
    """Evaluate the grid cells (rows of ``cells``, ``(G, k)`` coordinates) level by level,
    each distinct point once, writing into ``result`` and reporting progress."""
    t0 = time.perf_counter()
    metrics = ev.metrics
    flat = {m: getattr(result, m).reshape(-1) for m in metrics}
    done = result.done.reshape(-1)
    uniq, inverse = np.unique(cells, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    u_level = np.full(len(uniq), np.iinfo(np.int64).max)
    np.minimum.at(u_level, inverse, levels)
    first_cell = np.full(len(uniq), len(cells))
    np.minimum.at(first_cell, inverse, np.arange(len(cells)))
    # points already known (resume): share their values with every cell they map to
    u_done = np.zeros(len(uniq), dtype=bool)
    if done.any():
        src = np.full(len(uniq), -1)
        src[inverse[done]] = np.nonzero(done)[0]
        u_done = src >= 0
        fill = ~done & u_done[inverse]
        for m in metrics:
            flat[m][fill] = flat[m][src[inverse[fill]]]
        done[fill] = True
    todo = np.nonzero(~u_done)[0]
    todo = todo[np.lexsort((first_cell[todo], u_level[todo]))]
    level_values = np.unique(u_level[todo]) if todo.size else np.array([], dtype=int)
    num_levels = int(levels.max()) + 1 if levels.size else 0
    total = len(cells)
    meta = result.meta
    meta.update(ev.info())
    last_report = time.perf_counter()
    pending = 0
    try:
        for level in level_values:
            batch = todo[u_level[todo] == level]
            coords = torch.from_numpy(uniq[batch])
            for idx, vals in ev.iter_chunks(coords):
                us = batch[idx]
                lookup = np.full(len(uniq), -1)
                lookup[us] = np.arange(len(us))
                mask = lookup[inverse] >= 0
                pos = lookup[inverse[mask]]
                for m in metrics:
                    flat[m][mask] = vals[m][pos]
                done[mask] = True
                pending += int(mask.sum())
                level_ends = idx[-1] == len(batch) - 1  # reported just below
                if not level_ends and time.perf_counter() - last_report >= progress_interval:
                    meta["seconds"] = time.perf_counter() - t0
                    yield LandscapeProgress(
                        result,
                        pending,
                        int(done.sum()),
                        total,
                        int(level),
                        num_levels,
                        False,
                        time.perf_counter() - t0,
                    )
                    pending, last_report = 0, time.perf_counter()
            meta["seconds"] = time.perf_counter() - t0
            meta["strategy"] = ev.strategy
            yield LandscapeProgress(
                result,
                pending,
                int(done.sum()),
                total,
                int(level),
                num_levels,
                True,
                time.perf_counter() - t0,
            )
            pending, last_report = 0, time.perf_counter()
    finally:
        meta.update(ev.info())
        meta["seconds"] = time.perf_counter() - t0
        meta["distinct_points"] = int(len(uniq))


def _run(
    gen: Iterator[LandscapeProgress],
    result: LandscapeResult,
    callback: Callable[[LandscapeProgress], Any] | None,
    on_interrupt: str,
) -> LandscapeResult:
    if on_interrupt not in ("return", "raise"):
        raise ValueError(f"on_interrupt must be 'return' or 'raise', got {on_interrupt!r}")
    try:
        for progress in gen:
            if callback is not None and callback(progress) is False:
                result.interrupted = not result.complete
                break
    except KeyboardInterrupt:
        result.interrupted = True
        if on_interrupt == "raise":
            raise
        warnings.warn(
            f"landscape interrupted: {result.num_done} of {result.num_points} points kept "
            "(pass resume=result to continue)",
            RuntimeWarning,
            stacklevel=3,
        )
    finally:
        gen.close()
    return result


# --------------------------------------------------------------------------------------
# 1D


def _setup_1d(
    model,
    loss_fn,
    data,
    directions,
    options,
    *,
    span,
    num_points,
    coords,
    base,
    progressive,
    coarse,
    resume,
) -> tuple[LandscapeEvaluator, Landscape1D, np.ndarray, np.ndarray]:
    ev = _evaluator(model, loss_fn, data, directions, options)
    t = _axis(span, num_points, coords, "coords")
    b = _base(ev, base)
    k = ev.num_directions
    cells = np.repeat(b[None, :], k * t.size, axis=0).reshape(k, t.size, k)
    for i in range(k):
        cells[i, :, i] += t
    lv = axis_levels(t.size, coarse) if progressive else np.zeros(t.size, dtype=int)
    levels = np.broadcast_to(lv, (k, t.size)).reshape(-1)
    result = Landscape1D(
        directions=ev.directions.info(),
        bn=ev.bn,
        reduction=ev.reduction,
        coords=t,
        done=np.zeros((k, t.size), dtype=bool),
        meta={"base": b.tolist()} if base is not None else {},
        **_new_metrics(ev, (k, t.size)),
    )
    _check_resume(resume, result)
    return ev, result, cells.reshape(-1, k), levels


def iter_landscape_1d(
    model: nn.Module | LandscapeEvaluator,
    loss_fn: Any = None,
    data: Any = None,
    directions: Any = None,
    *,
    test_data: Any = None,
    span: float | tuple[float, float] = 1.0,
    num_points: int = 21,
    coords: Sequence[float] | np.ndarray | None = None,
    base: Sequence[float] | None = None,
    bn: str | None = None,
    bn_data: Any = None,
    params: ParamSpec = None,
    origin: torch.Tensor | None = None,
    progressive: bool = True,
    coarse: int = 5,
    progress_interval: float = 0.25,
    resume: Landscape1D | None = None,
    batch_points: int | str | None = None,
    memory_budget: int | None = None,
    cache_data: bool | str | None = None,
    accuracy_fn: Callable | None = None,
    batch_layout: Callable | None = None,
    outputs: Callable | None = None,
) -> Iterator[LandscapeProgress]:
    """:func:`landscape_1d` as a generator of :class:`LandscapeProgress` reports."""
    options = {k: v for k, v in locals().items() if k in _EVALUATOR_KEYS}
    ev, result, cells, levels = _setup_1d(
        model,
        loss_fn,
        data,
        directions,
        options,
        span=span,
        num_points=num_points,
        coords=coords,
        base=base,
        progressive=progressive,
        coarse=coarse,
        resume=resume,
    )
    return _drive(ev, result, cells, levels, progress_interval)


def landscape_1d(
    model: nn.Module | LandscapeEvaluator,
    loss_fn: Any = None,
    data: Any = None,
    directions: Any = None,
    *,
    test_data: Any = None,
    span: float | tuple[float, float] = 1.0,
    num_points: int = 21,
    coords: Sequence[float] | np.ndarray | None = None,
    base: Sequence[float] | None = None,
    bn: str | None = None,
    bn_data: Any = None,
    params: ParamSpec = None,
    origin: torch.Tensor | None = None,
    progressive: bool = True,
    coarse: int = 5,
    callback: Callable[[LandscapeProgress], Any] | None = None,
    progress_interval: float = 0.25,
    on_interrupt: str = "return",
    resume: Landscape1D | None = None,
    batch_points: int | str | None = None,
    memory_budget: int | None = None,
    cache_data: bool | str | None = None,
    accuracy_fn: Callable | None = None,
    batch_layout: Callable | None = None,
    outputs: Callable | None = None,
) -> Landscape1D:
    """Loss and accuracy along lines ``w0 + t d_i`` through the origin, one per direction.

    The original package's picture (``build_loss_landscape``: ``t`` in
    ``linspace(-1, 1, 21)``, train and test loss/accuracy, BatchNorm recalibrated at each
    point), computed on a private copy of the model, many points per pass.

    Args:
        model: the network, or a :class:`LandscapeEvaluator` (then leave out ``loss_fn``,
            ``data``, ``directions`` and the evaluator options).
        loss_fn: ``loss_fn(outputs, targets)``, reduction "mean" or "sum".
        data: training data (DataLoader, iterable of ``(inputs, targets)``, or one batch).
        directions: :class:`~jupyter_curvature.landscape.Directions` (e.g. from
            :func:`~jupyter_curvature.landscape.eigen_directions`) or vectors.
        test_data: test data, evaluated too when given.
        span: ``t`` runs over ``[-span, span]``, or over ``(low, high)``.
        num_points: points per line.
        coords: explicit ``t`` values instead of ``span`` / ``num_points``.
        base: coordinates of the point the lines go through (default: the origin).
        bn: ``"eval"`` (default) or ``"recalibrate"`` (the original's behaviour).
        bn_data: data for recalibration (default ``data``).
        params: which parameters the directions live on.
        origin: flat ``(n,)`` weights to start from (default: the model's).
        progressive: coarse points first (see the module docstring).
        coarse: points per axis of the first level.
        callback: called with a :class:`LandscapeProgress`; return ``False`` to stop.
        progress_interval: the most seconds between reports within a level.
        on_interrupt: ``"return"`` the finished points on ``KeyboardInterrupt``, or
            ``"raise"``.
        resume: a partial result of the same grid to complete.
        batch_points, memory_budget, cache_data, accuracy_fn, batch_layout, outputs: see
            :class:`LandscapeEvaluator`.

    Returns:
        :class:`Landscape1D`, metric arrays ``(k, num_points)``.

    Raises:
        ValueError: bad directions (length, NaN, zero), an empty grid, data without
            batches, an unknown BatchNorm mode, ...
    """
    options = {k: v for k, v in locals().items() if k in _EVALUATOR_KEYS}
    ev, result, cells, levels = _setup_1d(
        model,
        loss_fn,
        data,
        directions,
        options,
        span=span,
        num_points=num_points,
        coords=coords,
        base=base,
        progressive=progressive,
        coarse=coarse,
        resume=resume,
    )
    return _run(
        _drive(ev, result, cells, levels, progress_interval), result, callback, on_interrupt
    )


# --------------------------------------------------------------------------------------
# 2D


def _setup_2d(
    model,
    loss_fn,
    data,
    directions,
    options,
    *,
    span,
    span_y,
    num_points,
    xs,
    ys,
    axes,
    base,
    progressive,
    coarse,
    resume,
) -> tuple[LandscapeEvaluator, Landscape2D, np.ndarray, np.ndarray]:
    ev = _evaluator(model, loss_fn, data, directions, options)
    k = ev.num_directions
    if axes is None:
        if k != 2:
            raise ValueError(
                f"landscape_2d needs exactly two directions, got {k}; pass two, or choose a "
                "pair with axes=(i, j)"
            )
        axes = (0, 1)
    a, b_ = (int(i) for i in axes)
    if not (0 <= a < k and 0 <= b_ < k) or a == b_:
        raise ValueError(f"axes must be two different indices below {k}, got {axes!r}")
    if np.ndim(num_points) == 0:
        nx = ny = num_points
    elif len(num_points) == 2:
        nx, ny = num_points
    else:
        raise ValueError(f"num_points must be an int or a pair (nx, ny), got {num_points!r}")
    gx = _axis(span, nx, xs, "xs")
    gy = _axis(span if span_y is None else span_y, ny, ys, "ys")
    base_c = _base(ev, base)
    cells = np.repeat(base_c[None, :], gx.size * gy.size, axis=0).reshape(gx.size, gy.size, k)
    cells[:, :, a] += gx[:, None]
    cells[:, :, b_] += gy[None, :]
    if progressive:
        lx, ly = axis_levels(gx.size, coarse), axis_levels(gy.size, coarse)
        levels = np.maximum(lx[:, None], ly[None, :]).reshape(-1)
    else:
        levels = np.zeros(gx.size * gy.size, dtype=int)
    info = ev.directions.info()
    meta: dict[str, Any] = {}
    if k != 2 or base is not None:
        meta.update({"axes": [a, b_], "base": base_c.tolist(), "all_directions": info})
    result = Landscape2D(
        directions=[info[a], info[b_]],
        bn=ev.bn,
        reduction=ev.reduction,
        xs=gx,
        ys=gy,
        done=np.zeros((gx.size, gy.size), dtype=bool),
        meta=meta,
        **_new_metrics(ev, (gx.size, gy.size)),
    )
    _check_resume(resume, result)
    return ev, result, cells.reshape(-1, k), levels


def iter_landscape_2d(
    model: nn.Module | LandscapeEvaluator,
    loss_fn: Any = None,
    data: Any = None,
    directions: Any = None,
    *,
    test_data: Any = None,
    span: float | tuple[float, float] = 1.0,
    span_y: float | tuple[float, float] | None = None,
    num_points: int | tuple[int, int] = 21,
    xs: Sequence[float] | np.ndarray | None = None,
    ys: Sequence[float] | np.ndarray | None = None,
    axes: tuple[int, int] | None = None,
    base: Sequence[float] | None = None,
    bn: str | None = None,
    bn_data: Any = None,
    params: ParamSpec = None,
    origin: torch.Tensor | None = None,
    progressive: bool = True,
    coarse: int = 5,
    progress_interval: float = 0.25,
    resume: Landscape2D | None = None,
    batch_points: int | str | None = None,
    memory_budget: int | None = None,
    cache_data: bool | str | None = None,
    accuracy_fn: Callable | None = None,
    batch_layout: Callable | None = None,
    outputs: Callable | None = None,
) -> Iterator[LandscapeProgress]:
    """:func:`landscape_2d` as a generator of :class:`LandscapeProgress` reports."""
    options = {k: v for k, v in locals().items() if k in _EVALUATOR_KEYS}
    ev, result, cells, levels = _setup_2d(
        model,
        loss_fn,
        data,
        directions,
        options,
        span=span,
        num_points=num_points,
        xs=xs,
        ys=ys,
        axes=axes,
        base=base,
        span_y=span_y,
        progressive=progressive,
        coarse=coarse,
        resume=resume,
    )
    return _drive(ev, result, cells, levels, progress_interval)


def landscape_2d(
    model: nn.Module | LandscapeEvaluator,
    loss_fn: Any = None,
    data: Any = None,
    directions: Any = None,
    *,
    test_data: Any = None,
    span: float | tuple[float, float] = 1.0,
    span_y: float | tuple[float, float] | None = None,
    num_points: int | tuple[int, int] = 21,
    xs: Sequence[float] | np.ndarray | None = None,
    ys: Sequence[float] | np.ndarray | None = None,
    axes: tuple[int, int] | None = None,
    base: Sequence[float] | None = None,
    bn: str | None = None,
    bn_data: Any = None,
    params: ParamSpec = None,
    origin: torch.Tensor | None = None,
    progressive: bool = True,
    coarse: int = 5,
    callback: Callable[[LandscapeProgress], Any] | None = None,
    progress_interval: float = 0.25,
    on_interrupt: str = "return",
    resume: Landscape2D | None = None,
    batch_points: int | str | None = None,
    memory_budget: int | None = None,
    cache_data: bool | str | None = None,
    accuracy_fn: Callable | None = None,
    batch_layout: Callable | None = None,
    outputs: Callable | None = None,
) -> Landscape2D:
    """Loss and accuracy over the plane ``w0 + x d_a + y d_b``.

    Args:
        model, loss_fn, data, directions, test_data: as for :func:`landscape_1d`;
            ``directions`` holds two directions (or pick two with ``axes``).
        span: both axes run over ``[-span, span]``, or over ``(low, high)``.
        span_y: a different span for the y axis.
        num_points: points per axis, or ``(nx, ny)``.
        xs, ys: explicit coordinates instead of ``span`` / ``num_points``.
        axes: which two directions span the plane (default ``(0, 1)``).
        base: coordinates of the plane's centre over all directions (default: the origin).
        bn, bn_data, params, origin, progressive, coarse, callback, progress_interval,
            on_interrupt, resume, batch_points, memory_budget, cache_data, accuracy_fn,
            batch_layout, outputs: as for :func:`landscape_1d`.

    Returns:
        :class:`Landscape2D`, metric arrays ``(len(xs), len(ys))``.
    """
    options = {k: v for k, v in locals().items() if k in _EVALUATOR_KEYS}
    ev, result, cells, levels = _setup_2d(
        model,
        loss_fn,
        data,
        directions,
        options,
        span=span,
        num_points=num_points,
        xs=xs,
        ys=ys,
        axes=axes,
        base=base,
        span_y=span_y,
        progressive=progressive,
        coarse=coarse,
        resume=resume,
    )
    return _run(
        _drive(ev, result, cells, levels, progress_interval), result, callback, on_interrupt
    )
