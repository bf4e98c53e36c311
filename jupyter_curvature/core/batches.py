"""Reading batches: DataLoaders, re-iterables of ``(inputs, targets)``, one batch, or a custom layout."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

#: ``layout(batch) -> (model_args, targets)``: how to split one batch. ``model_args`` is a
#: tuple of positional arguments for the model (a lone tensor is wrapped).
BatchLayout = Callable[[Any], tuple[Any, Any]]


@dataclass
class Batch:
    """One batch split into model inputs and loss targets."""

    args: tuple[Any, ...]
    targets: Any
    size: int
    index: int

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> Batch:
        """Move tensors to ``device``; floating inputs (not integer labels) to ``dtype``."""
        return Batch(
            tuple(_move(a, device, dtype) for a in self.args),
            _move(self.targets, device, dtype),
            self.size,
            self.index,
        )


def _move(x: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    if isinstance(x, torch.Tensor):
        if dtype is not None and x.is_floating_point():
            return x.to(device=device, dtype=dtype)
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_move(v, device, dtype) for v in x)
    if isinstance(x, dict):
        return {k: _move(v, device, dtype) for k, v in x.items()}
    return x


def default_layout(batch: Any) -> tuple[tuple[Any, ...], Any]:
    """``(inputs, targets)`` pairs, and dicts with ``"inputs"``/``"targets"`` (or ``"x"``/``"y"``)."""
    if isinstance(batch, dict):
        for xk, yk in (("inputs", "targets"), ("x", "y"), ("input", "target")):
            if xk in batch and yk in batch:
                return (batch[xk],), batch[yk]
        raise TypeError(
            f"a dict batch needs keys 'inputs'/'targets' (or 'x'/'y'), got {sorted(batch)}; "
            "pass batch_layout=lambda b: ((model_inputs,), targets) to explain your layout"
        )
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, targets = batch
        args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        return args, targets
    raise TypeError(
        "each batch must be an (inputs, targets) pair, got "
        f"{type(batch).__name__}{f' of length {len(batch)}' if hasattr(batch, '__len__') else ''}; "
        "pass batch_layout=lambda b: ((model_inputs,), targets) for another layout"
    )


def _batch_size(args: tuple[Any, ...], targets: Any) -> int:
    for x in (targets, *args):
        if isinstance(x, torch.Tensor) and x.ndim > 0:
            return int(x.shape[0])
    raise TypeError(
        "cannot tell the batch size: neither the targets nor the inputs are tensors with a "
        "batch dimension; pass batch_layout= returning tensors"
    )


def is_single_batch(data: Any) -> bool:
    """A tuple/list of exactly two tensors is one ``(inputs, targets)`` batch."""
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    )


class BatchSource:
    """Re-iterable view of ``data`` as :class:`Batch` records.

    Args:
        data: a DataLoader, any re-iterable of batches, or one ``(inputs, targets)`` batch.
        layout: splits a raw batch into ``(model_args, targets)``.
    """

    def __init__(self, data: Any, layout: BatchLayout | None = None) -> None:
        if data is None:
            raise TypeError(
                "data must be a DataLoader, an iterable of batches or one batch, got None"
            )
        self.single = is_single_batch(data)
        if not self.single:
            if isinstance(data, Iterator):
                raise TypeError(
                    "data is a one-shot iterator, but curvature products pass over the data many "
                    "times; pass the DataLoader (or a list of batches) itself"
                )
            if not isinstance(data, Iterable):
                raise TypeError(
                    "data must be a DataLoader, a re-iterable of (inputs, targets) batches or one "
                    f"(inputs, targets) batch, got {type(data).__name__}"
                )
        self.data = data
        self.layout = layout or default_layout

    def __iter__(self) -> Iterator[Batch]:
        raw_batches = [self.data] if self.single else self.data
        for index, raw in enumerate(raw_batches):
            args, targets = self.layout(raw)
            if not isinstance(args, tuple):
                args = (args,)
            yield Batch(args, targets, _batch_size(args, targets), index)

    def first(self) -> Batch:
        for batch in self:
            return batch
        raise ValueError("data is empty: it yielded no batch; check the dataset and the loader")
