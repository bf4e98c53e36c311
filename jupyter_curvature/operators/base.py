"""The operator interface every curvature matrix implements, and its algebra.

:class:`CurvatureOperator` is the interface. Operators compose into operators (the
composites below): ``c A`` and ``A / c`` (:class:`ScaledOperator`), ``A + B`` and ``A - B``
(:class:`SumOperator`), Hotelling deflation ``A - V diag(lambda) V^T``
(:class:`DeflatedOperator`; Saad, *Numerical Methods for Large Eigenvalue Problems*, 2011,
section 4.2) and the projection ``P A P`` with ``P = I - V V^T`` (:class:`ProjectedOperator`,
the remainder Hutch++ estimates: Meyer, Musco, Musco & Woodruff, SOSA 2021).

A composite keeps ``@``, ``shape``, ``dtype``, ``device``, ``to_scipy()``, ``to_dense()`` and
the vector checks. Its products are its parts' products, counted by the parts:
:attr:`CompositeOperator.num_matvecs` is the sum of the products of its distinct underlying
operators (``2 * H`` and ``H`` show the same count; ``(H + G) @ v`` counts one product of
``H`` and one of ``G``). The block is checked once, by the outermost operator; each part
still checks its own state (the weights), holds its own lock and checks its parameters did
not change during the product.
"""

from __future__ import annotations

import contextlib
import numbers
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..core.inputs import check_finite_vector
from .graphs import GraphKeeper, supports_kept_graphs


class ModelChangedError(RuntimeError):
    """The operator's parameters changed in place while a product (or spectral call) ran."""


def check_unchanged(before: tuple[int, ...], after: tuple[int, ...]) -> None:
    """Raise :class:`ModelChangedError` when parameter version counters moved."""
    if before != after:
        raise ModelChangedError(
            "the operator's parameters changed in place while its products ran (an optimiser "
            "step or load_state_dict in another thread?); the result would mix two models, so "
            "none is given. Run them one after the other, or hold the operator's lock around "
            "the other thread's change: `with op.lock: optimizer.step()`"
        )


