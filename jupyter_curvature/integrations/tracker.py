"""Curvature tracked through a training loop of your own: ``jc.track(...)`` and ``tracker.step()``.

>>> tracker = jc.track(model, loss_fn, curvature_batch, every=50, optimizer=opt)  # doctest: +SKIP
>>> for x, y in loader:  # doctest: +SKIP
...     opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
...     tracker.step()
>>> tracker.save("curvature.json")  # doctest: +SKIP

The Lightning and Hugging Face callbacks of this package drive the same tracker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.records import write_json
from ..training.checkpoint import rng_state, set_rng_state
from .checks import (
    CheckResult,
    count_samples,
    curvature_check,
    curvature_operator,
    fixed_batches,
    full_precision,
)

__all__ = ["Tracker", "track"]


def _positive_int(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


class Tracker:
    """Runs :func:`~jupyter_curvature.integrations.checks.curvature_check` every ``every``
    steps on a fixed curvature set, within a time budget, and keeps the records.

    **The data** (``data``) is read once, at construction, into a fixed set of at most
    ``num_samples`` samples (:func:`~jupyter_curvature.integrations.checks.fixed_batches`):
    name a small held-out batch or dataset, not the shuffled training loader (a loader is
    read once and its first batches kept, without consuming your RNG).

    **The budget** (``max_overhead``, default 0.15, as the
    :class:`~jupyter_curvature.training.CurvatureCallback`'s): a due check is skipped when
    the seconds spent on checks plus the expected cost of one more would exceed
    ``max_overhead`` times the training time so far (wall time since :meth:`start`, by
    default the construction, minus the checks' own time). The expected cost is the last
    check's, or before the first one ``2.5 * (num_iters * num_probes + 10 * top_k +
    trace_matvecs)`` gradients on the curvature set (a Hessian-vector product costs about
    2-2.5 gradients; one gradient is timed at construction). ``max_overhead=None`` checks
    strictly every ``every`` steps.

    **Side effects: none.** A check leaves the model's weights, buffers, ``.grad``,
    ``requires_grad`` and train/eval flags, and the torch (CPU and CUDA), numpy and Python
    RNG states bit for bit as they were, so training with and without a tracker gives the
    same weights. It runs in the weights' precision (autocast off); float16/bfloat16
    weights give products in that dtype summed in float32, and a ``tol`` below what the
    weights' dtype can certify (:func:`~jupyter_curvature.spectral.reachable_tol`: float32
    ``8 u`` = 4.8e-7, half precision ``4 u``) is raised to it, with a warning at
    construction (docs/operators.md, "Half precision").

    Args:
        model: the network (``nn.Module``).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` with reduction ``"mean"`` or ``"sum"``.
        data: the fixed curvature set (one batch, a dataset, or batches).
        every: steps between checks.
        curvature: ``"hessian"`` or ``"ggn"``.
        top_k: certified largest eigenpairs per check (0: none).
        tol: their relative residual tolerance.
        num_iters, num_probes: SLQ Lanczos steps and probes of the density.
        num_samples: samples in the curvature set (``None``: all of ``data``).
        seed: seeds the curvature set's reading, the probes and the start vectors.
        max_overhead: the time budget as a fraction of training time, or ``None``.
        optimizer: read the learning rate (first parameter group) at each check, for ``2/lr``.
        lr: a fixed learning rate instead (or per step: ``step(lr=...)``).
        trace_matvecs: also a Hutch++ trace with this many products (``None``: SLQ trace).
        params, batchnorm, outputs, batch_layout: as for the curvature operators
            (:class:`~jupyter_curvature.operators.HessianOperator`).
        loggers: objects with ``log(record, result)`` (and optionally ``close()``), called
            after each check: :class:`~jupyter_curvature.integrations.TensorBoardLogger`,
            :class:`~jupyter_curvature.integrations.WandbLogger`, or your own.
        at_start: check at step 0, before training (outside the budget).
        warm_start: start each check's top-k from the last check's eigenvectors
            (:func:`~jupyter_curvature.spectral.warm_eigenpairs`: the same certificate,
            fewer products when they moved little); ``False``: a cold start every time.
        keep_results: keep each check's :class:`CheckResult` in :attr:`results`.

    Attributes:
        history: the records (``step`` plus the fields of
            :class:`~jupyter_curvature.integrations.checks.CheckResult.record`).
        computed, skipped: checks computed and skipped by the budget.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Any,
        *,
        every: int = 50,
        curvature: str = "hessian",
        top_k: int = 3,
        tol: float = 1e-3,
        num_iters: int = 30,
        num_probes: int = 2,
        num_samples: int | None = 256,
        seed: int = 0,
        max_overhead: float | None = 0.15,
        optimizer: torch.optim.Optimizer | None = None,
        lr: float | None = None,
        trace_matvecs: int | None = None,
        params: Any = None,
        batchnorm: str = "eval",
        outputs: Callable[[Any], Any] | None = None,
        batch_layout: Callable[[Any], tuple[Any, Any]] | None = None,
        loggers: Iterable[Any] = (),
        at_start: bool = False,
        keep_results: bool = False,
        warm_start: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.every = _positive_int("every", every)
        self.top_k = _positive_int("top_k", top_k, 0)
        self.num_iters = _positive_int("num_iters", num_iters)
        self.num_probes = _positive_int("num_probes", num_probes)
        if trace_matvecs is not None:
            _positive_int("trace_matvecs", trace_matvecs, 4)
        if curvature not in ("hessian", "ggn"):
            raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
        if max_overhead is not None and not max_overhead > 0:
            raise ValueError(f"max_overhead must be positive or None, got {max_overhead!r}")
        if lr is not None and not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        self.loggers = list(loggers)
        for logger in self.loggers:
            if not callable(getattr(logger, "log", None)):
                raise TypeError(
                    f"{type(logger).__name__} is not a logger: it needs log(record, result)"
                )
        from ..spectral._checks import REACHABLE_TOL, warn_unreachable_tol

        for dtype in {p.dtype for p in model.parameters()} & set(REACHABLE_TOL):
            # float32 or half-precision weights: products (and eigenvectors) in that dtype
            # certify no tol below reachable_tol; each check uses max(tol, reachable_tol)
            # (integrations/checks.py), said once here
            warn_unreachable_tol(tol, dtype, stacklevel=3)
        self.model = model
        self.loss_fn = loss_fn
        self.curvature = curvature
        self.tol = tol
        self.seed = seed
        self.max_overhead = max_overhead
        self.optimizer = optimizer
        self.lr = lr
        self.trace_matvecs = trace_matvecs
        self.params = params
        self.batchnorm = batchnorm
        self.outputs = outputs
        self.batch_layout = batch_layout
        self.keep_results = keep_results
        self.warm_start = bool(warm_start)
        self.vectors: torch.Tensor | None = None  # the last check's eigenvectors
        self.batches = fixed_batches(data, num_samples, seed)
        self.num_samples = count_samples(self.batches)
        self.history: list[dict[str, Any]] = []
        self.results: list[tuple[int, CheckResult]] = []
        self.computed = 0
        self.skipped = 0
        self.spent = 0.0
        self.last_cost: float | None = None
        self.num_steps = 0
        self.gradient_cost = self._time_gradient() if max_overhead is not None else None
        self.start()
        if at_start:
            self.check(step=0)

    # --- the clock ----------------------------------------------------------------------
    def start(self) -> None:
        """(Re)start the training clock the budget is measured against."""
        self.started = time.perf_counter()
        self.spent_at_start = self.spent

    @property
    def train_seconds(self) -> float:
        """Wall seconds since :meth:`start`, less the checks' own time."""
        return time.perf_counter() - self.started - (self.spent - self.spent_at_start)

    def _time_gradient(self) -> float:
        """Seconds of one loss and gradient on the curvature set (for the first estimate).

        Builds the operator once (its construction checks the set: first batch, twice the
        whole set), so bad input fails here, not at the first check.
        """
        with self._untouched(), full_precision(self.model):
            start = time.perf_counter()
            curvature_operator(
                self.model,
                self.loss_fn,
                self.batches,
                curvature=self.curvature,
                params=self.params,
                batchnorm=self.batchnorm,
                outputs=self.outputs,
                batch_layout=self.batch_layout,
            )
            return (time.perf_counter() - start) / 3  # one first batch, then two passes

    def estimated_cost(self) -> float:
        """Seconds the next check is expected to take."""
        if self.last_cost is not None:
            return self.last_cost
        products = self.num_iters * self.num_probes + 10 * self.top_k + (self.trace_matvecs or 0)
        return 2.5 * products * (self.gradient_cost or 0.0)

    # --- steps and checks ---------------------------------------------------------------
    def current_lr(self) -> float | None:
        if self.optimizer is not None:
            return float(self.optimizer.param_groups[0]["lr"])
        return self.lr

    def step(
        self, step: int | None = None, *, lr: float | None = None, loss: Any = None
    ) -> dict[str, Any] | None:
        """Call after each optimiser step; checks when the step count is a multiple of ``every``.

        Args:
            step: the step number (default: one more than the last call's).
            lr: the learning rate now (default: the optimiser's or the fixed ``lr``).
            loss: this step's training loss (a number or a scalar tensor), passed to the
                loggers that draw curves (``log_step``, e.g. a notebook dashboard's feed).

        Returns:
            the new record, or ``None`` (not due, or skipped by the budget).
        """
        self.num_steps = self.num_steps + 1 if step is None else int(step)
        self.log_step(self.num_steps, loss, lr)
        if self.num_steps % self.every:
            return None
        if any(r["step"] == self.num_steps for r in self.history):
            return None  # this step was checked already (e.g. gradient accumulation)
        if self.max_overhead is not None:
            budget = self.max_overhead * self.train_seconds
            if self.spent + self.estimated_cost() > budget:
                self.skipped += 1
                return None
        return self.check(lr=lr)

    def log_step(self, step: int, loss: Any = None, lr: float | None = None) -> None:
        """Tell the loggers that have ``log_step(step, loss, lr)`` about one training step."""
        drawers = [g.log_step for g in self.loggers if hasattr(g, "log_step")]
        if not drawers:
            return  # no float(loss): on a GPU it would wait for the step to finish
        if loss is not None and not isinstance(loss, (int, float)):
            loss = float(loss.detach()) if torch.is_tensor(loss) else None
        lr = lr if lr is not None else self.current_lr()
        for log_step in drawers:
            log_step(step, loss, lr)

    def check(self, step: int | None = None, *, lr: float | None = None) -> dict[str, Any]:
        """Run one check now (whatever the budget), record it and call the loggers."""
        step = self.num_steps if step is None else int(step)
        with self._untouched():
            result = curvature_check(
                self.model,
                self.loss_fn,
                self.batches,
                curvature=self.curvature,
                top_k=self.top_k,
                tol=self.tol,
                num_iters=self.num_iters,
                num_probes=self.num_probes,
                seed=self.seed,
                trace_matvecs=self.trace_matvecs,
                lr=lr if lr is not None else self.current_lr(),
                params=self.params,
                batchnorm=self.batchnorm,
                outputs=self.outputs,
                batch_layout=self.batch_layout,
                start=self.vectors if self.warm_start else None,
            )
        if result.eigen is not None:
            self.vectors = result.eigen.eigenvectors
        cost = result.record["seconds"]
        self.spent += cost
        self.last_cost = cost
        self.computed += 1
        record = {"step": step, **result.record}
        result.record = record
        self.history.append(record)
        if self.keep_results:
            self.results.append((step, result))
        for logger in self.loggers:
            logger.log(record, result)
        return record

    def _untouched(self):
        return _Untouched(self.model)

    # --- records --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The settings, the counts and the history, as plain data."""
        return {
            "settings": {
                "every": self.every,
                "curvature": self.curvature,
                "top_k": self.top_k,
                "tol": self.tol,
                "num_iters": self.num_iters,
                "num_probes": self.num_probes,
                "num_samples": self.num_samples,
                "seed": self.seed,
                "max_overhead": self.max_overhead,
                "trace_matvecs": self.trace_matvecs,
                "warm_start": self.warm_start,
            },
            "computed": self.computed,
            "skipped": self.skipped,
            "seconds": self.spent,
            "history": self.history,
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (the package's one JSON policy, atomically)."""
        return write_json(path, self.to_dict())

    def close(self) -> None:
        """Close the loggers that can be closed."""
        for logger in self.loggers:
            close = getattr(logger, "close", None)
            if callable(close):
                close()


class _Untouched:
    """Restores RNG states, weights' versions checked, buffers, modes and grads on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        devices = []
        for p in self.model.parameters():
            if p.device.type == "cuda" and p.device not in devices:
                devices.append(p.device)
        self.fork = torch.random.fork_rng(devices=devices)
        self.fork.__enter__()
        self.rng = rng_state()
        self.buffers = [b.detach().clone() for b in self.model.buffers()]
        self.modes = [m.training for m in self.model.modules()]
        self.grad_flags = [p.requires_grad for p in self.model.parameters()]
        self.versions = [p._version for p in self.model.parameters()]

    def __exit__(self, *exc: Any) -> None:
        try:
            with torch.no_grad():
                for b, saved in zip(self.model.buffers(), self.buffers):
                    if not torch.equal(b, saved):
                        b.copy_(saved)
            for m, mode in zip(self.model.modules(), self.modes):
                m.training = mode
            for p, flag in zip(self.model.parameters(), self.grad_flags):
                p.requires_grad_(flag)
            set_rng_state(self.rng)
        finally:
            self.fork.__exit__(*exc)
        if exc[0] is None and [p._version for p in self.model.parameters()] != self.versions:
            raise RuntimeError("a curvature check changed the model's weights (a bug: report it)")


def track(
    model: nn.Module, loss_fn: Callable, data: Any, *, every: int = 50, **kwargs: Any
) -> Tracker:
    """A :class:`Tracker` for a plain training loop: call ``tracker.step()`` after each
    optimiser step; every ``every`` steps it checks the curvature (certified top-k
    eigenvalues, SLQ density, trace, ``lambda_max`` against ``2/lr``) on the fixed ``data``.

    See :class:`Tracker` for every argument, the budget and the guarantees.
    """
    return Tracker(model, loss_fn, data, every=every, **kwargs)
