"""Evaluation (mean loss, top-k accuracy) and BatchNorm recalibration (``bn_update``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.batches import BatchLayout
from ..core.losses import class_dim, counted_labels
from ..core.model_state import (
    batchnorm_modules,
    check_batchnorm_policy,
    model_device_dtype,
    model_mode,
)
from ._common import (
    batch_loss,
    batch_weight,
    forward,
    loss_normaliser,
    rebatch,
)
from .results import EvaluationResult


def evaluate(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    batchnorm: str = "eval",
    topk: Sequence[int] = (1, 5),
    *,
    batch_layout: BatchLayout | None = None,
) -> EvaluationResult:
    """Mean loss and top-k accuracy of ``model`` over ``data``.

    Dropout is off. BatchNorm follows ``batchnorm``: ``"eval"`` uses the running statistics
    (call :func:`bn_update` first to recalibrate them); ``"train"`` normalises with each
    batch's statistics, as the original package did, and leaves the running buffers as they
    were. The model's modes are restored afterwards.

    Args:
        model: the network.
        loss_fn: a criterion ``loss_fn(outputs, targets)`` with ``reduction="mean"`` or
            ``"sum"``; the loss reported is always the mean per sample, batches weighted by
            their size.
        data: a DataLoader, a re-iterable of ``(inputs, targets)`` batches, or one batch.
        batchnorm: ``"eval"`` or ``"train"``.
        topk: the k of the top-k accuracies (``k`` larger than the number of classes is left
            out). Accuracies are reported only when the targets are class indices.
        batch_layout: how to split a batch that is not an ``(inputs, targets)`` pair.

    Returns:
        An :class:`EvaluationResult` (``.loss``, ``.accuracy["top1"]``, ``.error``...).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 4).double()
        >>> x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 4, (10,))
        >>> r = evaluate(model, torch.nn.CrossEntropyLoss(), (x, y), topk=(1,))
        >>> abs(r.loss - torch.nn.functional.cross_entropy(model(x), y).item()) < 1e-12
        True
    """
    batchnorm = check_batchnorm_policy(batchnorm)
    ks = sorted({int(k) for k in topk})
    if any(k < 1 for k in ks):
        raise ValueError(f"topk entries must be at least 1, got {tuple(topk)}")
    reduction = loss_normaliser(loss_fn)
    device, dtype = model_device_dtype(model)
    total_loss = 0.0
    correct = dict.fromkeys(ks, 0)
    classification = True
    num_classes = None
    n = terms = judged = 0  # samples, terms of the mean (samples, tokens), labels judged
    with model_mode(model, batchnorm), torch.no_grad():
        for batch in rebatch(data, None, layout=batch_layout, device=device, dtype=dtype):
            outputs = forward(model, batch)
            weight = batch_weight(loss_fn, batch)
            n += batch.size
            if weight == 0:  # every label ignored: no term of the mean, nothing to judge
                continue
            loss = batch_loss(loss_fn, outputs, batch.targets, weight, reduction)
            total_loss += float(loss) * weight
            terms += weight
            targets = batch.targets
            dim = class_dim(loss_fn, outputs, targets)
            if classification and dim is not None:
                num_classes = outputs.shape[dim]
                counted = counted_labels(loss_fn, targets)
                top = outputs.topk(min(max(ks), num_classes), dim=dim).indices
                hits = (top == targets.unsqueeze(dim)).cumsum(dim).bool()  # in the top k
                for k in ks:
                    if k <= num_classes:
                        correct[k] += int((hits.select(dim, k - 1) & counted).sum())
                judged += int(counted.sum())
            else:
                classification = False
    accuracy = (
        {f"top{k}": correct[k] / judged for k in ks if num_classes is not None and k <= num_classes}
        if classification and judged
        else {}
    )
    return EvaluationResult(
        loss=total_loss / terms if terms else float("nan"),
        accuracy=accuracy,
        num_samples=n,
        batchnorm=batchnorm,
    )


def bn_update(model: nn.Module, data: Any, *, batch_layout: BatchLayout | None = None) -> nn.Module:
    """Recompute every BatchNorm layer's running statistics from ``data``.

    The running statistics are reset, then one pass over ``data`` (no gradients, dropout
    off, only the BatchNorm layers in train mode) averages the batch statistics
    cumulatively, like ``momentum=None``, but weighting each batch by its size, so an
    uneven last batch counts for its samples, not as a full batch. Each layer's
    ``momentum`` and every module's train/eval mode are restored afterwards. A model
    without BatchNorm is returned untouched (no pass is made).

    The running mean is then exactly the dataset mean of each channel; the running
    variance is the size-weighted mean of the per-batch (unbiased) variances, as in
    ``torch.optim.swa_utils.update_bn``.

    Args:
        model: the network (changed in place and returned).
        data: a DataLoader, a re-iterable of ``(inputs, targets)`` batches, or one batch.
        batch_layout: how to split a batch that is not an ``(inputs, targets)`` pair.
    """
    bns = [m for m in batchnorm_modules(model) if m.track_running_stats]
    if not bns:
        return model
    device, dtype = model_device_dtype(model)
    flags = [(m, m.training) for m in model.modules()]
    momenta = [m.momentum for m in bns]
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.train()
        seen = 0
        with torch.no_grad():
            for batch in rebatch(data, None, layout=batch_layout, device=device, dtype=dtype):
                # running = (1 - m) running + m batch with m = b / (seen + b): a size-weighted
                # cumulative average (momentum=None would weight batches equally)
                momentum = batch.size / (seen + batch.size)
                for m in bns:
                    m.momentum = momentum
                batch.call(model)
                seen += batch.size
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        for m, flag in flags:
            m.training = flag
    return model
