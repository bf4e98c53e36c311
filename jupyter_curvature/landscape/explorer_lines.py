"""The explorer's 1D lines: a live preview on a subsample, then exact lines from a worker.

:class:`ExactLines` is the part of
:class:`~jupyter_curvature.landscape.explorer.HeadlessExplorer` that keeps the 1D lines
through the current point:

- **Preview calibration.** With ``preview="auto"`` a full-data line is timed when the
  explorer is built; when it costs more than :data:`LIVE_LINE_BUDGET`, moves compute the
  changed lines on a fixed, seeded subsample
  (:func:`~jupyter_curvature.landscape.subsample_data`, read once for every size tried
  through :class:`~jupyter_curvature.landscape.NestedSubsamples`) of the largest size in
  :data:`PREVIEW_SIZES` whose measured line fits the budget.
- **The cache of exact lines**, keyed by the other coordinates (and the directions' epoch):
  returning to a place shows its exact lines at once.
- **The background worker** computes the exact full-data lines once the coordinates have
  been still for ``exact_delay`` seconds; a move cancels its pending work after the current
  chunk. :meth:`ExactLines.wait_exact` blocks until the exact lines were *announced* (the
  ``"lines"`` callbacks ran), not merely computed.

It uses the host's ``lock``, ``closed``, ``report_error``, ``_emit``, ``_evaluator``,
``_perturber``, ``directions``, ``ts``, ``num_points``, ``metric``, ``metrics``, ``seed``,
``data``, ``test_data``, ``loss_fn``, ``bn``, ``num_samples`` and ``evaluate``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._data import NestedSubsamples

__all__ = ["LIVE_LINE_BUDGET", "PREVIEW_SIZES", "ExactLines"]

#: seconds a live 1D line may take to evaluate (the bar is 200 ms for the whole redraw, point
#: included); ``preview="auto"`` turns the subsample preview on when a full-data line costs more
LIVE_LINE_BUDGET = 0.1
#: subsample sizes ``preview="auto"`` chooses from (the largest that fits the budget)
PREVIEW_SIZES = (1024, 512, 256, 128, 64)
#: entries of the cache of exact lines
_CACHE_LINES = 256


def check_preview(preview: Any) -> int | str | None:
    """``preview`` checked: ``"auto"``, ``None`` or a positive number of samples."""
    if preview is None or preview == "auto":
        return preview
    if isinstance(preview, bool) or not isinstance(preview, (int, np.integer)) or preview < 1:
        raise ValueError(
            f"preview must be 'auto', None or a positive number of samples, got {preview!r}"
        )
    return int(preview)


class ExactLines:
    """The 1D lines of the explorer: preview, cache of exact lines, background worker."""

    # ---------------------------------------------------------------------------------
    # state

    def _init_preview(self, preview: Any) -> None:
        self._preview_request = check_preview(preview)
        self.preview_samples: int | None = None  # decided after the first (exact) lines
        # per source, every preview size from one read of the data (sizes are tried in turn)
        self._subsamples: dict[str, NestedSubsamples] = {}
        self._preview_bp = self._batch_points
        self._preview_evals: dict[str, Any] = {}

    def _init_lines(self, k: int) -> None:
        self.lines: dict[str, np.ndarray] = {}
        self._lines_have: set[int] = set()
        self.line_exact = np.zeros(k, dtype=bool)  # whether line j holds full-data values
        self.preview_lines: dict[str, np.ndarray] = {}  # the last preview values, per metric
        self._exact_cache: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()
        self.exact_delay = 0.1  # seconds the coordinates stay still before exact lines
        self._generation = 0  # bumped by every move: cancels the worker's stale work
        self._epoch = 0  # bumped by new directions or origin: part of every cache key
        self._cv = threading.Condition()
        self._want: tuple[int, int, np.ndarray] | None = None
        self._want_time = 0.0
        self._worker: threading.Thread | None = None
        self._worker_busy = False
        self._stop = False
        # wait_exact's event: notified after every announcement of the 1D lines, a worker
        # error and close. It guards only the flag below and is never held while taking
        # another lock.
        self._lines_shown = threading.Condition()
        self._exact_shown = False  # whether the last announcement had every line exact

    def _reset_lines(self) -> None:
        """Forget every line (new directions or origin)."""
        self.lines = {}
        self._lines_have = set()
        self.preview_lines = {}
        self.line_exact[:] = False
        with self._cv:
            self._exact_cache.clear()
            self._epoch += 1
            self._generation += 1

    @property
    def worker(self) -> threading.Thread | None:
        """The background thread of exact lines (``None`` until a preview needed it)."""
        return self._worker

    # ---------------------------------------------------------------------------------
    # preview calibration

    def _decide_preview(self) -> None:
        """Turn the subsample preview on when a full-data line is too slow to be live."""
        req = self._preview_request
        n_train = self.num_samples("train")
        if req is None:
            return
        if req == "auto":
            per_point = self._evaluator.seconds_per_point()
            if per_point is None or self.num_points * per_point <= LIVE_LINE_BUDGET:
                return
            # one source per preview (the one shown); the cost scales with the samples
            per_sample = per_point / (n_train + self.num_samples("test"))
            fits = [
                s for s in PREVIEW_SIZES if self.num_points * per_sample * s <= LIVE_LINE_BUDGET
            ]
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
        options = [1, self.num_points] if self._batch_points == "auto" else [self._batch_points]
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
            total = self.num_samples(source)
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
            loss = loss * (self.num_samples(source) / len(self.preview_data(source)[1]))
        return {f"{source}_loss": loss, f"{source}_accuracy": vals["train_accuracy"]}

    # ---------------------------------------------------------------------------------
    # the lines through the point

    def _update_lines(self, coords: np.ndarray, moved: set[int]) -> None:
        """Recompute the 1D line along each direction ``j`` whose line the move changed.

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
                n = self.num_points
                for r, j in enumerate(fresh):
                    line = {m: vals[m][r * n : (r + 1) * n] for m in vals}
                    self._cache_put(j, coords, line)
                    self._set_line(j, line, exact=True)
            else:
                self._preview_rows(coords, fresh)
        self._lines_have |= set(redo)
        if not self.line_exact.all():
            self._request_exact(coords)
        self._lines_changed()

    def _line_block(self, coords: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        """The points of the lines along ``rows`` through ``coords``, line after line."""
        n = self.num_points
        block = np.repeat(coords[None, :], len(rows) * n, axis=0)
        for r, j in enumerate(rows):
            block[r * n : (r + 1) * n, j] = self.ts
        return block

    def _preview_rows(self, coords: np.ndarray, rows: Sequence[int]) -> None:
        """Preview lines along ``rows``: the shown metric's data only, on its subsample."""
        source = self.metric.split("_", 1)[0]
        vals = self._preview_evaluate(source, self._line_block(coords, rows))
        n = self.num_points
        for r, j in enumerate(rows):
            line = {m: v[r * n : (r + 1) * n] for m, v in vals.items()}
            for m in self.metrics:
                arr = self.preview_lines.get(m)
                if arr is None:
                    arr = self.preview_lines[m] = np.full((len(coords), n), np.nan)
                arr[j] = line.get(m, np.nan)
            self._set_line(j, line, exact=False)

    def _set_line(self, j: int, line: dict[str, np.ndarray], exact: bool) -> None:
        """Store line ``j`` (metrics missing from ``line`` become NaN until the exact line)."""
        k = len(self.directions)
        for name in self.metrics:
            arr = self.lines.get(name)
            arr = np.full((k, self.num_points), np.nan) if arr is None else arr.copy()
            arr[j] = line.get(name, np.nan)
            self.lines[name] = arr
        self.line_exact[j] = exact

    def _lines_changed(self) -> None:
        """Announce the lines (the ``"lines"`` callbacks), then wake :meth:`wait_exact`."""
        self._emit("lines")
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
        """The worker: waits for the coordinates to stay still, then computes exact lines."""
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
            except Exception as exc:  # reported (a view shows it), like a callback's
                self.report_error(exc, "exact 1D lines")
                self._notify_lines_shown()
            finally:
                with self._cv:
                    self._worker_busy = False
                    self._cv.notify_all()

    def _stale(self, gen: int) -> bool:
        return self._stop or self._generation != gen

    def _compute_exact(self, gen: int, epoch: int, coords: np.ndarray) -> None:
        """The exact full-data lines at ``coords``, line by line, each announced when done;
        gives up (keeping finished lines in the cache) as soon as a move makes them stale."""
        for j in [j for j in range(len(coords)) if not self.line_exact[j]]:
            line = self._cache_get(j, coords, epoch)
            if line is None:
                ev = self._evaluator
                if ev is None or self._stale(gen):
                    return
                c = ev.check_coords(self._line_block(coords, [j]))
                out = {m: np.full(self.num_points, np.nan) for m in ev.metrics}
                for idx, vals in ev.iter_chunks(c):
                    for m in ev.metrics:
                        out[m][idx] = vals[m]
                    if self._stale(gen):
                        return
                self._cache_put(j, coords, out, epoch)
                line = out
            # never wait on the explorer's lock while a closing thread may hold it
            while not self.lock.acquire(timeout=0.05):
                if self._stale(gen):
                    return
            try:
                if self._stale(gen) or self.closed:
                    return
                self._set_line(j, line, exact=True)
                self._lines_changed()
            finally:
                self.lock.release()

    def _stop_worker(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()

    def _join_worker(self) -> None:
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=30)  # at most one chunk of points

    def wait_exact(self, timeout: float = 60.0) -> bool:
        """Block until the 1D lines are announced with their exact full-data values
        (``True``), or until ``timeout`` seconds passed, the explorer closed or an error was
        reported (``False``).

        It waits on the announcement itself, not on :attr:`line_exact`: the worker marks a
        line exact a moment before it calls the ``"lines"`` callbacks (a view redraws
        there), and a caller that returned in between would read the preview's drawing."""
        errors = self.error_count

        def settled() -> bool:
            return self._exact_shown or self.closed or self.error_count > errors

        with self._lines_shown:
            self._lines_shown.wait_for(settled, timeout)
            return self._exact_shown and not self.closed and self.error_count == errors
