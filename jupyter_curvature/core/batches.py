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
#: tensor is wrapped), ``model_kwargs`` a dict of keyword arguments. Every input is per
#: sample (row ``n`` of dim 0 belongs to sample ``n``) unless wrapped in :func:`shared`.
BatchLayout = Callable[[Any], tuple[Any, ...]]


@dataclass(frozen=True)
class Shared:
    """A model input that belongs to the whole batch, not to one sample: see :func:`shared`."""

    value: Any


def shared(value: Any) -> Shared:
    """Mark a model input returned by a ``batch_layout`` as shared by all samples of the batch.

    Per-sample computations (the gradient covariance ``EmpiricalFisherOperator``, per-sample
    gradient statistics) call the model on one sample at a time, so they must know which
    inputs to split. The rule: a positional or keyword input is **per sample**, split along
    dim 0, when it is a tensor whose dim 0 is the batch size; anything else (a non-tensor, a
    scalar tensor, a tensor of another length) is passed whole. A tensor whose dim 0 only
    happens to equal the batch size (a ``(T, T)`` attention bias with ``T == B``, a weight
    vector used as ``scale.sum()``) must be marked::

        batch_layout=lambda b: ((b[0],), {"bias": jc.shared(bias)}, b[1])

    The curvature of the whole batch (Hessian, GGN) is the same either way: the model gets
    the value itself. Regrouping batches (``batch_size=`` of the statistics) does not join or
    slice shared inputs; batches regrouped together must share the same value.
    """
    return value if isinstance(value, Shared) else Shared(value)


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
    #: the inputs marked :func:`shared` by the layout: positions of ``args``, names of ``kwargs``
    shared: frozenset[int | str] = frozenset()

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> Batch:
        """Move tensors to ``device``; floating inputs (not integer labels) to ``dtype``."""
        return Batch(
            tuple(_move(a, device, dtype) for a in self.args),
            _move(self.targets, device, dtype),
            self.size,
            self.index,
            _move(self.kwargs, device, dtype),
            self.shared,
        )

    def per_sample_dims(self) -> tuple[tuple[int | None, ...], dict[str, int | None]]:
        """``vmap`` ``in_dims`` of ``args`` and ``kwargs``: 0 per sample, ``None`` shared.

        Per sample: a tensor whose dim 0 is the batch size, not marked :func:`shared`.
        """

        def dim(key: int | str, value: Any) -> int | None:
            leaves = _leaves(value)  # a tuple/list/dict input is per sample when all of it is
            per_sample = (
                key not in self.shared
                and bool(leaves)
                and all(
                    isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] == self.size
                    for t in leaves
                )
            )
            return 0 if per_sample else None

        return (
            tuple(dim(i, a) for i, a in enumerate(self.args)),
            {k: dim(k, v) for k, v in self.kwargs.items()},
        )

    def sample(self, n: int) -> Batch:
        """Sample ``n`` as a batch of one (shared inputs whole, per-sample inputs sliced)."""
        arg_dims, kw_dims = self.per_sample_dims()

        def row(x: Any) -> Any:
            return map_tensors(lambda t: t[n : n + 1], x)

        args = tuple(a if d is None else row(a) for a, d in zip(self.args, arg_dims))
        kwargs = {k: v if kw_dims[k] is None else row(v) for k, v in self.kwargs.items()}
        return Batch(args, row(self.targets), 1, self.index, kwargs, self.shared)

    def call(self, model: Callable[..., Any]) -> Any:
        """``model(*args, **kwargs)``: the model's raw output on this batch."""
        return model(*self.args, **self.kwargs)

    def inputs(self) -> list[Any]:
        """Every model input (positional, then keyword values), e.g. to check their dtypes."""
        return [*self.args, *self.kwargs.values()]


def _leaves(x: Any) -> list[Any]:
    """The leaves of nested tuples, lists and dicts."""
    if isinstance(x, (tuple, list)):
        return [leaf for v in x for leaf in _leaves(v)]
    if isinstance(x, Mapping):
        return [leaf for v in x.values() for leaf in _leaves(v)]
    return [x]


