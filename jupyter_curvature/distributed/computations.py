"""Spectra and statistics over sharded data, identical on every rank.

The operators already sum the ranks' sample-weighted partial products in one all-reduce per
product (:mod:`jupyter_curvature.core.distributed`), so every rank gets the same
full-data product, bit for bit (the backend's reduction hands every rank the same sum).
Lanczos run on every rank from the same seed then takes the same steps on every rank:
**every rank runs the same seeded Lanczos**, and no broadcast is needed. The functions here
add the start-up checks (same model, shards that add up, a backend that can reduce the
device) and check the end result for equality across ranks (one small all-reduce), so a
divergence (a rank with other weights, a non-deterministic kernel) is an error, not a
silently different spectrum on each rank.

Mini-batch statistics need more than summed products: the spread of per-batch quantities.
Each rank computes its batches' streaming moments and they are merged across ranks
(:func:`~jupyter_curvature.distributed.reduce.all_reduce_moments`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.distributed.basis import ShardedBasis
from ..core.distributed.checks import (
    check_shards,
    check_signatures,
    count_samples,
    verify_identical,
)
from ..core.distributed.context import get_world_size, is_initialized
from ..core.distributed.primitives import check_backend_device, gather_objects
from ..core.model_state import model_device_dtype
from ..core.params import select_parameters

__all__ = [
    "check_operator",
    "eigenpairs",
    "evaluate_landscape",
    "gradient_statistics",
    "landscape_1d",
    "landscape_2d",
    "split_points_evaluator",
    "spectral_density",
]


def _distributed_active() -> bool:
    return is_initialized() and get_world_size() > 1


def check_operator(op: Any, total: int | None = None) -> list[int] | None:
    """Start-up checks of a sharded curvature operator (a collective: call on every rank).

    * the backend can reduce tensors on the operator's device;
    * every rank's chosen parameters have the same names, shapes and dtypes (differences
      named);
    * with ``total`` (the dataset size), the ranks' sample counts add up to it.

    Returns:
        Every rank's sample count when ``total`` is given, else ``None``.

    Raises:
        ValueError: a backend that cannot reduce the device.
        DistributedMismatchError: different models, or shards that do not add up.
    """
    if not _distributed_active():
        return None
    check_backend_device(op.device)
    signature = [(n, tuple(p.shape), str(p.dtype)) for n, p in zip(op.param_names, op.params)]
    check_signatures(gather_objects(signature))
    if total is not None:
        return check_shards(count_samples(op.source.data), total)
    return None


def _basis(op: Any, shard_basis: bool, basis_sizes: Any) -> Any:
    """``op``, or ``op`` with its Lanczos vectors split in row slices across the ranks."""
    if not isinstance(shard_basis, bool):
        raise TypeError(f"shard_basis must be True or False, got {shard_basis!r}")
    if not shard_basis:
        if basis_sizes is not None:
            raise ValueError("basis_sizes is the row layout of shard_basis=True; pass both")
        return op
    return ShardedBasis(op, basis_sizes)


def eigenpairs(
    op: Any,
    k: int = 5,
    *,
    total: int | None = None,
    atol: float = 0.0,
    shard_basis: bool = False,
    basis_sizes: Any = None,
    **kwargs: Any,
):
    """:func:`jupyter_curvature.spectral.eigenpairs` on a sharded operator, checked.

    Runs :func:`check_operator`, then the same seeded Lanczos on every rank over the
    reduced products, then checks that every rank got the same eigenvalues and
    eigenvectors (to ``atol``; ``0``: bit for bit). Without a process group it is the plain
    function.

    Args:
        op: a curvature operator whose ``data`` is this rank's shard.
        k: number of eigenpairs.
        total: the dataset size, to check the shards (optional).
        atol: allowed difference between ranks.
        shard_basis: hold only this rank's rows ``[lo, hi)`` of every Lanczos vector (the
            basis costs ``n / W`` rows per rank instead of ``n``; inner products are
            all-reduced, each product all-gathers its input:
            :mod:`jupyter_curvature.core.distributed.basis`). The ``eigenvectors`` of the
            result are then this rank's rows ``(n_r, k)``: :func:`gather_rows` (a collective)
            concatenates them to ``(n, k)``. Eigenvalues agree with the unsharded run to
            rounding (the start vector is the same global vector whatever ``W``). A warm
            ``start=`` takes full-length vectors (gather sharded ones first).
        basis_sizes: rows of each rank with ``shard_basis`` (adding up to ``n``); default
            contiguous slices of equal size (differing by one at most).
        **kwargs: for :func:`~jupyter_curvature.spectral.eigenpairs` (``which``, ``tol``,
            ``seed``, ...).
    """
    from ..spectral.eigenpairs import eigenpairs as _eigenpairs

    check_operator(op, total)
    result = _eigenpairs(_basis(op, shard_basis, basis_sizes), k, **kwargs)
    if _distributed_active():
        checked = [torch.as_tensor(result.eigenvalues)]
        if not shard_basis:  # sharded eigenvectors differ by construction: rows of each rank
            checked.append(torch.as_tensor(result.eigenvectors))
        verify_identical(checked, "the eigenpairs", atol)
    return result


def spectral_density(
    op: Any,
    *,
    total: int | None = None,
    atol: float = 0.0,
    shard_basis: bool = False,
    basis_sizes: Any = None,
    **kwargs: Any,
):
    """:func:`jupyter_curvature.spectral.spectral_density` on a sharded operator, checked.

    As :func:`eigenpairs`: checks, the same seeded stochastic Lanczos quadrature on every
    rank, and a check that the Ritz values and weights agree across ranks. ``shard_basis``
    and ``basis_sizes`` as for :func:`eigenpairs` (``ritz_vectors=True`` then returns this
    rank's rows ``(p, n_r, m)``; :func:`gather_rows` of ``ritz_vectors.transpose(0, 1)``
    concatenates them).
    """
    from .. import spectral

    check_operator(op, total)
    result = spectral.spectral_density(_basis(op, shard_basis, basis_sizes), **kwargs)
    if _distributed_active():
        verify_identical(
            [torch.as_tensor(result.ritz_values), torch.as_tensor(result.weights)],
            "the spectral density",
            atol,
        )
    return result


def gradient_statistics(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    batch_size: int = 128,
    per_sample: bool = False,
    *,
    params: Any = None,
    batchnorm: str = "eval",
    chunk_size: int | None = None,
    batch_layout: Any = None,
    total: int | None = None,
):
    """:func:`jupyter_curvature.stats.gradient_statistics` over sharded data.

    Each rank regroups its shard into batches of ``batch_size``; ``stats.gradient_statistics``
    merges the streaming moments of all ranks by itself
    (:func:`~jupyter_curvature.distributed.reduce.all_reduce_moments`). This wrapper adds the
    start-up checks: the same parameters on every rank, shards that add up to ``total``, a
    backend that can reduce the model's device. With
    :func:`~jupyter_curvature.distributed.shard_loader` shards (cut at batch boundaries) the
    ranks' batches are exactly the single-process batches, so the result equals the
    single-process ``gradient_statistics`` (to rounding).

    Args:
        total: the dataset size, to check the shards (optional).
        (others as :func:`jupyter_curvature.stats.gradient_statistics`)
    """
    from ..stats import gradient_statistics as _gradient_statistics

    if _distributed_active():
        chosen = select_parameters(model, params)
        check_signatures(gather_objects([(n, tuple(p.shape), str(p.dtype)) for n, p in chosen]))
        if total is not None:
            check_shards(count_samples(data), total)
        check_backend_device(model_device_dtype(model)[0])
    return _gradient_statistics(
        model,
        loss_fn,
        data,
        batch_size,
        per_sample,
        params=params,
        batchnorm=batchnorm,
        chunk_size=chunk_size,
        batch_layout=batch_layout,
    )


def _gather_points(evaluate: Any, coords: torch.Tensor) -> dict[str, Any]:
    """Evaluate every ``world_size``-th row of ``coords`` here, gather all rows on every rank."""
    import numpy as np
    import torch.distributed as dist

    from ..core.distributed.reduce import split_indices

    mine = list(split_indices(len(coords)))
    local: dict[str, Any] = {}
    error = None
    try:
        if mine:
            local = evaluate(coords[mine])
    except Exception as err:  # tell the others, which would wait in the gather
        error, failure = f"{type(err).__name__}: {err}", err
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, (mine, local, error))
    failed = [(r, e) for r, (_, _, e) in enumerate(gathered) if e is not None]
    if failed:
        if error is not None:
            raise failure
        raise RuntimeError("; ".join(f"rank {r} failed: {e}" for r, e in failed))
    metrics = next(iter(part for _, part, _ in gathered if part), {})
    out = {m: np.full(len(coords), np.nan) for m in metrics}
    for idx, part, _ in gathered:
        for m, values in part.items():
            out[m][idx] = values
    return out


def evaluate_landscape(evaluator: Any, coords: Any) -> dict[str, Any]:
    """``evaluator.evaluate(coords)`` with the grid points split across ranks and gathered.

    Each rank evaluates every ``world_size``-th point (its share as one call, so the
    evaluator's batching still works) on the **full** data held by its
    :class:`~jupyter_curvature.landscape.evaluator.LandscapeEvaluator`; the metrics are
    gathered (one ``all_gather_object``) and returned in grid order on every rank. ``P``
    points on ``R`` ranks cost about ``ceil(P / R)`` point evaluations per rank.

    Args:
        evaluator: anything with ``evaluate(coords) -> {metric: (P,) array}`` and
            ``check_coords(coords) -> (P, k) tensor``.
        coords: ``(P, k)`` grid coordinates, the same on every rank.

    Returns:
        ``{metric: (P,) numpy array}``, as ``evaluator.evaluate(coords)`` in one process.
    """
    checked = evaluator.check_coords(coords)
    if not _distributed_active():
        return evaluator.evaluate(checked)
    verify_identical(checked, "the landscape grid")
    return _gather_points(evaluator.evaluate, checked)


def split_points_evaluator(*args: Any, **kwargs: Any):
    """A :class:`~jupyter_curvature.landscape.evaluator.LandscapeEvaluator` whose points are split across ranks.

    Takes the evaluator's arguments (``model, loss_fn, data, directions, test_data=...``;
    ``data`` is the **full** data on every rank). Each chunk of points it is asked for is
    split across ranks and gathered back, so it can be handed to
    :func:`jupyter_curvature.landscape.landscape_1d` / ``landscape_2d`` as their first
    argument; every rank gets the whole landscape (write it from rank 0 only).
    """
    from ..landscape.evaluator import LandscapeEvaluator

    class SplitPointsEvaluator(LandscapeEvaluator):
        def iter_chunks(self, coords):  # the grid driver's only entry point
            import numpy as np

            if not _distributed_active():
                yield from super().iter_chunks(coords)
                return

            def evaluate(part):
                # the parent's chunking (not self.evaluate, which would come back here)
                out = {m: np.full(len(part), np.nan) for m in self.metrics}
                for idx, vals in LandscapeEvaluator.iter_chunks(self, part):
                    for m in self.metrics:
                        out[m][idx] = vals[m]
                return out

            yield np.arange(len(coords)), _gather_points(evaluate, coords)

    return SplitPointsEvaluator(*args, **kwargs)


def _landscape(kind: str, model: Any, loss_fn: Any, data: Any, directions: Any, **kwargs: Any):
    from .. import landscape
    from ..landscape import grid

    evaluator_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in grid._EVALUATOR_KEYS}
    evaluator_kw = {k: v for k, v in evaluator_kw.items() if v is not None}
    if "batch_layout" in kwargs:
        evaluator_kw["batch_layout"] = kwargs.pop("batch_layout")
    evaluator = split_points_evaluator(model, loss_fn, data, directions, **evaluator_kw)
    return getattr(landscape, kind)(evaluator, **kwargs)


def landscape_1d(model: Any, loss_fn: Any, data: Any, directions: Any, **kwargs: Any):
    """:func:`jupyter_curvature.landscape.landscape_1d` with its points split across ranks.

    ``data`` (and ``test_data``) are the full datasets on every rank; each rank evaluates
    every ``world_size``-th point of each refinement level and all ranks get the whole
    result. Keyword arguments as for the single-process function.
    """
    return _landscape("landscape_1d", model, loss_fn, data, directions, **kwargs)


def landscape_2d(model: Any, loss_fn: Any, data: Any, directions: Any, **kwargs: Any):
    """:func:`jupyter_curvature.landscape.landscape_2d` with its points split across ranks (see :func:`landscape_1d`)."""
    return _landscape("landscape_2d", model, loss_fn, data, directions, **kwargs)
