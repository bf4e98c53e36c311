"""All the statistics of a model in one call: the original's ``compute_loss_stats``."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core.batches import BatchLayout
from .curvature import curvature_statistics
from .evaluation import bn_update, evaluate
from .gradients import gradient_statistics
from .norms import weight_norms
from .results import NetworkStatistics


def network_statistics(
    model: nn.Module,
    loss_fn: Any,
    train: Any,
    test: Any = None,
    *,
    batch_size: int = 128,
    per_sample: bool = False,
    curvature: str | None = "hessian",
    num_probes: int = 8,
    seed: int = 0,
    batchnorm: str = "eval",
    recalibrate_batchnorm: bool = False,
    topk: tuple[int, ...] = (1, 5),
    batch_layout: BatchLayout | None = None,
) -> NetworkStatistics:
    """Evaluation, gradient and curvature statistics and weight norms of ``model``.

    The original package (``core/loss_stats.py``) ran ``bn_update`` on the training data,
    then evaluated train and test loss/accuracy and computed ``loss_stats`` and the weight
    norms. This does the same with :func:`evaluate`, :func:`gradient_statistics`,
    :func:`curvature_statistics` and :func:`weight_norms`.

    Args:
        model: the network.
        loss_fn: a criterion with ``reduction="mean"`` or ``"sum"``.
        train: the training data (evaluation, gradient and curvature statistics).
        test: optional test data (evaluation only).
        batch_size: the mini-batch size of the gradient and curvature statistics.
        per_sample: gradient statistics per sample (the curvature ones stay per batch).
        curvature: ``"hessian"``, ``"ggn"``, or ``None`` to skip the curvature statistics.
        num_probes: probes of the curvature statistics.
        seed: seeds the probes.
        batchnorm: ``"eval"`` or ``"train"`` for every pass (see :func:`evaluate`).
        recalibrate_batchnorm: run :func:`bn_update` on ``train`` first. This changes the
            model's running statistics (the original always did it); off by default.
        topk: accuracies reported by the evaluations.
        batch_layout: how to split a batch that is not an ``(inputs, targets)`` pair.
    """
    if recalibrate_batchnorm:
        bn_update(model, train, batch_layout=batch_layout)
    common = {"batchnorm": batchnorm, "batch_layout": batch_layout}
    return NetworkStatistics(
        train=evaluate(model, loss_fn, train, topk=topk, **common),
        test=evaluate(model, loss_fn, test, topk=topk, **common) if test is not None else None,
        gradients=gradient_statistics(
            model, loss_fn, train, batch_size=batch_size, per_sample=per_sample, **common
        ),
        curvature=(
            curvature_statistics(
                model,
                loss_fn,
                train,
                curvature,
                num_probes=num_probes,
                batch_size=batch_size,
                seed=seed,
                **common,
            )
            if curvature is not None
            else None
        ),
        weights=weight_norms(model),
    )
