"""One curvature check: certified top-k eigenpairs, SLQ density, trace, lambda_max against 2/lr.

:func:`curvature_check` is the computation behind every integration (the plain-loop
:class:`~jupyter_curvature.integrations.tracker.Tracker`, the Lightning and Hugging Face
callbacks): one curvature operator on a fixed set of batches, shared by

- :func:`~jupyter_curvature.spectral.eigenpairs`: the ``top_k`` largest eigenvalues, each
  certified by its residual ``||H v - lambda v|| <= tol * scale`` (thick-restart Lanczos);
- :func:`~jupyter_curvature.spectral.spectral_density`: the stochastic Lanczos quadrature
  density (Ubaru, Chen and Saad, SIAM J. Matrix Anal. Appl. 38, 2017; Ghorbani, Krishnan and
  Xiao, ICML 2019), with its trace and negative mass;
- optionally :func:`~jupyter_curvature.spectral.trace` (Hutch++, Meyer et al., SOSA 2021)
  when ``trace_matvecs`` is given; otherwise the trace is the SLQ estimate, which equals
  Hutchinson's with the same probes.

The sharpness ``lambda_max`` is compared with ``2 / lr``: gradient descent on a quadratic
with learning rate ``lr`` is stable only while ``lambda_max < 2 / lr`` (Cohen et al., "Gradient
descent on neural networks typically occurs at the edge of stability", ICLR 2021).

Batches may be ``(inputs, targets)`` pairs or Hugging Face dicts: a dict with a ``"labels"``
key (and no ``batch_layout``) is fed as keyword arguments, ``model(**inputs)``, and the
loss takes ``outputs.logits`` (see :func:`pick_logits`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..core.batches import is_single_batch
from ..core.params import select_parameters

__all__ = [
    "CheckResult",
    "count_samples",
    "curvature_check",
    "curvature_operator",
    "fixed_batches",
    "full_precision",
    "pick_logits",
]


def pick_logits(out: Any) -> torch.Tensor:
    """The tensor the loss takes: the output itself, its ``.logits`` or ``["logits"]``.

    Raises:
        TypeError: the output is neither a tensor nor has logits; the message names the
            remedy (``outputs=``).
    """
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(
        f"the model returned {type(out).__name__} with no 'logits'; pass "
        "outputs=lambda out: <the tensor the loss takes> to pick it"
    )


def _size(batch: Any) -> int:
    """Samples in a raw batch: the first dimension of its first tensor."""
    values = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(values, torch.Tensor):
        return int(values.shape[0])
    for v in values:
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
        if isinstance(v, (tuple, list, Mapping)):
            return _size(v)
    raise TypeError(
        f"cannot tell the number of samples of a {type(batch).__name__} batch (no tensor with a "
        "batch dimension): pass collated batches, e.g. collate_fn([dataset[i] for i in range(64)])"
    )


def count_samples(batches: list[Any]) -> int:
    """Samples in a list of raw batches (the first dimension of each batch's first tensor)."""
    return sum(_size(b) for b in batches)


def _cut(batch: Any, n: int) -> Any:
    """The first ``n`` samples of a raw batch (tensors cut on dim 0, nested alike)."""
    if isinstance(batch, torch.Tensor):
        return batch[:n] if batch.ndim > 0 else batch
    if isinstance(batch, Mapping):
        return {k: _cut(v, n) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_cut(v, n) for v in batch)
    return batch


def fixed_batches(data: Any, num_samples: int | None = None, seed: int = 0) -> list[Any]:
    """The curvature set: at most ``num_samples`` samples of ``data`` read once, as batches.

    ``data`` is one batch (an ``(inputs, targets)`` pair or a dict of tensors), a map-style
    dataset (its first ``num_samples`` items, collated with
    :func:`torch.utils.data.default_collate`), or an iterable of batches (a DataLoader, a
    list), read until ``num_samples`` samples are there (the last batch cut). Reading runs
    under a forked RNG seeded with ``seed``: the caller's RNG streams are not consumed (a
    shuffling DataLoader draws its order from them) and random augmentations are drawn once.

    Raises:
        ValueError: no samples.
        TypeError: ``data`` is a one-shot iterator or not data.
    """
    if num_samples is not None and (isinstance(num_samples, bool) or num_samples < 1):
        raise ValueError(f"num_samples must be a positive integer or None, got {num_samples!r}")
    if is_single_batch(data) or isinstance(data, Mapping):
        batches = [data]
    elif isinstance(data, Dataset) and hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = len(data) if num_samples is None else min(num_samples, len(data))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            items = [data[i] for i in range(n)]
        batches = [torch.utils.data.default_collate(items)] if items else []
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, torch.Tensor)):
        if isinstance(data, Iterator):  # (iter() would draw a DataLoader's seed)
            raise TypeError(
                "data is a one-shot iterator; pass the DataLoader, a dataset or a list of "
                "batches, read once into the fixed curvature set"
            )
        batches, count = [], 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for batch in data:
                batches.append(batch)
                count += _size(batch)
                if num_samples is not None and count >= num_samples:
                    break
    else:
        raise TypeError(
            "data must be one batch, a dataset or an iterable of batches (the fixed curvature "
            f"set), got {type(data).__name__}"
        )
    if num_samples is not None:
        out, left = [], num_samples
        for batch in batches:
            if left <= 0:
                break
            size = _size(batch)
            out.append(batch if size <= left else _cut(batch, left))
            left -= size
        batches = out
    if not batches:
        raise ValueError("the curvature data holds no samples")
    return batches


