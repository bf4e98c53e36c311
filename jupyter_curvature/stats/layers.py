"""Per-layer curvature: the largest eigenvalue and the trace of each layer's diagonal block.

For a parameter group ``l`` the operator with ``params=<group>`` is the diagonal block
``H_ll`` of the full curvature (the other parameters held fixed). Its largest eigenvalue
shows which layer is sharpest; the block traces add up to the trace of the whole matrix,
since the trace only sees the diagonal.

A small block (at most ``dense_below`` parameters) is formed densely from ``n`` products
and its eigenvalues and trace are exact; a larger one goes to
:func:`jupyter_curvature.spectral.eigenpairs` (Lanczos, certified by a residual) and
:func:`jupyter_curvature.spectral.trace` (Hutch++ or Hutchinson, with a standard error), or
an exact trace from the diagonal (``n`` products) when ``trace_method="exact"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..core.batches import BatchLayout
from ..core.model_state import check_batchnorm_policy
from ..core.params import select_parameters
from ..core.progress import Cancelled, Progress
from ..operators import CurvatureOperator, GGNOperator, HessianOperator
from ..spectral import eigenpairs, trace
from .results import LayerCurvature, LayerCurvatureRow

TRACE_METHODS = ("auto", "exact", "hutch++", "hutchinson")


def default_layers(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """Every module that owns trainable parameters directly, with those parameters."""
    out: dict[str, list[torch.Tensor]] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            out[name or "(model)"] = own
    if not out:
        raise ValueError("model has no trainable parameters (none has requires_grad=True)")
    return out


def _resolve_layers(
    model: nn.Module, layers: Sequence[str] | Mapping[str, Any] | None
) -> dict[str, Any]:
    if layers is None:
        return default_layers(model)
    items = layers.items() if isinstance(layers, Mapping) else [(s, s) for s in layers]
    resolved: dict[str, Any] = {}
    modules = dict(model.named_modules())
    for label, spec in items:
        if isinstance(spec, str) and spec in modules:
            module = modules[spec]
            if not any(True for _ in module.parameters()):
                raise ValueError(
                    f"layer {spec!r} ({type(module).__name__}) has no parameters, so it has no "
                    "curvature block; choose a layer with weights (layers with parameters: "
                    f"{', '.join(default_layers(model))})"
                )
        elif isinstance(spec, nn.Module) and not any(True for _ in spec.parameters()):
            raise ValueError(
                f"layer {label!r} ({type(spec).__name__}) has no parameters, so it has no "
                "curvature block"
            )
        resolved[str(label)] = spec
    if not resolved:
        raise ValueError("layers is empty: name at least one layer, or pass layers=None for all")
    return resolved


def layer_curvature(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    layers: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    curvature: str = "hessian",
    trace_method: str = "auto",
    trace_matvecs: int = 99,
    dense_below: int = 256,
    tol: float = 1e-4,
    include_total: bool = True,
    seed: int = 0,
    batchnorm: str = "eval",
    batch_layout: BatchLayout | None = None,
    progress: Any = None,
    cancel: Any = None,
) -> LayerCurvature:
    """The largest eigenvalue and the trace of each layer's block of the curvature, in one table.

    Args:
        model: the network.
        loss_fn: a criterion with ``reduction="mean"`` or ``"sum"``.
        data: a DataLoader, a re-iterable of ``(inputs, targets)`` batches, or one batch; the
            curvature is that of the loss over all of it (as the operators define it).
        layers: ``None`` for every module that owns parameters; or module names / parameter
            patterns (anything the operators' ``params=`` takes); or ``{label: spec}``.
        curvature: ``"hessian"`` or ``"ggn"``.
        trace_method: ``"auto"`` (exact for blocks of at most ``dense_below`` parameters,
            Hutch++ above), ``"exact"`` (always: the sum of the diagonal, ``n`` products),
            ``"hutch++"`` or ``"hutchinson"`` (for blocks above ``dense_below``).
        trace_matvecs: products per estimated trace (Hutch++ needs at least 4).
        dense_below: blocks of at most this many parameters are formed densely (``n``
            products) and get exact eigenvalues and traces.
        tol: relative residual tolerance of the Lanczos eigenvalue (``||Hv - lv|| <= tol *
            ||H||``); the true eigenvalue lies within the reported residual of the estimate.
        include_total: add a row ``"(all)"`` for the operator of all the layers together.
        seed: seeds the Lanczos start vectors and the trace probes.
        batchnorm: ``"eval"`` (running statistics) or ``"train"`` (batch statistics).
        batch_layout: how to split a batch that is not an ``(inputs, targets)`` pair.
        progress: ``True`` (a ``tqdm.auto`` bar) or a callable receiving a
            :class:`~jupyter_curvature.core.progress.ProgressEvent`: phase ``"layers"`` once
            per row (``partial``: the rows done), and each row's eigenpairs and trace phases.
        cancel: a :class:`~jupyter_curvature.core.progress.CancelToken` checked before each
            product: the table then holds the rows finished before it (``cancelled=True``).

    Raises:
        ValueError: a requested layer has no parameters (or matches none); an unknown
            ``curvature`` or ``trace_method``; too small a ``trace_matvecs``.
    """
    if curvature not in ("hessian", "ggn"):
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    if trace_method not in TRACE_METHODS:
        raise ValueError(f"trace_method must be one of {TRACE_METHODS}, got {trace_method!r}")
    low = 4 if trace_method in ("auto", "hutch++") else 2
    if isinstance(trace_matvecs, bool) or not isinstance(trace_matvecs, int) or trace_matvecs < low:
        raise ValueError(
            f"trace_matvecs must be an int of at least {low} for trace_method={trace_method!r}, "
            f"got {trace_matvecs!r}"
        )
    if isinstance(dense_below, bool) or not isinstance(dense_below, int) or dense_below < 1:
        raise ValueError(f"dense_below must be a positive int, got {dense_below!r}")
    batchnorm = check_batchnorm_policy(batchnorm)
    operator_type = HessianOperator if curvature == "hessian" else GGNOperator
    specs = _resolve_layers(model, layers)
    param_groups = _row_params(model, specs)
    tracker = Progress.of(progress, cancel, "layers", len(specs) + bool(include_total))

    def row(label: str, params: list[torch.Tensor]) -> LayerCurvatureRow:
        try:
            op = operator_type(
                model, loss_fn, data, params=params, batchnorm=batchnorm, batch_layout=batch_layout
            )
        except ValueError as err:
            raise ValueError(f"layer {label!r}: {err}") from err
        n = op.shape[0]
        if n <= dense_below:
            lam, residual, tr = _dense_block(op)
            se, eig_method, method = 0.0, "dense", "exact"
        else:
            result = eigenpairs(op, k=1, which="LA", tol=tol, seed=seed, progress=tracker)
            if result.cancelled:
                raise Cancelled("layers")
            lam, residual = float(result.eigenvalues[0]), float(result.residuals[0])
            eig_method = "lanczos"
            method = "hutch++" if trace_method == "auto" else trace_method
            if method == "exact":
                tr, se = _exact_trace(op), 0.0
            else:
                estimate = trace(
                    op, method=method, num_matvecs=trace_matvecs, seed=seed, progress=tracker
                )
                if estimate.cancelled:
                    raise Cancelled("layers")
                tr, se = float(estimate.estimate), float(estimate.stderr)
        return LayerCurvatureRow(
            layer=label,
            num_params=n,
            lambda_max=lam,
            lambda_max_residual=residual,
            lambda_method=eig_method,
            trace=tr,
            trace_stderr=se,
            trace_method=method,
            num_matvecs=op.num_matvecs,
        )

    groups = list(zip(specs, param_groups, strict=True))
    if include_total:
        groups.append(("(all)", [p for group in param_groups for p in group]))
    rows: list[LayerCurvatureRow] = []
    for i, (label, group) in enumerate(groups):
        if tracker.step(i, sum(r.num_matvecs for r in rows), lambda: list(rows)):
            break
        try:
            rows.append(row(label, group))
        except Cancelled:
            break
    cancelled = len(rows) < len(groups)
    if cancelled and not rows:
        raise Cancelled("layers")
    total = rows.pop() if include_total and not cancelled else None
    tracker.finish(sum(r.num_matvecs for r in rows), step=len(rows))
    return LayerCurvature(
        curvature=curvature,
        rows=rows,
        total=total,
        sum_trace=math.fsum(r.trace for r in rows),
        sum_trace_stderr=math.sqrt(math.fsum(r.trace_stderr**2 for r in rows)),
        batchnorm=batchnorm,
        seed=int(seed),
        cancelled=cancelled,
    )


def _row_params(model: nn.Module, specs: Mapping[str, Any]) -> list[list[torch.Tensor]]:
    """The parameter tensors of each layer spec, in model order.

    A tensor chosen by two specs is kept in the first only, so the blocks do not overlap
    and their traces add up to the trace of the union.
    """
    seen: set[int] = set()
    out = []
    for label, spec in specs.items():
        if isinstance(spec, list) and all(isinstance(p, torch.Tensor) for p in spec):
            chosen = list(spec)
        else:
            try:
                chosen = [p for _, p in select_parameters(model, spec)]
            except ValueError as err:
                raise ValueError(f"layer {label!r}: {err}") from err
        chosen = [p for p in chosen if id(p) not in seen]
        if not chosen:
            raise ValueError(
                f"layer {label!r}: all its parameters already belong to an earlier layer in "
                "the list; give each parameter to one layer"
            )
        seen.update(id(p) for p in chosen)
        out.append(chosen)
    return out


def _dense_block(op: CurvatureOperator) -> tuple[float, float, float]:
    """Largest eigenvalue, its residual and the trace of a small block, from ``n`` products."""
    A = op.to_dense().double()
    A = (A + A.T) / 2  # products are symmetric to rounding; eigh wants it exactly
    evals, evecs = torch.linalg.eigh(A)
    v, lam = evecs[:, -1], evals[-1]
    residual = float((A @ v - lam * v).norm())
    return float(lam), residual, float(torch.trace(A))


def _exact_trace(op: CurvatureOperator, block: int = 64) -> float:
    """The sum of the diagonal, ``block`` unit vectors per product call."""
    n = op.shape[0]
    total = 0.0
    for start in range(0, n, block):
        stop = min(n, start + block)
        E = torch.zeros(n, stop - start, dtype=op.dtype, device=op.device)
        idx = torch.arange(start, stop, device=op.device)
        E[idx, idx - start] = 1
        total += float((op @ E)[idx, idx - start].double().sum())
    return total