class CurvatureOperator(ABC):
    """A symmetric ``n x n`` matrix known only through its products with vectors.

    Subclasses implement :meth:`_matmat` on a validated ``(n, k)`` block; the public
    :meth:`matmat` / ``@`` check the input first (shape, dtype, device, NaN/inf), count the
    products in :attr:`num_matvecs`, and accept a flat vector ``(n,)`` or a block ``(n, k)``.

    Threads: every product runs under :attr:`lock` (re-entrant), and spectral routines hold it
    for their whole call, so one operator may be shared between threads (docs/spectral.md).
    A product whose parameters change in place while it runs raises :class:`ModelChangedError`.

    Operators compose (docs/operators.md): ``2.0 * H``, ``H / c``, ``-H``, ``H + G``,
    ``H - G``, :meth:`deflated`, :meth:`projected`, and
    :func:`~jupyter_curvature.operators.as_operator` for a tensor or a function. A composite
    multiplies through its parts, so its :attr:`num_matvecs` is theirs.
    """

    #: an operator is symmetric; spectral methods rely on this
    is_symmetric: bool = True

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device) -> None:
        self._n = int(n)
        self.dtype = dtype
        self.device = torch.device(device)
        self.num_matvecs = 0
        #: held for each product; hold it to change the parameters safely from another thread
        self.lock = self._new_lock()
        self._keeper: GraphKeeper | None = None

    def _new_lock(self) -> threading.RLock:
        return threading.RLock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["lock"]  # a lock neither pickles nor copies: a copy gets its own
        state["_keeper"] = None  # kept graphs belong to the block that opened them
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = self._new_lock()

    @property
    def shape(self) -> tuple[int, int]:
        return (self._n, self._n)

    def __len__(self) -> int:
        return self._n

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v)

    def matmat(self, v: torch.Tensor) -> torch.Tensor:
        """The product with a vector ``(n,)`` or a block of vectors ``(n, k)``."""
        block = self._check_vector(v)
        result = self._product(block)
        return result[:, 0] if v.ndim == 1 else result

    matvec = matmat

    def _product(self, block: torch.Tensor, matmat: Any = None) -> torch.Tensor:
        """The product with a checked ``(n, k)`` block: state check, lock, version check, count.

        Composites call their parts' ``_product`` directly: the block was checked once.
        ``matmat`` replaces :meth:`_matmat` for this product (a restricted product of the same
        operator, such as its block diagonal: ``BlockDiagonalOperator``).
        """
        matmat = self._matmat if matmat is None else matmat
        self._check_state()
        with self.lock:
            versions = self.parameter_versions()
            keeper = getattr(self, "_keeper", None)
            try:
                if keeper is not None:
                    result = keeper.run(matmat, block)
                else:
                    result = matmat(block)
            except RuntimeError:  # autograd's "modified by an inplace operation": name the cause
                check_unchanged(versions, self.parameter_versions())
                raise
            check_unchanged(versions, self.parameter_versions())
            self._count(block.shape[1])
        return result

    def _count(self, k: int) -> None:
        self.num_matvecs += k

    def _check_state(self) -> None:
        """Checks of the operator's own state before each product (the weights, for a model)."""
        return None

    @contextlib.contextmanager
    def kept_graphs(self, keep: bool | None = None, budget: float | None = None) -> Iterator[Any]:
        """Keep the gradient graphs across the products made inside the ``with`` block.

        For a :class:`~jupyter_curvature.operators.HessianOperator`, each batch's gradient
        graph is built once and reused, so a product costs only the second backward
        (:mod:`~jupyter_curvature.operators.graphs`). Other operators have no graphs: the
        block changes nothing (``keep=True`` is an error for them). The operator is left as it
        was found; graphs the block made it keep are freed. Spectral routines enter this
        for one call (their ``keep_graphs=`` argument).

        Args:
            keep: ``None`` (default) keep them while they fit in the budget, ``True`` keep them
                whatever they cost, ``False`` never.
            budget: bytes the graphs may use (default half the free memory of the device).

        Yields:
            The :class:`~jupyter_curvature.operators.graphs.GraphKeeper`: ``gave_up`` (the
            graphs passed the budget), ``graph_bytes``, ``kept``.
        """
        keeper = GraphKeeper(self, keep, budget)
        with self.lock:
            keeper.open()
            previous, self._keeper = getattr(self, "_keeper", None), keeper
            try:
                yield keeper
            finally:
                self._keeper = previous
                keeper.close()

    # ------------------------------------------------------------------ composition
    def __mul__(self, factor: Any) -> CurvatureOperator:
        if isinstance(factor, CurvatureOperator):
            raise TypeError(
                "the product of two operators is not symmetric in general; compose products "
                "with vectors instead: H @ (G @ v)"
            )
        return ScaledOperator(self, factor)

    __rmul__ = __mul__

    def __truediv__(self, divisor: Any) -> CurvatureOperator:
        return ScaledOperator(self, divisor, divide=True)

    def __neg__(self) -> CurvatureOperator:
        return ScaledOperator(self, -1.0)

    def __add__(self, other: Any) -> CurvatureOperator:
        return SumOperator(self, other, sign=1)

    def __sub__(self, other: Any) -> CurvatureOperator:
        return SumOperator(self, other, sign=-1)

    def deflated(self, vectors: torch.Tensor, values: torch.Tensor) -> DeflatedOperator:
        """``A - V diag(values) V^T``: remove known eigenpairs (Hotelling deflation).

        With orthonormal eigenvectors ``V`` of ``A`` and their eigenvalues, the result has the
        same eigenvectors with those eigenvalues set to zero (Saad, *Numerical Methods for
        Large Eigenvalue Problems*, 2011, section 4.2). ``vectors``: ``(n, l)``; ``values``:
        ``(l,)``.
        """
        return DeflatedOperator(self, vectors, values)

    def projected(self, vectors: torch.Tensor) -> ProjectedOperator:
        """``P A P`` with ``P = I - V V^T``: ``A`` on the orthogonal complement of ``V``.

        ``vectors``: ``(n, l)`` with orthonormal columns (checked). The result is symmetric
        and maps ``V`` to zero; on the complement it agrees with ``A`` up to the components
        along ``V`` (Hutch++ runs on such a remainder: Meyer et al., SOSA 2021).
        """
        return ProjectedOperator(self, vectors)

    def _check_vector(self, v: torch.Tensor) -> torch.Tensor:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"v must be a torch.Tensor, got {type(v).__name__}")
        if v.ndim not in (1, 2) or v.shape[0] != self._n:
            raise ValueError(
                f"v must have shape ({self._n},) or ({self._n}, k) to match the operator, "
                f"got {tuple(v.shape)}"
            )
        if v.dtype != self.dtype:
            raise ValueError(
                f"v has dtype {v.dtype} but the operator works in {self.dtype}; "
                f"convert it with v.to({self.dtype})"
            )
        if v.device != self.device and not (
            v.device.type == self.device.type and self.device.index is None
        ):
            raise ValueError(
                f"v is on {v.device} but the operator lives on {self.device}; "
                f"move it with v.to('{self.device}')"
            )
        check_finite_vector(v)
        return v if v.ndim == 2 else v.unsqueeze(1)

    def parameter_versions(self) -> tuple[int, ...]:
        """Version counters of the tensors the products read; any in-place change moves one."""
        return ()

    @abstractmethod
    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        """Multiply a validated ``(n, k)`` block."""

    def to_dense(self) -> torch.Tensor:
        """The full matrix, column by column (only for small ``n``: ``n`` products)."""
        eye = torch.eye(self._n, dtype=self.dtype, device=self.device)
        return self.matmat(eye)

    def to_scipy(self):
        """This operator as a ``scipy.sparse.linalg.LinearOperator`` (numpy in and out)."""
        import numpy as np
        from scipy.sparse.linalg import LinearOperator

        def product(x: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(x), device=self.device).to(self.dtype)
            return self.matmat(t).detach().cpu().numpy()

        np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype
        return LinearOperator(
            self.shape, matvec=product, matmat=product, rmatvec=product, dtype=np_dtype
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self._n}, dtype={self.dtype}, device={self.device})"


class DenseOperator(CurvatureOperator):
    """A symmetric matrix held densely: for tests, and for small curvature matrices.

    >>> import torch
    >>> op = DenseOperator(torch.diag(torch.tensor([1.0, -2.0], dtype=torch.float64)))
    >>> (op @ torch.ones(2, dtype=torch.float64)).tolist()
    [1.0, -2.0]
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
        super().__init__(matrix.shape[0], matrix.dtype, matrix.device)
        self.matrix = matrix

    def parameter_versions(self) -> tuple[int, ...]:
        return (self.matrix._version,)

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        return self.matrix @ block


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
    """The re-entrant locks of several operators, taken in one global order (no deadlock).

    The order is by object id, the same for every composite, so ``H + G`` in one thread and
    ``G + H`` in another cannot each hold one lock and wait for the other; a lock shared by
    two parts (operators of one model share the model's lock) is taken once.
    """

    def __init__(self, locks: Sequence[Any]) -> None:
        self.locks = sorted({id(lock): lock for lock in locks}.values(), key=id)

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