def curvature_operator(
    model: nn.Module,
    loss_fn: Callable,
    batches: list[Any],
    *,
    curvature: str = "hessian",
    params: Any = None,
    batchnorm: str = "eval",
    outputs: Callable[[Any], Any] | None = None,
    batch_layout: Callable[[Any], tuple[Any, Any]] | None = None,
) -> Any:
    """The Hessian or GGN operator of ``loss_fn`` on ``batches`` (see the module docstring).

    A dict batch with a ``"labels"`` key and no ``batch_layout`` is fed as keywords (the
    operators' own layout, :func:`~jupyter_curvature.core.batches.labels_layout`: padded
    tokens' labels are ignored); ``outputs`` defaults to :func:`pick_logits`. The operator
    is local (never summed over ``torch.distributed`` ranks): every rank checks the same set.
    """
    from ..operators import GGNOperator, HessianOperator

    if curvature not in ("hessian", "ggn"):
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    chosen = [p for _, p in select_parameters(model, params)]
    data = batches[0] if len(batches) == 1 and is_single_batch(batches[0]) else batches
    cls = GGNOperator if curvature == "ggn" else HessianOperator
    return cls(
        model,
        loss_fn,
        data,
        chosen,
        batchnorm=batchnorm,
        batch_layout=batch_layout,
        outputs=outputs or pick_logits,
        distributed=False,
    )


@contextmanager
def full_precision(model: nn.Module) -> Iterator[None]:
    """Within the block the model runs in its weights' precision: autocast is off, and a
    forward that Hugging Face Accelerate wrapped in autocast for mixed precision (it keeps
    the original as ``model._original_forward``) is the original again; restored on exit."""
    patched = "forward" in vars(model) and callable(getattr(model, "_original_forward", None))
    saved = vars(model).get("forward")
    device_type = next(model.parameters()).device.type
    try:
        if patched:
            model.forward = model._original_forward
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    finally:
        if patched:
            model.forward = saved


