"""Shared plumbing for the statistics: batching, loss normalisation, streaming moments.

The BatchNorm/dropout policy and the model's device and dtype come from the foundation
(:mod:`jupyter_curvature.core.model_state`), as for the curvature operators.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..core.batches import Batch, BatchLayout, BatchSource, Shared, batch_parts, split_shared
from ..core.inputs import model_outputs
from ..core.losses import mean_weight

#: modules whose affine parameters count as "normalisation" (reported apart from weights)
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    NORM_TYPES = (*NORM_TYPES, nn.RMSNorm)


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """Float64 accumulators wherever the device has float64 (not Apple's MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def loss_normaliser(loss_fn: Any) -> str:
    """The criterion's reduction; statistics are always of the per-sample *mean* loss."""
    reduction = getattr(loss_fn, "reduction", "mean")
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"loss_fn has reduction={reduction!r}; the statistics need a scalar loss per batch: "
            "use reduction='mean' (or 'sum', which is divided by the batch size)"
        )
    return reduction


def batch_loss(loss_fn: Any, outputs: Any, targets: Any, size: int, reduction: str) -> torch.Tensor:
    """The mean loss of a batch, whatever the criterion's reduction.

    ``size`` is the batch's weight (:func:`batch_weight`): what a ``"sum"`` is divided by.
    """
    loss = loss_fn(outputs, targets)
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        raise ValueError(
            "loss_fn must return a scalar tensor per batch, got "
            f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}"
        )
    return loss / size if reduction == "sum" else loss


def batch_weight(loss_fn: Any, batch: Batch) -> int:
    """A batch's weight in the mean over the data: its samples, or the counted terms of a
    token loss (:func:`~jupyter_curvature.core.losses.mean_weight`)."""
    return mean_weight(loss_fn, batch)


def forward(model: Any, batch: Batch) -> Any:
    """The model on ``batch`` (positional and keyword inputs); a Hugging Face output gives
    its logits (:func:`~jupyter_curvature.core.inputs.model_outputs`)."""
    return model_outputs(batch.call(model), None)


def check_batch_size(batch_size: Any, name: str = "batch_size") -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"{name} must be a positive int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"{name} must be at least 1, got {batch_size}")
    return batch_size


def known_num_samples(data: Any) -> int | None:
    """The number of samples in ``data`` when it can be told without a pass; else ``None``."""
    from torch.utils.data import DataLoader

    if isinstance(data, DataLoader):
        if data.batch_size is None or data.drop_last:
            return None
        try:
            return len(data.sampler)  # type: ignore[arg-type]
        except TypeError:
            return None
    if isinstance(data, (list, tuple)):
        try:
            return sum(b.size for b in BatchSource(data))
        except (TypeError, ValueError):
            return None
    return None


def _slice(x: Any, start: int, stop: int) -> Any:
    if isinstance(x, Shared):  # the whole batch's: every piece gets all of it
        return x
    if isinstance(x, torch.Tensor):
        return x[start:stop]
    if isinstance(x, (tuple, list)):
        return type(x)(_slice(v, start, stop) for v in x)
    if isinstance(x, dict):
        return {k: _slice(v, start, stop) for k, v in x.items()}
    raise TypeError(
        f"cannot split a batch holding a {type(x).__name__} into smaller batches; "
        "pass batch_size=None to use the data's own batches"
    )


