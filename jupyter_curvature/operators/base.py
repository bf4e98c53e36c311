"""The operator interface every curvature matrix implements."""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from ..core.inputs import check_finite_vector
from .graphs import GraphKeeper

if TYPE_CHECKING:  # pragma: no cover
    from .composite import DeflatedOperator, ProjectedOperator


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

    def _product(self, block: torch.Tensor) -> torch.Tensor:
        """The product with a checked ``(n, k)`` block: state check, lock, version check, count.

        Composites call their parts' ``_product`` directly: the block was checked once.
        """
        self._check_state()
        with self.lock:
            versions = self.parameter_versions()
            keeper = getattr(self, "_keeper", None)
            try:
                if keeper is not None:
                    result = keeper.run(self._matmat, block)
                else:
                    result = self._matmat(block)
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
        from .composite import ScaledOperator

        if isinstance(factor, CurvatureOperator):
            raise TypeError(
                "the product of two operators is not symmetric in general; compose products "
                "with vectors instead: H @ (G @ v)"
            )
        return ScaledOperator(self, factor)

    __rmul__ = __mul__

    def __truediv__(self, divisor: Any) -> CurvatureOperator:
        from .composite import ScaledOperator

        return ScaledOperator(self, divisor, divide=True)

    def __neg__(self) -> CurvatureOperator:
        from .composite import ScaledOperator

        return ScaledOperator(self, -1.0)

    def __add__(self, other: Any) -> CurvatureOperator:
        from .composite import SumOperator

        return SumOperator(self, other, sign=1)

    def __sub__(self, other: Any) -> CurvatureOperator:
        from .composite import SumOperator

        return SumOperator(self, other, sign=-1)

    def deflated(self, vectors: torch.Tensor, values: torch.Tensor) -> DeflatedOperator:
        """``A - V diag(values) V^T``: remove known eigenpairs (Hotelling deflation).

        With orthonormal eigenvectors ``V`` of ``A`` and their eigenvalues, the result has the
        same eigenvectors with those eigenvalues set to zero (Saad, *Numerical Methods for
        Large Eigenvalue Problems*, 2011, section 4.2). ``vectors``: ``(n, l)``; ``values``:
        ``(l,)``.
        """
        from .composite import DeflatedOperator

        return DeflatedOperator(self, vectors, values)

    def projected(self, vectors: torch.Tensor) -> ProjectedOperator:
        """``P A P`` with ``P = I - V V^T``: ``A`` on the orthogonal complement of ``V``.

        ``vectors``: ``(n, l)`` with orthonormal columns (checked). The result is symmetric
        and maps ``V`` to zero; on the complement it agrees with ``A`` up to the components
        along ``V`` (Hutch++ runs on such a remainder: Meyer et al., SOSA 2021).
        """
        from .composite import ProjectedOperator

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
