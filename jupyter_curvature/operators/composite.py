"""Operators built from operators: scalar multiples, sums, deflation, projection, and wrappers.

Every composite is a :class:`~jupyter_curvature.operators.CurvatureOperator`: it keeps ``@``,
``shape``, ``dtype``, ``device``, ``to_scipy()``, ``to_dense()`` and the checks of the vector.
Its products are its parts' products, counted by the parts: :attr:`CompositeOperator.num_matvecs`
is the sum of the products of its distinct underlying operators (``2 * H`` and ``H`` show the
same count; ``(H + G) @ v`` counts one product of ``H`` and one of ``G``). The block is checked
once, by the outermost operator; each part still checks its own state (the weights), holds its
own lock and checks its parameters did not change during the product.

* :class:`ScaledOperator` ``c A`` (or ``A / c``), :class:`SumOperator` ``A + B`` and ``A - B``;
* :class:`DeflatedOperator` ``A - V diag(lambda) V^T`` (Hotelling deflation; Saad, *Numerical
  Methods for Large Eigenvalue Problems*, 2011, section 4.2);
* :class:`ProjectedOperator` ``P A P`` with ``P = I - V V^T`` (the remainder Hutch++ estimates:
  Meyer, Musco, Musco & Woodruff, SOSA 2021);
* :class:`FunctionOperator` and :func:`as_operator`: a dense symmetric tensor, a function
  ``v -> A v``, or any object with ``shape``, ``dtype`` and ``matmat`` / ``@`` as an operator.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..core.inputs import check_finite_vector
from .base import CurvatureOperator, DenseOperator


def _scalar(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number (an operator is scaled by a scalar), got "
            f"{type(value).__name__}"
        )
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class _JointLock:
    """The re-entrant locks of several operators, taken in one fixed order (no deadlock)."""

    def __init__(self, locks: Sequence[Any]) -> None:
        self.locks = list(locks)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        taken = []
        for lock in self.locks:
            if not lock.acquire(blocking, timeout):
                for held in reversed(taken):
                    held.release()
                return False
            taken.append(lock)
        return True

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()

    def __enter__(self) -> _JointLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class _JointKeeper:
    """The graph keepers of a composite's parts, seen as one."""

    def __init__(self, keepers: Sequence[Any]) -> None:
        self.keepers = list(keepers)

    @property
    def kept(self) -> bool:
        return any(k.kept for k in self.keepers)

    @property
    def gave_up(self) -> bool:
        return any(k.gave_up for k in self.keepers)

    @property
    def graph_bytes(self) -> int | None:
        sizes = [k.graph_bytes for k in self.keepers if k.graph_bytes is not None]
        return sum(sizes) if sizes else None


class CompositeOperator(CurvatureOperator):
    """An operator whose products are those of its :attr:`parts` (see the module docstring)."""

    def __init__(self, parts: Sequence[CurvatureOperator]) -> None:
        first = parts[0]
        for i, part in enumerate(parts):
            if not isinstance(part, CurvatureOperator):
                raise TypeError(
                    f"operand {i} must be a CurvatureOperator, got {type(part).__name__}; "
                    "wrap a tensor or a function with as_operator(...)"
                )
            if part.shape != first.shape:
                raise ValueError(
                    f"operands have different shapes {first.shape} and {part.shape}: they act "
                    "on different parameter vectors and cannot be combined"
                )
            if part.dtype != first.dtype:
                raise ValueError(
                    f"operands have different dtypes {first.dtype} and {part.dtype}; build "
                    "both in the same dtype (e.g. both models in float64)"
                )
            if part.device != first.device:
                raise ValueError(
                    f"operands live on different devices {first.device} and {part.device}; "
                    "build both on the same device"
                )
        self.parts = tuple(parts)
        self._n = first.shape[0]
        self.dtype = first.dtype
        self.device = first.device
        self._keeper = None

    # the state is the parts': no own lock or counter to pickle
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_keeper"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def leaves(self) -> list[CurvatureOperator]:
        """The distinct non-composite operators underneath, in order of first appearance."""
        out: list[CurvatureOperator] = []
        seen: set[int] = set()
        for part in self.parts:
            for leaf in part.leaves() if isinstance(part, CompositeOperator) else [part]:
                if id(leaf) not in seen:
                    seen.add(id(leaf))
                    out.append(leaf)
        return out

    @property
    def num_matvecs(self) -> int:
        """Products of the underlying operators (each distinct operator counted once)."""
        return sum(leaf.num_matvecs for leaf in self.leaves())

    @num_matvecs.setter
    def num_matvecs(self, value: int) -> None:
        if value != 0:
            raise ValueError("a composite's num_matvecs is its parts'; it can only be reset to 0")
        for leaf in self.leaves():
            leaf.num_matvecs = 0

    @property
    def lock(self) -> _JointLock:
        """The locks of all underlying operators, taken together."""
        return _JointLock([leaf.lock for leaf in self.leaves()])

    def parameter_versions(self) -> tuple[int, ...]:
        return tuple(v for leaf in self.leaves() for v in leaf.parameter_versions())

    def _product(self, block: torch.Tensor) -> torch.Tensor:
        # each part locks, checks and counts its own products
        return self._matmat(block)

    @contextlib.contextmanager
    def kept_graphs(self, keep: bool | None = None, budget: float | None = None) -> Iterator[Any]:
        """Each part's :meth:`~CurvatureOperator.kept_graphs` (each with its own ``budget``).

        ``keep=True`` applies to the parts that can keep graphs; it is an error only when
        none can.
        """
        leaves = self.leaves()
        capable = [leaf for leaf in leaves if _keeps_graphs(leaf)]
        if keep is True and not capable:
            raise ValueError(
                "keep_graphs=True needs an operator that can keep gradient graphs "
                f"(HessianOperator); no part of this {type(self).__name__} can: pass "
                "keep_graphs=None or False"
            )
        with contextlib.ExitStack() as stack:
            keepers = [
                stack.enter_context(leaf.kept_graphs(keep if leaf in capable else False, budget))
                for leaf in leaves
            ]
            yield _JointKeeper(keepers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(p) for p in self.parts)})"


