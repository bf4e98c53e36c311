"""Reading batches: DataLoaders, re-iterables of ``(inputs, targets)``, one batch, or a custom layout.

Hugging Face batches (dicts with ``labels``, as its collators give them) need no layout:
:func:`default_layout` calls the model with the other keys as keyword arguments
(:func:`labels_layout`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

#: ``layout(batch) -> (model_args, targets)`` or ``(model_args, model_kwargs, targets)``: how to
#: split one batch. ``model_args`` is a tuple of positional arguments for the model (a lone
#: tensor is wrapped), ``model_kwargs`` a dict of keyword arguments.
BatchLayout = Callable[[Any], tuple[Any, ...]]

#: the label Hugging Face's losses skip (``ignore_index`` of its token cross-entropy)
HF_IGNORE_INDEX = -100


@dataclass
class Batch:
    """One batch split into model inputs (positional ``args``, keyword ``kwargs``) and targets.

    The model is called as ``model(*batch.args, **batch.kwargs)`` (:meth:`call`).
    """

    args: tuple[Any, ...]
    targets: Any
    size: int
    index: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> Batch:
        """Move tensors to ``device``; floating inputs (not integer labels) to ``dtype``."""
        return Batch(
            tuple(_move(a, device, dtype) for a in self.args),
            _move(self.targets, device, dtype),
            self.size,
            self.index,
            _move(self.kwargs, device, dtype),
        )

    def call(self, model: Callable[..., Any]) -> Any:
        """``model(*args, **kwargs)``: the model's raw output on this batch."""
        return model(*self.args, **self.kwargs)

    def inputs(self) -> list[Any]:
        """Every model input (positional, then keyword values), e.g. to check their dtypes."""
        return [*self.args, *self.kwargs.values()]


def _move(x: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    if isinstance(x, torch.Tensor):
        if dtype is not None and x.is_floating_point():
            return x.to(device=device, dtype=dtype)
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_move(v, device, dtype) for v in x)
    if isinstance(x, Mapping):
        return {k: _move(v, device, dtype) for k, v in x.items()}
    return x


#: the keys of a Hugging Face batch that hold the labels, in order of preference
LABEL_KEYS = ("labels", "label")


def labels_layout(batch: Mapping[str, Any]) -> tuple[tuple[()], dict[str, Any], Any]:
    """A Hugging Face batch: ``labels`` are the targets, every other key a keyword argument.

    ``{"input_ids": ..., "attention_mask": ..., "labels": ...}`` (what its tokenizers and
    collators give) becomes ``model(input_ids=..., attention_mask=...)`` with targets
    ``labels`` (``label`` is accepted too). The labels are not passed to the model, so it
    does not compute its own loss. Where the labels are per token (the shape of
    ``attention_mask``), padded positions (``attention_mask == 0``) get the label
    :data:`HF_IGNORE_INDEX` (-100), so no loss counts them, whatever the collator wrote there.

    Raises:
        TypeError: the batch has no ``labels`` key (the message names ``batch_layout=``).
    """
    key = next((k for k in LABEL_KEYS if k in batch), None)
    if key is None:
        raise TypeError(
            f"data: a dict batch with keys {sorted(map(str, batch))} has no labels; the loss "
            "needs targets: give the batches a 'labels' key (a Hugging Face collator such as "
            "DataCollatorForLanguageModeling(tokenizer, mlm=False) adds it), or pass "
            "batch_layout=lambda b: ((), {k: v for k, v in b.items() if k != 'y'}, b['y'])"
        )
    kwargs = {k: v for k, v in batch.items() if k != key}
    labels = batch[key]
    mask = kwargs.get("attention_mask")
    if (
        isinstance(labels, torch.Tensor)
        and isinstance(mask, torch.Tensor)
        and labels.shape == mask.shape
        and not labels.is_floating_point()
    ):
        labels = labels.masked_fill(mask == 0, HF_IGNORE_INDEX)
    return (), kwargs, labels


def _is_keyword_batch(batch: Mapping[str, Any]) -> bool:
    """A Hugging Face batch: labels, or a model input key such as ``input_ids``."""
    return any(k in batch for k in (*LABEL_KEYS, "input_ids", "inputs_embeds", "pixel_values"))


def default_layout(batch: Any) -> tuple[Any, ...]:
    """``(inputs, targets)`` pairs, dicts with ``"inputs"``/``"targets"`` (or ``"x"``/``"y"``),
    and Hugging Face dicts with ``"labels"`` (:func:`labels_layout`)."""
    if isinstance(batch, Mapping):
        for xk, yk in (("inputs", "targets"), ("x", "y"), ("input", "target")):
            if xk in batch and yk in batch:
                return (batch[xk],), batch[yk]
        if _is_keyword_batch(batch):
            return labels_layout(batch)
        raise TypeError(
            f"a dict batch needs keys 'inputs'/'targets' (or 'x'/'y', or Hugging Face keys "
            f"with 'labels'), got {sorted(map(str, batch))}; pass "
            "batch_layout=lambda b: ((model_inputs,), targets) to explain your layout"
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


def _batch_size(args: tuple[Any, ...], targets: Any, kwargs: dict[str, Any]) -> int:
    for x in (targets, *args, *kwargs.values()):
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


def layout_parts(parts: Any) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """A layout's result as ``(args, kwargs, targets)`` (see :data:`BatchLayout`)."""
    if not isinstance(parts, (tuple, list)) or len(parts) not in (2, 3):
        raise TypeError(
            "batch_layout must return (model_args, targets) or (model_args, model_kwargs, "
            f"targets), got {type(parts).__name__}"
            + (f" of length {len(parts)}" if isinstance(parts, (tuple, list)) else "")
        )
    args, kwargs, targets = parts if len(parts) == 3 else (parts[0], {}, parts[1])
    if not isinstance(args, tuple):
        args = (args,)
    if not isinstance(kwargs, Mapping):
        raise TypeError(
            f"batch_layout: model_kwargs must be a dict of keyword arguments, got "
            f"{type(kwargs).__name__}"
        )
    return args, dict(kwargs), targets


def batch_parts(batch: Batch) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """The layout of data that already holds :class:`Batch` records (one batch re-read)."""
    return batch.args, batch.kwargs, batch.targets


class BatchSource:
    """Re-iterable view of ``data`` as :class:`Batch` records.

    Args:
        data: a DataLoader, any re-iterable of batches, or one batch (an ``(inputs, targets)``
            pair, or one dict such as a Hugging Face ``BatchEncoding``).
        layout: splits a raw batch into ``(model_args, targets)`` or
            ``(model_args, model_kwargs, targets)``.
    """

    def __init__(self, data: Any, layout: BatchLayout | None = None) -> None:
        if data is None:
            raise TypeError(
                "data must be a DataLoader, an iterable of batches or one batch, got None"
            )
        self.single = is_single_batch(data) or isinstance(data, Mapping)
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
            args, kwargs, targets = layout_parts(self.layout(raw))
            yield Batch(args, targets, _batch_size(args, targets, kwargs), index, kwargs)

    def first(self) -> Batch:
        for batch in self:
            return batch
        raise ValueError("data is empty: it yielded no batch; check the dataset and the loader")