@dataclass
class CheckResult:
    """One check: the plain record and the result objects it came from.

    Attributes:
        record: plain numbers (JSON-ready): ``curvature``, ``num_samples``, ``n`` (parameters),
            ``seconds``; ``top_eigenvalues`` (certified, descending), ``residuals``,
            ``converged``, ``lambda_max`` (the largest certified eigenvalue); ``ritz_values``
            and ``weights`` per probe, ``ritz_max``, ``lambda_min`` (the smallest Ritz value);
            ``trace``, ``trace_stderr``, ``trace_method``; ``negative_mass``; ``stats`` (the
            density's scalar statistics); with a learning rate ``lr``, ``two_over_lr`` and
            ``sharpness_ratio = lambda_max * lr / 2`` (above 1: past the edge of stability).
        eigen: the :class:`~jupyter_curvature.spectral.EigenpairsResult` (``None`` if
            ``top_k=0``).
        density: the :class:`~jupyter_curvature.spectral.SpectralDensity`.
        trace: the :class:`~jupyter_curvature.spectral.TraceEstimate` (``None`` when the
            trace is the SLQ one).
    """

    record: dict[str, Any]
    eigen: Any = None
    density: Any = None
    trace: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def curvature_check(
    model: nn.Module,
    loss_fn: Callable,
    batches: list[Any],
    *,
    curvature: str = "hessian",
    top_k: int = 3,
    tol: float = 1e-3,
    num_iters: int = 30,
    num_probes: int = 2,
    seed: int = 0,
    trace_matvecs: int | None = None,
    lr: float | None = None,
    params: Any = None,
    batchnorm: str = "eval",
    outputs: Callable[[Any], Any] | None = None,
    batch_layout: Callable[[Any], tuple[Any, Any]] | None = None,
    start: torch.Tensor | None = None,
) -> CheckResult:
    """One curvature check of ``model`` on the fixed ``batches``.

    Runs in full precision (:func:`full_precision`) and changes nothing in the model: the operators
    restore train/eval flags, buffers and ``requires_grad``, and never touch weights or
    ``.grad`` (callers restore the RNG states, see
    :class:`~jupyter_curvature.integrations.tracker.Tracker`).

    Args:
        model, loss_fn: the network and ``loss_fn(outputs, targets) -> scalar``.
        batches: the fixed curvature set (:func:`fixed_batches`).
        curvature: ``"hessian"`` or ``"ggn"``.
        top_k: certified largest eigenpairs (0: none; ``lambda_max`` is then the largest
            Ritz value of the density).
        tol: their relative residual tolerance.
        num_iters, num_probes: SLQ Lanczos steps and probes.
        seed: seeds the eigenpairs' start vector, the probes and the trace.
        trace_matvecs: a Hutch++ trace with this many products; ``None``: the SLQ trace.
        lr: the learning rate, for ``2 / lr``.
        params, batchnorm, outputs, batch_layout: as for the operators.
        start: the last check's eigenvectors: the top-k is warm-started from them
            (:func:`~jupyter_curvature.spectral.warm_eigenpairs`, the same certificate);
            ``None``: a cold start.

    The eigenpairs, the density and the trace share one gradient graph per batch (the
    operator's :meth:`~jupyter_curvature.operators.CurvatureOperator.kept_graphs`, while it
    fits in memory), so each product costs only the second backward.

    Returns:
        :class:`CheckResult` (``record["matvecs"]``: the check's products, ``"eigen_matvecs"``
        those of the top-k, ``"warm_start"``: whether it was warm-started).
    """
    from ..spectral import eigenpairs, reachable_tol, spectral_density
    from ..spectral import trace as trace_estimate
    from ..training import summarize

    began = time.perf_counter()
    with full_precision(model):
        op = curvature_operator(
            model,
            loss_fn,
            batches,
            curvature=curvature,
            params=params,
            batchnorm=batchnorm,
            outputs=outputs,
            batch_layout=batch_layout,
        )
        tol = max(tol, reachable_tol(op.dtype))  # float32/half weights certify no less
        products = op.num_matvecs
        with op.kept_graphs(None):
            eigen = (
                eigenpairs(op, k=top_k, tol=tol, seed=seed, warn=False, start=start)
                if top_k
                else None
            )
            density = spectral_density(op, num_iters=num_iters, num_probes=num_probes, seed=seed)
            trace = (
                trace_estimate(op, num_matvecs=trace_matvecs, seed=seed)
                if trace_matvecs is not None
                else None
            )
        products = op.num_matvecs - products
    stats = density.stats
    record: dict[str, Any] = {
        "curvature": curvature,
        "num_samples": int(op.num_samples or count_samples(batches)),
        "n": int(op.shape[0]),
    }
    summary = summarize(density, top_k=max(top_k, 1))
    record["ritz_values"] = summary["ritz_values"]
    record["weights"] = summary["weights"]
    record["ritz_max"] = summary["lambda_max"]
    record["lambda_min"] = summary["lambda_min"]
    if eigen is not None:
        record["top_eigenvalues"] = eigen.eigenvalues.tolist()
        record["residuals"] = eigen.residuals.tolist()
        record["converged"] = bool(eigen.converged)
        record["lambda_max"] = float(eigen.eigenvalues[0])
    else:
        record["top_eigenvalues"] = []
        record["lambda_max"] = summary["lambda_max"]
    if trace is not None:
        record.update(trace=trace.estimate, trace_stderr=trace.stderr, trace_method=trace.method)
    else:
        record.update(trace=stats.trace, trace_stderr=stats.trace_stderr, trace_method="slq")
    record["matvecs"] = int(products)
    record["eigen_matvecs"] = int(eigen.num_matvecs) if eigen is not None else 0
    record["warm_start"] = start is not None and eigen is not None
    record["negative_mass"] = stats.negative_mass
    record["stats"] = summary.get("stats", {})
    if lr is not None and lr > 0:
        record["lr"] = float(lr)
        record["two_over_lr"] = 2.0 / lr
        record["sharpness_ratio"] = record["lambda_max"] * lr / 2.0
    record["seconds"] = time.perf_counter() - began
    return CheckResult(record, eigen, density, trace)