def _cat(parts: list[Any]) -> Any:
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, Shared):
        if not all(_same(first.value, p.value) for p in parts[1:] if isinstance(p, Shared)):
            raise ValueError(
                "data: batches joined into one hold different values of an input marked "
                "jc.shared(...); the joined batch can have only one: choose a batch_size "
                "that is the data's own (batch_size=None)"
            )
        return first
    if isinstance(first, torch.Tensor):
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise ValueError(
                f"data: batches of shapes {sorted(shapes)} (after the batch dimension) cannot "
                "be joined into one batch, e.g. sequences padded to different lengths; pad "
                "every batch to one length (a tokenizer's padding='max_length'), or choose a "
                "batch_size that is the data's own"
            )
        return torch.cat(parts)
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _cat([p[k] for p in parts]) for k in first}
    raise TypeError(f"cannot join batches holding a {type(first).__name__}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a is b or (a.shape == b.shape and bool(torch.equal(a, b)))
    return a is b or a == b


def rebatch(
    data: Any,
    batch_size: int | None,
    *,
    layout: BatchLayout | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
) -> Iterator[Batch]:
    """The samples of ``data`` in order, regrouped into batches of ``batch_size``.

    The last batch holds the remainder (it may be shorter). ``batch_size=None`` keeps the
    data's own batches. Batches are moved to ``device``, and floating tensors cast to
    ``dtype``. With ``strict=False`` (chunks of work, not statistical batches) a
    ``batch_size`` above the dataset size gives one batch of everything.

    Raises:
        ValueError: ``batch_size`` is larger than the dataset, or the data is empty.
    """
    source = BatchSource(data, layout)
    if batch_size is None:
        count = 0
        for batch in source:
            count += 1
            yield batch.to(device, dtype) if device is not None else batch
        if count == 0:
            raise ValueError("data is empty: it yielded no batch")
        return
    batch_size = check_batch_size(batch_size)
    total = known_num_samples(data)
    if strict and total is not None and batch_size > total:
        raise ValueError(
            f"batch_size={batch_size} is larger than the dataset ({total} samples); "
            f"choose a batch_size between 1 and {total}"
        )
    # a batch's parts as one tree (args, kwargs, targets): joined and sliced together
    pending: list[tuple[tuple[Any, ...], dict[str, Any], Any]] = []
    held = 0
    index = 0
    seen = 0

    def emit(parts: tuple[Any, ...], size: int) -> Batch:
        args, kwargs, targets = parts
        args, kwargs, marked = split_shared(args, kwargs)
        batch = Batch(args, targets, size, index, kwargs, marked)
        return batch.to(device, dtype) if device is not None else batch

    for raw in source:
        seen += raw.size
        pending.append(batch_parts(raw))  # shared inputs stay marked: never joined or sliced
        held += raw.size
        if held < batch_size:
            continue
        joined = _cat(pending)
        start = 0
        while held - start >= batch_size:
            yield emit(_slice(joined, start, start + batch_size), batch_size)
            index += 1
            start += batch_size
        pending = [_slice(joined, start, held)] if start < held else []
        held -= start
    if seen == 0:
        raise ValueError("data is empty: it yielded no batch")
    if strict and index == 0 and held < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the dataset ({seen} samples); "
            f"choose a batch_size between 1 and {seen}"
        )
    if held:
        yield emit(_cat(pending), held)


class WeightedMoments:
    """Streaming weighted mean and scatter of vectors (Chan, Golub and LeVeque's merge).

    ``add_group(weight, mean, scatter)`` merges a group with total ``weight``, weighted
    ``mean`` and ``scatter = sum w ||x - mean||^2`` (reduced over ``reduce_dims``). Merging
    group means avoids the cancellation of ``E||x||^2 - ||E x||^2``.
    """

    def __init__(self, reduce_dims: tuple[int, ...] | None = None) -> None:
        self.reduce_dims = reduce_dims  # None: reduce over everything (a scalar scatter)
        self.weight = 0.0
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.scatter: torch.Tensor | float = 0.0

    def _sqnorm(self, d: torch.Tensor) -> torch.Tensor:
        d2 = d * d
        return d2.sum() if self.reduce_dims is None else d2.sum(dim=self.reduce_dims)

    def add(self, x: torch.Tensor, weight: float) -> None:
        self.add_group(weight, x, 0.0, count=1)

    def add_group(
        self, weight: float, mean: torch.Tensor, scatter: torch.Tensor | float, count: int = 1
    ) -> None:
        weight = float(weight)
        if self.mean is None:
            self.weight, self.mean, self.scatter = weight, mean.clone(), scatter
            self.count = count
            return
        total = self.weight + weight
        delta = mean - self.mean
        self.scatter = self.scatter + scatter + self._sqnorm(delta) * (self.weight * weight / total)
        self.mean = self.mean + delta * (weight / total)
        self.weight = total
        self.count += count

    @property
    def variance(self) -> torch.Tensor | float:
        """The weighted population variance ``sum w ||x - mean||^2 / sum w``."""
        return self.scatter / self.weight
