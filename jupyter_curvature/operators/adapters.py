"""Adapters: a dense tensor, a function ``v -> A v`` or a duck-typed operator as an operator.

:func:`as_operator` turns each into a :class:`~jupyter_curvature.operators.CurvatureOperator`,
which then composes like any other (``2 * A``, ``A + B``, ``A.deflated(V, values)``; see
:mod:`jupyter_curvature.operators.base`).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch

from .base import CurvatureOperator, DenseOperator


class FunctionOperator(CurvatureOperator):
    """A symmetric operator given by a function ``v -> A v`` (see :func:`as_operator`).

    Args:
        fn: maps an ``(n, k)`` block to ``A`` times it (``batched=True``), or an ``(n,)``
            vector to ``A v`` (``batched=False``: called once per column).
        n: the dimension.
        dtype, device: what ``fn`` takes and returns.
        batched: see ``fn``.
        versions: optional ``() -> tuple[int, ...]`` of version counters of the tensors ``fn``
            reads (a change during a product then raises ``ModelChangedError``).
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        n: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        *,
        batched: bool = True,
        versions: Callable[[], tuple[int, ...]] | None = None,
    ) -> None:
        super().__init__(n, dtype, device)
        self.fn = fn
        self.batched = bool(batched)
        self._versions = versions

    def parameter_versions(self) -> tuple[int, ...]:
        return tuple(self._versions()) if self._versions is not None else ()

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        if self.batched:
            out = self.fn(block)
        else:
            out = torch.stack([self.fn(block[:, j]) for j in range(block.shape[1])], 1)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(block.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"the operator's function returned {got} for a block of shape "
                f"{tuple(block.shape)}; it must return A times the block, of the same shape"
                + ("" if not self.batched else " (pass batched=False for a v -> Av function)")
            )
        return out

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return f"FunctionOperator({name}, n={self._n}, dtype={self.dtype}, device={self.device})"


def as_operator(
    op: Any,
    shape: int | tuple[int, int] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    *,
    batched: bool = True,
) -> CurvatureOperator:
    """A :class:`CurvatureOperator` from an operator, a square tensor or a function.

    Args:
        op: a ``CurvatureOperator`` (returned as it is), a square symmetric ``torch.Tensor``
            (a :class:`~jupyter_curvature.operators.DenseOperator`; the symmetry is the
            caller's, spectral routines check it for free), a function ``v -> A v`` (needs
            ``shape``), or an object with ``shape``, ``dtype`` and ``matmat`` or ``@``.
        shape: ``n`` or ``(n, n)``; required for a function, checked otherwise.
        dtype: of the vectors a function takes (default ``torch.float64``); checked otherwise.
        device: of a function's vectors (default CPU).
        batched: a function takes ``(n, k)`` blocks (default) or single ``(n,)`` vectors.

    Example:
        >>> import torch
        >>> A = as_operator(lambda v: 3 * v, shape=2)
        >>> ((2.0 * A) @ torch.ones(2, dtype=torch.float64)).tolist()
        [6.0, 6.0]
    """
    n = _dimension(shape)
    if isinstance(op, torch.Tensor):
        result: CurvatureOperator = DenseOperator(op)
    elif isinstance(op, CurvatureOperator):
        result = op
    elif (
        hasattr(op, "shape")
        and hasattr(op, "dtype")
        and (hasattr(op, "matmat") or hasattr(op, "__matmul__"))
    ):
        op_shape = tuple(op.shape)
        if len(op_shape) != 2 or op_shape[0] != op_shape[1]:
            raise ValueError(f"op must be square, got shape {op_shape}")
        if not isinstance(op.dtype, torch.dtype) or not op.dtype.is_floating_point:
            raise TypeError(f"op must work in a floating torch dtype, got {op.dtype}")
        product = op.matmat if hasattr(op, "matmat") else op.__matmul__
        versions = getattr(op, "parameter_versions", None)
        result = FunctionOperator(
            product,
            int(op_shape[0]),
            op.dtype,
            getattr(op, "device", "cpu"),
            versions=versions if callable(versions) else None,
        )
        if getattr(op, "lock", None) is not None:
            result.lock = op.lock
    elif callable(op):
        if n is None:
            raise ValueError(
                "shape is required for a function v -> Av: as_operator(fn, shape=n, dtype=...)"
            )
        fn_dtype = torch.float64 if dtype is None else dtype
        if not fn_dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {fn_dtype}")
        return FunctionOperator(
            op, n, fn_dtype, torch.device("cpu" if device is None else device), batched=batched
        )
    else:
        raise TypeError(
            "op must be a curvature operator (HessianOperator, GGNOperator, DenseOperator, "
            f"...), a square torch.Tensor or a function v -> Av, got {type(op).__name__}"
        )
    if n is not None and result.shape[0] != n:
        raise ValueError(f"shape {(n, n)} does not match the operator's {result.shape}")
    if dtype is not None and result.dtype != dtype:
        raise ValueError(
            f"dtype {dtype} does not match the operator's {result.dtype}; convert the matrix "
            "or build the operator in that dtype"
        )
    if device is not None and torch.device(device) != result.device:
        raise ValueError(f"device {device} does not match the operator's {result.device}")
    return result


def _dimension(shape: int | tuple[int, int] | None) -> int | None:
    if shape is None:
        return None
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        dims: tuple[int, ...] = (int(shape), int(shape))
    else:
        dims = tuple(int(s) for s in shape)
    if len(dims) != 2 or dims[0] != dims[1] or dims[0] < 1:
        raise ValueError(f"shape must be n or (n, n) with n >= 1, got {shape!r}")
    return dims[0]
