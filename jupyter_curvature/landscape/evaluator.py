"""Loss and accuracy at many points ``w0 + sum_i c_i d_i``, without touching the model.

:class:`LandscapeEvaluator` copies the model once (``copy.deepcopy``) and evaluates every
point on that private copy, so the caller's model (its weights, buffers and train/eval
flags) is never read again nor written: a slider thread can call it while the model
trains. Two ways to run points, chosen by measuring (``batch_points="auto"``):

- **batched**: ``torch.func.vmap`` over ``torch.func.functional_call`` runs ``P`` points
  in one pass over each data batch (the weights carry a leading point dimension); ``P`` is
  capped by a memory estimate and halved on out-of-memory errors;
- **one at a time**: the point's weights are copied into the private model, which runs
  as a plain module (no per-call re-parametrisation cost).

Either way the data is read once, kept on the model's device (up to ``cache_bytes``) and
reused by every point.

BatchNorm (``bn``):

- ``"eval"``: every point uses the running statistics the model had at the origin;
- ``"recalibrate"``: at every point the running statistics are recomputed from
  ``bn_data`` (default: the training data) before evaluating, as the original package's
  ``bn_update`` did: one pass in train mode with momentum ``b / (n + b)`` per batch, i.e.
  the sample-weighted mean of the batch means and of the (unbiased) batch variances.
  Dropout stays off during that pass (the original left it on), so results are
  deterministic. The model's own buffers are never touched.

Loss: for ``reduction="mean"`` the mean over all samples (batches weighted by size; by
their counted tokens for :class:`~jupyter_curvature.core.losses.TokenCrossEntropy`), for
``"sum"`` the sum. Accuracy: top-1, when the outputs are ``(..., C)`` scores and the targets
integer class indices of shape ``(...)`` (for a token loss: over the counted tokens, its
``correct``); otherwise NaN (or your ``accuracy_fn``).
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from ..core.batches import Batch, BatchLayout
from ..core.inputs import (
    OutputsFn,
    check_finite_parameters,
    explain_forward,
    explain_loss,
    model_outputs,
    require_tensor_outputs,
)
from ..core.losses import (
    class_dim,
    counted_labels,
    has_terms,
    mean_weight,
    no_counted_terms_error,
)
from ..core.params import ParamSpec, select_parameters, unflatten
from ._data import DEFAULT_CACHE_BYTES, CachedBatches
from .directions import Directions, as_directions

__all__ = ["LandscapeEvaluator", "BN_MODES"]

BN_MODES = ("eval", "recalibrate")

#: chunk sizes tried by the batched strategy while tuning, in order
_TRIAL_SIZES = (8, 32, 128)
_MAX_POINTS_PER_PASS = 256
#: outputs of one point gathered before the loss is taken over them (see ``_pass``)
_GROUP_BYTES = 4 << 20


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in msg or "can't allocate memory" in msg or "not enough memory" in msg
    )


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 << 30
    return int(min(2 << 30, 0.25 * avail))


class LandscapeEvaluator:
    """Evaluates loss and accuracy at points ``w0 + sum_i c_i d_i`` on a private copy.

    Args:
        model: the network (copied once; never changed).
        loss_fn: ``loss_fn(outputs, targets)`` returning a scalar (``reduction`` "mean" or
            "sum").
        data: training data: a DataLoader, an iterable of ``(inputs, targets)`` or a batch.
        directions: :class:`~jupyter_curvature.landscape.Directions` or vectors (see
            :func:`~jupyter_curvature.landscape.perturbed`).
        test_data: optional test data, evaluated at every point too.
        bn: ``"eval"`` or ``"recalibrate"`` (see the module docstring).
        bn_data: data for recalibration (default ``data``).
        params: which parameters the directions live on (default: all trainable ones).
        origin: flat ``(n,)`` weights to move from (default: the model's current ones).
        batch_points: ``"auto"`` (measure and choose), ``1`` (one point at a time), or the
            most points per batched pass.
        memory_budget: bytes the batched strategy may use (default: half the free GPU
            memory, or min(2 GiB, a quarter of free RAM) on CPU).
        cache_data: ``"auto"`` (keep data up to ``cache_bytes`` on the device), ``True`` or
            ``False`` (read the loader again at every pass).
        cache_bytes: the cap for ``cache_data="auto"``, per dataset.
        accuracy_fn: ``accuracy_fn(outputs, targets) -> number of correct samples`` (tokens,
            for a token loss, whose own ``correct`` is the default) instead of top-1.
        batch_layout: ``layout(batch) -> (model_args, targets)`` for batches that are not
            ``(inputs, targets)`` pairs (as for the curvature operators).
        outputs: ``fn(model_output) -> tensor`` for a model that returns a tuple or a dict
            (``outputs=lambda out: out["logits"]``), as for the curvature operators.
        state: name -> tensor values for other parameters and buffers (used by
            :class:`~jupyter_curvature.landscape.Perturber` to evaluate at its snapshot).

    Raises:
        ValueError: bad directions, mode, data without batches, a loss that is not a scalar.
        TypeError: a model that cannot be copied, a loss_fn that is not callable.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
        data: Any,
        directions: Any,
        *,
        test_data: Any = None,
        bn: str = "eval",
        bn_data: Any = None,
        params: ParamSpec = None,
        origin: torch.Tensor | None = None,
        batch_points: int | str = "auto",
        memory_budget: int | None = None,
        cache_data: bool | str = "auto",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        accuracy_fn: Callable[[Any, torch.Tensor], Any] | None = None,
        batch_layout: BatchLayout | None = None,
        outputs: OutputsFn | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if bn not in BN_MODES:
            raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
        if batch_points != "auto" and (
            not isinstance(batch_points, (int, np.integer)) or batch_points < 1
        ):
            raise ValueError(f"batch_points must be 'auto' or a positive int, got {batch_points!r}")
        if cache_data not in ("auto", True, False):
            raise ValueError(f"cache_data must be 'auto', True or False, got {cache_data!r}")
        reduction = getattr(loss_fn, "reduction", "mean")
        if reduction not in ("mean", "sum"):
            raise ValueError(
                f"loss_fn has reduction={reduction!r}; the landscape needs a scalar loss: use "
                "reduction='mean' or 'sum'"
            )
        named = select_parameters(model, params)
        self.param_names = [name for name, _ in named]
        replaced = set(self.param_names) if origin is not None else set()  # origin stands in
        check_finite_parameters([(n, p) for n, p in model.named_parameters() if n not in replaced])
        self.outputs = outputs
        self.num_params = sum(p.numel() for _, p in named)
        self.directions: Directions = as_directions(
            directions, self.num_params, param_names=self.param_names
        )
        self.loss_fn = loss_fn
        self.reduction = reduction
        self.bn = bn
        # a token loss counts its own top-1 hits over the tokens that count (``correct``)
        correct = getattr(loss_fn, "correct", None) if has_terms(loss_fn) else None
        self.accuracy_fn = accuracy_fn if accuracy_fn is not None else correct

        try:
            template = copy.deepcopy(model)
        except Exception as exc:  # noqa: BLE001 - any failure means the same remedy
            raise TypeError(
                f"the model cannot be copied with copy.deepcopy ({type(exc).__name__}: {exc}); "
                "the landscape evaluates points on a private copy so that the model itself is "
                "never changed: make the model deep-copyable"
            ) from exc
        template.eval()
        for p in template.parameters():
            p.requires_grad_(False)
        tparams = dict(template.named_parameters())
        tbuffers = dict(template.named_buffers())
        if state:
            with torch.no_grad():
                for name, value in state.items():
                    target = tparams.get(name, tbuffers.get(name))
                    if target is not None:
                        target.copy_(value)
        self._template = template
        self._tp = [tparams[name] for name in self.param_names]
        self.device = self._tp[0].device
        self.dtype = self._tp[0].dtype
        if origin is None:
            self._origin = [p.detach().clone() for p in self._tp]
        else:
            origin = torch.as_tensor(origin).detach()
            if origin.ndim != 1 or origin.numel() != self.num_params:
                raise ValueError(
                    f"origin has shape {tuple(origin.shape)}, expected ({self.num_params},) "
                    "in select_parameters(model, params) order"
                )
            if not bool(torch.isfinite(origin).all()):
                raise ValueError("origin contains NaN or infinite values")
            self._origin = [
                t.to(p.device, p.dtype).clone()
                for t, p in zip(unflatten(origin, self._tp), self._tp, strict=True)
            ]
        # one flat (k, n) block when the parameters share a dtype and device (fewer, larger
        # ops per point), per-tensor blocks otherwise
        if len({(p.dtype, p.device) for p in self._tp}) == 1:
            matrix = self.directions.matrix()
            work = torch.promote_types(self.dtype, matrix.dtype)
            self._flat = (
                torch.cat([w.reshape(-1) for w in self._origin]).to(work),
                matrix.to(self.device, work),
            )
            self._parts, self._origin = [], []  # the flat copy is all that is needed
        else:
            self._flat = None
            self._parts = self.directions.per_tensor(self._tp)
        self._bn_modules = [
            (name, m)
            for name, m in template.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]

        kw = {"cache": cache_data, "cache_bytes": cache_bytes, "layout": batch_layout}
        self._sources: dict[str, CachedBatches] = {
            "train": CachedBatches(data, self.device, self.dtype, name="data", **kw)
        }
        if test_data is not None:
            self._sources["test"] = CachedBatches(
                test_data, self.device, self.dtype, name="test_data", **kw
            )
        self._bn_source = (
            CachedBatches(bn_data, self.device, self.dtype, name="bn_data", **kw)
            if bn_data is not None
            else self._sources["train"]
        )
        self.metrics = [f"{s}_{m}" for s in self._sources for m in ("loss", "accuracy")]

        self._lock = threading.Lock()
        self._batch_points = batch_points
        self._memory_budget = memory_budget
        self._vmap_ok = True
        self._pmax: int | None = None
        self._timings: dict[tuple[str, int], float] = {}
        self._trials = self._trial_plan()
        self._decided: tuple[str, int] | None = None
        if batch_points != "auto":
            size = int(batch_points)
            self._decided = ("loop", 1) if size == 1 else ("vmap", size)
        self.points_evaluated = 0
        self._activation_bytes = self._probe()

    # ---- public -------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return len(self.directions)

    @property
    def has_test(self) -> bool:
        return "test" in self._sources

    @property
    def num_batch_norm(self) -> int:
        return len(self._bn_modules)

    @property
    def strategy(self) -> str:
        """How points are run now: ``"one at a time"``, ``"batched xP"`` or ``"tuning"``."""
        plan = self._decided
        if plan is None:
            return "tuning"
        return "one at a time" if plan[0] == "loop" else f"batched x{plan[1]}"

    def info(self) -> dict[str, Any]:
        """What a result records about how it was computed."""
        return {
            "num_params": self.num_params,
            "param_dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "bn": self.bn,
            "num_batch_norm_layers": self.num_batch_norm,
            "reduction": self.reduction,
            "train_samples": self._sources["train"].num_samples,
            "test_samples": self._sources["test"].num_samples if self.has_test else 0,
            "data_cached": all(s.cached for s in self._sources.values()),
            "strategy": self.strategy,
            "seconds_per_point": {f"{m} x{p}": t for (m, p), t in sorted(self._timings.items())},
        }

    def __call__(self, coords: Any) -> dict[str, float]:
        """Metrics at one point ``(k,)``: ``{"train_loss": ..., "train_accuracy": ..., ...}``."""
        c = (
            np.asarray(coords, dtype=np.float64).reshape(1, -1)
            if np.ndim(coords)
            else (np.full((1, 1), float(coords)))
        )
        out = self.evaluate(c)
        return {m: float(v[0]) for m, v in out.items()}

    def evaluate(self, coords: Any) -> dict[str, np.ndarray]:
        """Metrics at ``P`` points, ``coords`` of shape ``(P, k)``; arrays of shape ``(P,)``."""
        c = self.check_coords(coords)
        out = {m: np.full(len(c), np.nan) for m in self.metrics}
        for idx, vals in self.iter_chunks(c):
            for m in self.metrics:
                out[m][idx] = vals[m]
        return out

    def check_coords(self, coords: Any) -> torch.Tensor:
        """``coords`` as a checked ``(P, k)`` float64 tensor."""
        c = torch.as_tensor(np.asarray(coords, dtype=np.float64))
        k = self.num_directions
        if c.ndim == 1 and k == 1:
            c = c[:, None]
        if c.ndim != 2 or c.shape[1] != k:
            raise ValueError(
                f"coords has shape {tuple(c.shape)}; give (P, {k}): one coordinate per "
                f"direction ({k}) for each point"
            )
        if c.shape[0] == 0:
            raise ValueError("coords holds no points; the grid is empty")
        if not bool(torch.isfinite(c).all()):
            raise ValueError("coords contains NaN or infinite values")
        return c

    def iter_chunks(
        self, coords: torch.Tensor
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Evaluate checked ``(P, k)`` coords chunk by chunk: yields ``(indices, metrics)``.

        Thread-safe: the choice of a chunk, its evaluation and its timing happen under one
        lock, released between chunks, so two threads (a slider and a background worker)
        can share an evaluator and each waits at most one chunk of the other's."""
        total, i = len(coords), 0
        while i < total:
            with self._lock:
                done = self._chunk(coords, i, total)
            if done is None:
                continue
            size, vals = done
            yield np.arange(i, i + size), vals
            i += size

    def _chunk(
        self, coords: torch.Tensor, i: int, total: int
    ) -> tuple[int, dict[str, np.ndarray]] | None:
        """Plan, evaluate and time the next chunk (lock held); ``None``: re-plan (shrunk)."""
        mode, size = self._plan(total - i)
        chunk = coords[i : i + size]
        t0 = time.perf_counter()
        try:
            vals = self._eval_vmap(chunk) if mode == "vmap" else self._eval_loop(chunk)
        except Exception as exc:
            if mode == "vmap" and _is_oom(exc):
                self._shrink(size)
                return None
            if mode == "vmap" and self._vmap_ok:
                warnings.warn(
                    f"batched evaluation with torch.func.vmap failed ({type(exc).__name__}: "
                    f"{exc}); evaluating one point at a time",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._vmap_ok = False
                self._decided = ("loop", 1)
                return None
            raise
        trial_sizes = {min(t, self._max_points()) for t in _TRIAL_SIZES}
        if mode == "loop" or size in trial_sizes or self._decided == (mode, size):
            self._record(
                "loop" if mode == "loop" else mode,
                1 if mode == "loop" else size,
                (time.perf_counter() - t0) / size,
            )
        self.points_evaluated += size
        return size, vals

    def seconds_per_point(self) -> float | None:
        """The best measured time per point (of any strategy tried), or ``None`` before any."""
        with self._lock:
            return min(self._timings.values()) if self._timings else None

    # ---- strategy -----------------------------------------------------------------------
    def _trial_plan(self) -> list[tuple[str, int]]:
        return [("loop", 1), ("loop", 1), *(("vmap", s) for s in _TRIAL_SIZES)]

    def _max_points(self) -> int:
        if self._pmax is None:
            work = max(d.element_size() for d in (self._flat or self._parts))
            param_bytes = sum(p.numel() * (p.element_size() + 2 * work) for p in self._tp)
            per_point = 2 * self._activation_bytes + param_bytes + _GROUP_BYTES
            budget = self._memory_budget or _default_budget(self.device)
            self._pmax = int(max(1, min(_MAX_POINTS_PER_PASS, budget // max(per_point, 1))))
        return self._pmax

    def _shrink(self, size: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._pmax = max(1, size // 2)
        if self._pmax == 1:
            self._vmap_ok = False

    def _plan(self, remaining: int) -> tuple[str, int]:
        """The next chunk: ``("loop", 1)`` or ``("vmap", points per pass)``.

        While tuning, the trials run in turn on real points: one point at a time (twice:
        the first pays for warm-up), then batches of 8 and 32 points, and 128 if 32 was the
        best so far. A trial runs only in a call with at least four times its points (so a
        bad trial costs little), else it waits for a later, larger call (the next
        refinement level); meanwhile the best strategy so far runs."""
        if self._decided is None:
            while self._trials:
                mode, size = self._trials[0]
                if mode == "vmap":
                    size = min(size, self._max_points())
                    if not self._vmap_ok or size < 2 or self._skip_trial(size):
                        self._trials.pop(0)
                        continue
                    if 4 * size > remaining:  # a trial is at most a quarter of a call's points
                        return self._capped(self._best(), remaining)
                self._trials.pop(0)
                return (mode, size)
            self._decided = self._best()
        return self._capped(self._decided, remaining)

    def _skip_trial(self, size: int) -> bool:
        loop = self._timings.get(("loop", 1), math.inf)
        tried = {p: t for (m, p), t in self._timings.items() if m == "vmap"}
        if size <= _TRIAL_SIZES[1]:  # 8 and 32: always worth a look, unless 8 was far slower
            return bool(tried) and min(tried.values()) > 2 * loop
        best = min(tried.items(), key=lambda kv: kv[1], default=(0, math.inf))
        return best[0] != max(tried, default=0) or best[1] > loop

    def _best(self) -> tuple[str, int]:
        if not self._vmap_ok or not self._timings:
            return ("loop", 1)
        (mode, size), _ = min(self._timings.items(), key=lambda kv: kv[1])
        return (mode, size)

    def _capped(self, plan: tuple[str, int], remaining: int) -> tuple[str, int]:
        mode, size = plan
        if mode == "vmap" and self._vmap_ok:
            size = min(size, self._max_points(), remaining)
            if size >= 2:
                return ("vmap", size)
        return ("loop", 1)  # one point per chunk: the finest interruption and progress

    def _record(self, mode: str, size: int, per_point: float) -> None:
        key = (mode, size)
        # the first point also pays for warm-up: a later one replaces it
        self._timings[key] = (
            per_point if key not in self._timings else min(per_point, self._timings[key])
        )

    # ---- points -------------------------------------------------------------------------
    def _points(self, coords: torch.Tensor) -> list[torch.Tensor]:
        """``(P, *shape)`` weights of every chosen tensor at ``P`` points.

        ``w0 + c_1 d_1 + c_2 d_2 + ...`` elementwise in the work dtype, rounded once to the
        parameter dtype: the same formula for any ``P``, so a point's weights do not depend
        on how it was batched, and they equal :func:`perturbed`'s."""
        P = coords.shape[0]
        if self._flat is not None:
            w0, D = self._flat
            c = coords.to(D.device, D.dtype)
            acc = w0.unsqueeze(0)
            for i in range(D.shape[0]):
                acc = acc + c[:, i : i + 1] * D[i]
            acc = acc.to(self.dtype)
            out, start = [], 0
            for p in self._tp:
                out.append(acc[:, start : start + p.numel()].view(P, *p.shape))
                start += p.numel()
            return out
        out = []
        for w0, d in zip(self._origin, self._parts, strict=True):
            c = coords.to(d.device, d.dtype)
            acc = w0.to(d.dtype).unsqueeze(0)
            for i in range(d.shape[0]):
                acc = acc + c[:, i].reshape(-1, *([1] * w0.ndim)) * d[i].unsqueeze(0)
            out.append(acc.to(w0.dtype))
        return out

    # ---- metrics ------------------------------------------------------------------------
    def _forward(self, batch: Batch) -> Any:
        return model_outputs(batch.call(self._template), self.outputs)

    def _check_loss(self, loss: Any) -> None:
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"loss_fn must return a scalar tensor, got {shape}; use reduction='mean' or 'sum'"
            )

    def _pass(self, source: CachedBatches, forward: Callable, batched: bool) -> tuple:
        """Loss and accuracy over ``source`` for one point (``()`` tensors) or ``P`` points
        (``(P,)``, outputs ``(P, B, ...)``).

        Outputs are gathered over consecutive batches, up to ``_GROUP_BYTES`` per point, and
        the loss and accuracy are taken once per group, as if the group were one batch
        (the engine's definition of the loss over data); groups are combined weighted by
        their sample counts, or counted tokens for a token loss ("mean"), or summed ("sum").
        A batch whose outputs have another shape than the group's (sequences of another
        length) starts a new group. The group boundaries depend only on the data, so one
        point gets the same groups alone or batched."""
        losses, weights, hits = [], [], []
        judged, classify, dim = 0, None, None
        outs, ys, group_n, group_bytes = [], [], 0, 0

        def flush() -> None:
            nonlocal judged, classify, dim
            if len(outs) == 1:
                out, y = outs[0], ys[0]
            else:
                out, y = torch.cat(outs, dim=1 if batched else 0), torch.cat(ys)
            one = out[0] if batched else out
            if classify is None:
                dim = class_dim(self.loss_fn, one, y)
                classify = self.accuracy_fn is not None or dim is not None
            if group_n == 0 and self.reduction == "mean":
                return  # every label of the group is ignored: no term of the mean, no hit
            if batched:
                losses.append(torch.stack([self.loss_fn(o, y) for o in out]))
            else:
                losses.append(self.loss_fn(out, y))
            weights.append(group_n)
            if classify and self.accuracy_fn is not None:
                acc = [self.accuracy_fn(o, y) for o in out] if batched else self.accuracy_fn(out, y)
                hits.append(torch.as_tensor(acc, dtype=torch.float64, device=self.device))
                judged += group_n
            elif classify:
                counted = counted_labels(self.loss_fn, y)
                right = (out.argmax(dim + batched) == y) & counted
                hits.append(right.flatten(1).sum(1) if batched else right.sum())
                judged += int(counted.sum())

        for batch in source:
            out = forward(batch)
            one = out[0] if batched else out
            if outs and tuple(one.shape[1:]) != tuple(outs[0].shape[2 if batched else 1 :]):
                flush()
                outs, ys, group_n, group_bytes = [], [], 0, 0
            outs.append(out)
            ys.append(batch.targets)
            group_n += mean_weight(self.loss_fn, batch)
            group_bytes += one.numel() * one.element_size()
            if group_bytes >= _GROUP_BYTES or not isinstance(batch.targets, torch.Tensor):
                flush()
                outs, ys, group_n, group_bytes = [], [], 0, 0
        if outs:
            flush()
        if not losses:
            raise no_counted_terms_error(self.loss_fn)
        per_group = torch.stack(losses).double()
        if self.reduction == "mean":
            w = torch.tensor(weights, dtype=torch.float64, device=per_group.device)
            loss = (per_group * w.reshape(-1, *([1] * (per_group.ndim - 1)))).sum(0) / sum(weights)
        else:
            loss = per_group.sum(0)
        if classify and judged:
            acc = torch.stack(hits).double().sum(0) / judged
        else:
            acc = torch.full_like(loss, math.nan)
        return loss, acc

    def _collect(
        self, vals: dict[str, list], name: str, loss: torch.Tensor, acc: torch.Tensor
    ) -> None:
        vals[f"{name}_loss"].append(loss.reshape(-1))
        vals[f"{name}_accuracy"].append(acc.reshape(-1))

    @staticmethod
    def _to_numpy(vals: dict[str, list]) -> dict[str, np.ndarray]:
        # one transfer per metric and chunk (no sync per point on a GPU)
        return {m: torch.cat(v).cpu().numpy() for m, v in vals.items()}

    # ---- one point at a time ------------------------------------------------------------
    def _recalibrate_loop(self) -> None:
        mods = [m for _, m in self._bn_modules]
        for m in mods:
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
            m.train()
        try:
            seen = 0
            for batch in self._bn_source:
                for m in mods:
                    m.momentum = batch.size / (seen + batch.size)
                self._forward(batch)
                seen += batch.size
        finally:
            for m in mods:
                m.eval()

    def _eval_loop(self, coords: torch.Tensor) -> dict[str, np.ndarray]:
        vals: dict[str, list] = {m: [] for m in self.metrics}
        with torch.no_grad():
            points = self._points(coords)
            for j in range(len(coords)):
                for tp, w in zip(self._tp, points, strict=True):
                    tp.copy_(w[j])
                if self.bn == "recalibrate" and self._bn_modules:
                    self._recalibrate_loop()
                for name, source in self._sources.items():
                    self._collect(vals, name, *self._pass(source, self._forward, False))
        return self._to_numpy(vals)

    # ---- batched ------------------------------------------------------------------------
    def _vforward(self, sel: dict, bufs: dict, batch: Batch) -> torch.Tensor:
        def fwd(s: dict, b: dict, a: tuple[Any, ...], kw: dict[str, Any]) -> Any:
            return model_outputs(functional_call(self._template, (s, b), a, kw), self.outputs)

        return vmap(fwd, in_dims=(0, 0, None, None))(sel, bufs, batch.args, batch.kwargs)

    def _eval_vmap(self, coords: torch.Tensor) -> dict[str, np.ndarray]:
        P, dev = len(coords), self.device
        vals: dict[str, list] = {m: [] for m in self.metrics}
        with torch.no_grad():
            sel = dict(zip(self.param_names, self._points(coords), strict=True))
            bufs: dict[str, torch.Tensor] = {}
            if self.bn == "recalibrate" and self._bn_modules:
                for name, m in self._bn_modules:
                    prefix = f"{name}." if name else ""
                    bufs[prefix + "running_mean"] = torch.zeros(
                        P, *m.running_mean.shape, dtype=m.running_mean.dtype, device=dev
                    )
                    bufs[prefix + "running_var"] = torch.ones(
                        P, *m.running_var.shape, dtype=m.running_var.dtype, device=dev
                    )
                mods = [m for _, m in self._bn_modules]
                for m in mods:
                    m.train()
                try:
                    seen = 0
                    for batch in self._bn_source:
                        for m in mods:
                            m.momentum = batch.size / (seen + batch.size)
                        self._vforward(sel, bufs, batch)
                        seen += batch.size
                finally:
                    for m in mods:
                        m.eval()

            def forward(batch: Batch) -> torch.Tensor:
                return self._vforward(sel, bufs, batch)

            for name, source in self._sources.items():
                self._collect(vals, name, *self._pass(source, forward, True))
        return self._to_numpy(vals)

    # ---- start-up -----------------------------------------------------------------------
    def _probe(self) -> int:
        """Check the loss on one batch at the origin; measure the activations' bytes."""
        first = self._sources["train"].first()
        sizes: list[int] = []

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                sizes.append(out.numel() * out.element_size())

        leaves = [m for m in self._template.modules() if not any(True for _ in m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            with torch.no_grad(), explain_forward(first, self.dtype):
                out = self._forward(first)
            with torch.no_grad(), explain_loss(out, first):
                loss = self.loss_fn(out, first.targets)
        finally:
            for h in handles:
                h.remove()
        self._check_loss(loss)
        require_tensor_outputs(out, "the landscape")
        sizes.append(out.numel() * out.element_size())
        # scale to the largest batch when it is known without reading the data again
        largest = max(
            [first.size] + [b.size for s in self._sources.values() if s.cached for b in s]
        )
        return int(sum(sizes) * largest / first.size)

    def __repr__(self) -> str:
        return (
            f"LandscapeEvaluator({self.num_directions} directions over {self.num_params} "
            f"parameters, bn={self.bn!r}, data: {self._sources['train'].num_samples} train"
            + (f" + {self._sources['test'].num_samples} test" if self.has_test else "")
            + f" samples, {self.strategy})"
        )