def _keeps_graphs(op: CurvatureOperator) -> bool:
    from .graphs import supports_kept_graphs

    return supports_kept_graphs(op)


class ScaledOperator(CompositeOperator):
    """``c A`` (or ``A / c`` with ``divide=True``, computed as a division: ``(A v) / c``)."""

    def __init__(self, op: CurvatureOperator, factor: Any, *, divide: bool = False) -> None:
        super().__init__([op])
        self.factor = _scalar("the divisor" if divide else "the factor", factor)
        if divide and self.factor == 0:
            raise ZeroDivisionError("an operator cannot be divided by 0")
        self.divide = divide

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        y = self.parts[0]._product(block)
        return y / self.factor if self.divide else self.factor * y

    def __repr__(self) -> str:
        op = "/" if self.divide else "*"
        return f"ScaledOperator({self.parts[0]!r} {op} {self.factor:g})"


class SumOperator(CompositeOperator):
    """``A + B`` (``sign=1``) or ``A - B`` (``sign=-1``); same shape, dtype and device."""

    def __init__(self, a: CurvatureOperator, b: Any, *, sign: int = 1) -> None:
        if not isinstance(b, CurvatureOperator):
            raise TypeError(
                f"can only add or subtract another operator, got {type(b).__name__}; wrap a "
                "tensor or a function with as_operator(...), and scale with a number: c * H"
            )
        super().__init__([a, b])
        self.sign = 1 if sign >= 0 else -1

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        a, b = self.parts
        ya = a._product(block)
        yb = b._product(block)
        return ya + yb if self.sign > 0 else ya - yb

    def __repr__(self) -> str:
        return f"({self.parts[0]!r} {'+' if self.sign > 0 else '-'} {self.parts[1]!r})"


def _columns(name: str, op: CurvatureOperator, vectors: torch.Tensor) -> torch.Tensor:
    if not isinstance(vectors, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(vectors).__name__}")
    if vectors.ndim == 1:
        vectors = vectors.unsqueeze(1)
    if vectors.ndim != 2 or vectors.shape[0] != op.shape[0]:
        raise ValueError(
            f"{name} must have shape ({op.shape[0]}, l): one vector per column, got "
            f"{tuple(vectors.shape)}"
        )
    check_finite_vector(vectors)
    return vectors.detach().to(dtype=op.dtype, device=op.device)


class DeflatedOperator(CompositeOperator):
    """``A - V diag(values) V^T`` (Hotelling deflation, see the module docstring)."""

    def __init__(self, op: CurvatureOperator, vectors: torch.Tensor, values: Any) -> None:
        super().__init__([op])
        self.vectors = _columns("vectors", op, vectors)
        values = torch.as_tensor(values).detach().reshape(-1)
        if values.numel() != self.vectors.shape[1]:
            raise ValueError(
                f"values must hold one eigenvalue per column of vectors "
                f"({self.vectors.shape[1]}), got {values.numel()}"
            )
        if not bool(torch.isfinite(values).all()):
            raise ValueError("values must be finite")
        self.values = values.to(dtype=op.dtype, device=op.device)

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        V = self.vectors
        return self.parts[0]._product(block) - V @ (self.values.unsqueeze(1) * (V.T @ block))


class ProjectedOperator(CompositeOperator):
    """``P A P`` with ``P = I - V V^T`` for orthonormal columns ``V``."""

    def __init__(self, op: CurvatureOperator, vectors: torch.Tensor) -> None:
        super().__init__([op])
        V = _columns("vectors", op, vectors)
        gram = V.T @ V
        eye = torch.eye(V.shape[1], dtype=V.dtype, device=V.device)
        tol = 100 * torch.finfo(V.dtype).eps * max(1, V.shape[0]) ** 0.5
        if V.shape[1] and float((gram - eye).abs().max()) > tol:
            raise ValueError(
                "vectors must have orthonormal columns (V^T V = I) for P = I - V V^T to be a "
                "projection; orthonormalise them first: torch.linalg.qr(vectors).Q"
            )
        self.vectors = V

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.vectors @ (self.vectors.T @ x)

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        return self._project(self.parts[0]._product(self._project(block)))


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
    elif hasattr(op, "shape") and hasattr(op, "dtype") and (
        hasattr(op, "matmat") or hasattr(op, "__matmul__")
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