def map_tensors(fn: Callable[[torch.Tensor], Any], x: Any) -> Any:
    """``fn`` applied to every tensor in nested tuples, lists and dicts (others unchanged)."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (tuple, list)):
        return type(x)(map_tensors(fn, v) for v in x)
    if isinstance(x, Mapping):
        return {k: map_tensors(fn, v) for k, v in x.items()}
    return x


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


def _batch_size(
    args: tuple[Any, ...], targets: Any, kwargs: dict[str, Any], marked: frozenset = frozenset()
) -> int:
    inputs = [a for i, a in enumerate(args) if i not in marked]
    inputs += [v for k, v in kwargs.items() if k not in marked]
    for x in (targets, *inputs):
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


def check_per_sample_split(batch: Batch, call: Callable[[Batch], Any]) -> None:
    """Check that the model's outputs on single samples are the rows of its batch outputs.

    Per-sample computations split the inputs by :meth:`Batch.per_sample_dims`. An input that
    belongs to the whole batch but whose dim 0 happens to equal the batch size would be split
    too, and every per-sample gradient would be silently wrong; so when more than one input
    is split, the first and the last sample are run alone and compared with the batch's
    outputs (``call(batch)``: the model's raw outputs; tensors with a batch dimension are
    compared, to a tolerance of ``sqrt(eps)`` of their dtype relative to their largest entry).

    Raises:
        ValueError: a sample's outputs differ; the message names the split inputs and the
            remedy, :func:`shared`.
    """
    arg_dims, kw_dims = batch.per_sample_dims()
    split = [f"argument {i}" for i, d in enumerate(arg_dims) if d is not None]
    split += [f"{k!r}" for k, d in kw_dims.items() if d is not None]
    if len(split) < 2 or batch.size < 2:  # one split input: nothing to mix up
        return
    with torch.no_grad():
        whole = _batch_tensors(call(batch), batch.size)
        for n in sorted({0, batch.size - 1}):
            alone = _batch_tensors(call(batch.sample(n)), 1)
            if len(alone) != len(whole) or not all(
                _close(a[0], w[n]) for a, w in zip(alone, whole)
            ):
                raise ValueError(
                    f"batch_layout: the model's outputs on sample {n} alone differ from its "
                    f"outputs on the batch, with the inputs {', '.join(split)} split along "
                    "dim 0 as per-sample inputs. An input that belongs to the whole batch "
                    "(its dim 0 only happens to equal the batch size) must be marked in the "
                    "layout: batch_layout=lambda b: (args, {'name': jc.shared(value)}, "
                    "targets). Per-sample gradients also need a model that treats the samples "
                    "independently (BatchNorm in eval mode)"
                )


def _batch_tensors(out: Any, size: int) -> list[torch.Tensor]:
    """The tensors in a model's outputs whose dim 0 is ``size``, in a fixed order."""
    if isinstance(out, torch.Tensor):
        return [out] if out.ndim > 0 and out.shape[0] == size else []
    if isinstance(out, Mapping):
        return [t for k in out for t in _batch_tensors(out[k], size)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _batch_tensors(v, size)]
    return []


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    scale = float(b.abs().max()) if b.numel() else 0.0
    tol = torch.finfo(b.dtype).eps ** 0.5 * max(scale, 1e-30)
    return bool(((a - b).abs() <= tol).all())


def split_shared(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], frozenset[int | str]]:
    """The inputs without their :func:`shared` marks, and the keys that had one."""
    marked = frozenset(
        [i for i, a in enumerate(args) if isinstance(a, Shared)]
        + [k for k, v in kwargs.items() if isinstance(v, Shared)]
    )
    args = tuple(a.value if isinstance(a, Shared) else a for a in args)
    kwargs = {k: v.value if isinstance(v, Shared) else v for k, v in kwargs.items()}
    return args, kwargs, marked


def batch_parts(batch: Batch) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """The layout of data that already holds :class:`Batch` records (one batch re-read)."""
    args = tuple(Shared(a) if i in batch.shared else a for i, a in enumerate(batch.args))
    kwargs = {k: Shared(v) if k in batch.shared else v for k, v in batch.kwargs.items()}
    return args, kwargs, batch.targets


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
            args, kwargs, marked = split_shared(args, kwargs)
            size = _batch_size(args, targets, kwargs, marked)
            yield Batch(args, targets, size, index, kwargs, marked)

    def first(self) -> Batch:
        for batch in self:
            return batch
        raise ValueError("data is empty: it yielded no batch; check the dataset and the loader")
