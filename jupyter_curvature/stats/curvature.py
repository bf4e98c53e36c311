"""Curvature statistics along random probes: the original's ``hess_*``, ``delta`` and ``alpha``.

The original package (MLRG Deep Curvature, ``curvature/utils.py: loss_stats``) computed, along
*one* random unit direction ``z``, the squared norm of the mean Hessian-vector product, the
variance of the per-batch products around it, the Rayleigh quotient ``hess_mu``, ``delta`` and
a shrinkage coefficient ``alpha``; its GGN path multiplied along the wrong vector (an
``offset`` that was never advanced). Here the same quantities are computed along several
probes at once, each product is exact (``HessianOperator`` / ``GGNOperator`` on one batch,
multiplying the whole ``(n, num_probes)`` probe block through one graph), batches are weighted
by their size (by their counted tokens for a token loss), and every quantity comes with a standard error across the probes. The squared
Frobenius norm is Hutchinson's estimator applied to ``H^2``: ``E ||H g||^2 = ||H||_F^2`` for
Gaussian ``g`` (Hutchinson 1989; Avron and Toledo 2011).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..core.batches import BatchLayout, batch_parts
from ..core.distributed.primitives import all_reduce_sum, is_distributed
from ..core.model_state import check_batchnorm_policy, model_device_dtype
from ..core.params import ParamSpec, select_parameters
from ..core.progress import Cancelled, Progress
from ..operators import GGNOperator, HessianOperator
from ._common import (
    WeightedMoments,
    accumulation_dtype,
    batch_weight,
    check_batch_size,
    known_num_samples,
    loss_normaliser,
    rebatch,
)
from .gradients import single_batch_error
from .results import CurvatureStatistics, Estimate

CURVATURES = {"hessian": HessianOperator, "ggn": GGNOperator}


def make_probes(
    num_params: int,
    num_probes: int,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The probes of :func:`curvature_statistics`: unit columns ``Z`` and ``||g_j||^2``.

    Gaussian vectors ``g_j`` are drawn in float64 on the CPU from a generator seeded with
    ``seed`` (so the same seed gives the same probes on every device), then normalised:
    ``z_j = g_j / ||g_j||``, uniform on the unit sphere.

    Returns:
        ``Z`` of shape ``(num_params, num_probes)`` and the squared norms ``||g_j||^2``
        ``(num_probes,)``, both float64 on the CPU before the cast to ``dtype``/``device``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    gauss = torch.randn(num_params, num_probes, generator=generator, dtype=torch.float64)
    norms_sq = (gauss * gauss).sum(0)
    Z = gauss / norms_sq.sqrt()
    return Z.to(device=device, dtype=dtype), norms_sq.to(device=device, dtype=dtype)


def estimate(values: torch.Tensor) -> Estimate:
    """Mean over probes and its standard error (``std / sqrt(k)``; NaN for one probe)."""
    v = values.detach().double().cpu()
    k = v.numel()
    stderr = float(v.std(correction=1) / math.sqrt(k)) if k > 1 else math.nan
    return Estimate(value=float(v.mean()), stderr=stderr, num_samples=k)


def curvature_statistics(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    curvature: str = "hessian",
    num_probes: int = 8,
    batch_size: int = 128,
    seed: int = 0,
    *,
    params: ParamSpec = None,
    batchnorm: str = "eval",
    batch_layout: BatchLayout | None = None,
    progress: Any = None,
    cancel: Any = None,
) -> CurvatureStatistics:
    """Mean, variance, Rayleigh quotient, ``delta``, ``alpha`` and Frobenius norm of the curvature.

    ``data`` is regrouped into batches of ``batch_size`` (the last may be shorter); ``H_i`` is
    the curvature of batch ``i``'s mean loss and ``w_i = b_i / N`` its weight, so
    ``H = sum_i w_i H_i`` is the full-data curvature. For each unit probe ``z``::

        m            = sum_i w_i H_i z                  (= H z, exact)
        mean_norm_sq = ||m||^2                          (original: hess_mean_norm_sq)
        variance     = sum_i w_i ||H_i z - m||^2        (hess_var)
        rayleigh     = z^T m                            (hess_mu, about tr(H) / n)
        delta        = ||m - rayleigh z||^2
        alpha        = max(0, 1 - variance / num_batches / delta)
        frobenius_sq = ||g||^2 ||m||^2 = ||H g||^2      (Hutchinson on H^2, g Gaussian)
        trace        = ||g||^2 rayleigh = g^T H g       (Hutchinson on H)

    where ``g`` is the Gaussian vector whose direction is ``z`` (:func:`make_probes`). The
    record gives the mean of each over the probes and its standard error. With equal batches
    and one probe the first five are the original's formulas, and the GGN is multiplied along
    the same ``z`` as the Hessian (the original's GGN path was not).

    Cost: one forward, one backward and ``num_probes`` second-order backward passes per batch
    for the Hessian (one gradient graph serves all probes); one forward with ``num_probes``
    vectorised JVP/VJP pairs for the GGN.

    Args:
        model: the network.
        loss_fn: a criterion with ``reduction="mean"`` or ``"sum"`` (a sum is divided by the
            batch size: the statistics are of mean losses).
        data: a DataLoader, a re-iterable of ``(inputs, targets)`` batches, or one batch.
        curvature: ``"hessian"`` or ``"ggn"`` (generalised Gauss-Newton).
        num_probes: random unit probes (at least 1; at least 2 for standard errors).
        batch_size: samples per batch (at least 1, at most the dataset size; the data must
            make at least two batches, since a variance across batches is computed).
        seed: seeds the probes (:func:`make_probes`).
        params: the parameters (``None``: all trainable; see the operators' ``params=``).
        batchnorm: ``"eval"`` (running statistics) or ``"train"`` (batch statistics).
        batch_layout: how to split a batch that is not an ``(inputs, targets)`` pair.
        progress: ``True`` (a ``tqdm.auto`` bar) or a callable receiving a
            :class:`~jupyter_curvature.core.progress.ProgressEvent` before each batch's
            block product (phase ``"curvature (hessian)"``, step = batches done).
        cancel: a :class:`~jupyter_curvature.core.progress.CancelToken` checked before each
            batch's product. The statistics are of the full-data curvature, so a cancelled
            pass has no partial answer: it raises ``Cancelled``.

    Raises:
        ValueError: an unknown ``curvature``; ``num_probes < 1``; a ``batch_size`` below 1 or
            above the dataset size; data that makes a single batch.
        Cancelled: ``cancel`` was set before the last batch's product.
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    if isinstance(num_probes, bool) or not isinstance(num_probes, int):
        raise TypeError(f"num_probes must be an int, got {num_probes!r}")
    if num_probes < 1:
        raise ValueError(
            f"num_probes must be at least 1 (2 or more for standard errors), got {num_probes}"
        )
    batch_size = check_batch_size(batch_size)
    batchnorm = check_batchnorm_policy(batchnorm)
    reduction = loss_normaliser(loss_fn)
    total = known_num_samples(data)
    sharded = is_distributed()  # each rank holds a shard: the checks are on the merged counts
    if total is not None and not sharded:
        if batch_size > total:
            raise ValueError(
                f"batch_size={batch_size} is larger than the dataset ({total} samples); "
                f"choose a batch_size between 1 and {total}"
            )
        if math.ceil(total / batch_size) < 2:
            raise single_batch_error(total, batch_size, "curvature variance")
    operator_type = CURVATURES[curvature]
    device, dtype = model_device_dtype(model)
    chosen = select_parameters(model, params)
    num_params = sum(p.numel() for _, p in chosen)
    op_dtype = chosen[0][1].dtype
    acc = accumulation_dtype(device)
    Z, gauss_sq = make_probes(num_params, num_probes, seed, dtype=op_dtype, device=device)
    Z_acc, gauss_sq = Z.to(acc), gauss_sq.to(acc)

    products = WeightedMoments(reduce_dims=(0,))
    samples = 0
    num_batches = None if total is None or sharded else math.ceil(total / batch_size)
    tracker = Progress.of(progress, cancel, f"curvature ({curvature})", num_batches)
    for i, batch in enumerate(
        rebatch(data, batch_size, layout=batch_layout, device=device, dtype=dtype)
    ):
        if tracker.step(i, i * num_probes):
            tracker.finish()
            raise Cancelled(tracker.phase, f"{tracker.phase} cancelled after {i} batches")
        weight = batch_weight(loss_fn, batch)
        samples += batch.size
        if weight == 0:  # no token of this batch counts: no term of the mean
            continue
        operator = operator_type(
            model,
            loss_fn,
            [batch],
            params=[p for _, p in chosen],
            batchnorm=batchnorm,
            batch_layout=batch_parts,
            check=False,
            distributed=False,  # a per-batch product is this rank's own: never all-reduce it
        )
        product = (operator @ Z).to(acc)  # (n, k): the whole probe block through one graph
        if reduction == "sum":
            product = product / weight
        products.add(product, weight)
    if sharded:
        from ..core.distributed.reduce import all_reduce_moments

        products = all_reduce_moments(
            products, like=torch.zeros(num_params, num_probes, dtype=acc, device=device)
        )
        _, samples = all_reduce_sum(torch.zeros(1, dtype=acc, device=device), samples)
    if products.count < 2:
        raise single_batch_error(samples, batch_size, "curvature variance")
    tracker.finish(products.count * num_probes, step=products.count)

    m = products.mean  # (n, k)
    variance = products.variance  # (k,)
    mean_norm_sq = (m * m).sum(0)
    rayleigh = (Z_acc * m).sum(0)
    delta = ((m - rayleigh * Z_acc) ** 2).sum(0)
    nb = products.count
    with torch.no_grad():
        ratio = torch.where(
            delta > 0,
            variance / nb / delta.clamp_min(torch.finfo(acc).tiny),
            torch.where(variance > 0, torch.inf, 0.0),
        )
        alpha = (1 - ratio).clamp_min(0.0)
    per_probe = {
        "mean_norm_sq": mean_norm_sq,
        "variance": variance,
        "rayleigh": rayleigh,
        "delta": delta,
        "alpha": alpha,
        "frobenius_sq": gauss_sq * mean_norm_sq,
        "trace": gauss_sq * rayleigh,
    }
    return CurvatureStatistics(
        curvature=curvature,
        **{k: estimate(v) for k, v in per_probe.items()},
        num_probes=num_probes,
        batch_size=batch_size,
        num_batches=nb,
        num_samples=samples,
        num_params=num_params,
        seed=int(seed),
        batchnorm=batchnorm,
        per_probe={k: v.detach().cpu().tolist() for k, v in per_probe.items()},
    )
