"""GPyTorch's ``lanczos_tridiag`` run inside a torch-function mode that makes it cheaper.

GPyTorch's recurrence (:func:`linear_operator.utils.lanczos.lanczos_tridiag`, linear_operator
0.6) writes its full reorthogonalisation ``r <- r - Q (Q^T r)`` and the check ``Q^T r`` that
follows as broadcast multiply-then-sum, and makes every temporary afresh each step.
:class:`BasisGemv` intercepts those tensor operations (``__torch_function__``) and evaluates
them as matrix-vector products into reused blocks, decides GPyTorch's check pass by the
Daniel-Gragg-Kaufman-Stewart test (Math. Comp. 30, 1976), and all-reduces the sums over the
rows of a sharded basis; the recurrence, its stopping tests and its branches stay GPyTorch's.

The mode recognises GPyTorch's operations by their source lines: :func:`gemv_supported` and
:func:`gpytorch_copies_products` read the installed ``lanczos_tridiag`` and say whether it
still holds them; if not, :func:`~.lanczos.run_tridiag` runs it untouched (correct, only
slower). The driver, the closure and the entry points are in :mod:`.lanczos`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

with warnings.catch_warnings():
    # linear_operator applies torch.jit.script at import, which torch deprecates with a
    # FutureWarning: a dependency's warning, shown in every notebook cell that first imports
    # the spectra. Only that message is silenced, only during this import.
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
    )
    from linear_operator.utils.lanczos import lanczos_tridiag

from ..core.distributed.basis import VectorSpace
from .memory import combine64, dot64, dots64

#: a Gram-Schmidt pass that keeps this fraction of ``||r||`` needs no second one (DGKS 1976;
#: ARPACK's 0.717)
DGKS_ETA = 2**-0.5


#: ``lanczos_tridiag``'s step after the first: the closure's result is subtracted from into a
#: new tensor, never changed in place, so the closure may hand over its own block
_GPYTORCH_STEP = "r_vec = matmul_closure(q_curr_vec) - q_prev_vec.mul(beta_prev)"

#: the three basis contractions of ``lanczos_tridiag`` (linear_operator 0.6) that
#: :class:`BasisGemv` evaluates as matrix-vector products, its ``alpha``, evaluated as dots,
#: and the recurrence's temporaries it writes into reused blocks; if its source no longer
#: holds them, ``lanczos_tridiag`` runs untouched (correct, only slower)
_GPYTORCH_CONTRACTIONS = (
    "r_vec.unsqueeze(0).mul(q_mat[: k + 1]).sum(dim_dimension, keepdim=True)",
    "q_mat[: k + 1].mul(correction).sum(0)",
    "q_mat[: k + 1].mul(r_vec.unsqueeze(0)).sum(dim_dimension)",
    "alpha_curr = q_curr_vec.mul(r_vec).sum(dim_dimension, keepdim=True)",
    _GPYTORCH_STEP,
    "r_vec.sub_(alpha_curr.mul(q_curr_vec))",
)


def _gpytorch_holds(lines: tuple[str, ...]) -> bool:
    """Does the installed ``lanczos_tridiag``'s source contain every one of ``lines``?"""
    try:
        source = inspect.getsource(lanczos_tridiag)
    except (OSError, TypeError):
        return False
    return all(line in source for line in lines)


@functools.cache
def gemv_supported() -> bool:
    """Does the installed ``lanczos_tridiag`` contract its basis the way :class:`BasisGemv` knows?"""
    return _gpytorch_holds(_GPYTORCH_CONTRACTIONS)


@functools.cache
def gpytorch_copies_products() -> bool:
    """Does ``lanczos_tridiag`` leave the products of its later steps untouched (see above)?"""
    return _gpytorch_holds((_GPYTORCH_STEP,))


def _same_block(a: torch.Tensor, b: Any) -> bool:
    return isinstance(b, torch.Tensor) and b.shape == a.shape and b.dtype == a.dtype


def _coefficients(c: Any, row: torch.Tensor) -> bool:
    """``c`` is one coefficient per probe, ``(p, 1, 1)``, for a ``(p, n, 1)`` basis row."""
    return (
        isinstance(c, torch.Tensor)
        and c.shape == (row.shape[0], 1, 1)
        and torch.result_type(c, row) == row.dtype
    )


class _Contraction:
    """The pending product ``Q[:j] * x`` of a basis slice; ``.sum(dim)`` contracts it by GEMV.

    ``Q`` is ``(j, p, n, 1)`` (a batch of ``p`` single-vector Lanczos runs). The two sums
    GPyTorch takes of such a product are ``Q^T x`` (over ``n``, ``x`` of shape ``(1, p, n, 1)``)
    and ``Q c`` (over ``j``, ``c`` of shape ``(j, p, 1, 1)``); each is ``p`` matrix-vector
    products with the ``(j, n)`` rows of one probe, read once from memory, where the broadcast
    form writes and re-reads a ``(j, p, n, 1)`` temporary. Anything else materialises the
    product exactly as GPyTorch would have.
    """

    def __init__(self, mode: BasisGemv, basis: torch.Tensor, other: torch.Tensor) -> None:
        self.mode, self.basis, self.other = mode, basis, other

    def _product(self) -> torch.Tensor:
        with self.mode.passthrough():
            return torch.mul(self.basis, self.other)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._product(), name)

    def sum(self, dim: int, keepdim: bool = False) -> torch.Tensor:
        Q, x = self.basis, self.other
        j, p, n, v = Q.shape
        dim = dim % Q.ndim
        # a float64 basis: BLAS GEMVs; a reduced-precision one: the same contractions
        # accumulated in float64 (memory.dot64/combine64), the coefficients kept in float64
        exact = Q.dtype == torch.float64
        if v == 1 and dim == 2 and x.shape == (1, p, n, 1):
            if not keepdim and self.mode.orthogonal_after_one_pass(x):
                # GPyTorch's check |Q^T r| <= tol, decided without reading the basis (DGKS)
                return torch.zeros(j, p, 1, dtype=Q.dtype, device=Q.device)
            if keepdim and exact:  # a projection r <- r - Q (Q^T r) is about to run
                self.mode.projecting(x)
            dot = torch.mv if exact else dot64
            out = torch.stack([dot(Q[:, b, :, 0], x[0, b, :, 0]) for b in range(p)], 1)
            out = self.mode.space.reduce(out)  # over the rows of every rank (sharded basis)
            return out.view(j, p, 1, 1) if keepdim else out.view(j, p, 1)
        if v == 1 and dim == 0 and x.shape == (j, p, 1, 1):
            # GPyTorch subtracts the correction and drops it: one block serves every step
            out = self.mode.correction_block(Q)
            for b in range(p):
                if exact:
                    torch.mv(Q[:, b, :, 0].T, x[:, b, 0, 0], out=out[b])
                else:
                    combine64(Q[:, b, :, 0], x[:, b, 0, 0], out=out[b])
            return out.view(1, p, n, 1) if keepdim else out.view(p, n, 1)
        return self._product().sum(dim, keepdim=keepdim)


class _Dots:
    """The pending ``q_k * r`` of GPyTorch's ``alpha = (q_k * r).sum(-2)`` (``q_k`` a row of
    the basis, both ``(p, n, 1)``): ``.sum`` over ``n`` is ``p`` dots, one read of each vector
    and no temporary; in float64 for a float32 basis, returned in the basis dtype."""

    def __init__(self, mode: BasisGemv, row: torch.Tensor, other: torch.Tensor) -> None:
        self.mode, self.row, self.other = mode, row, other

    def __getattr__(self, name: str) -> Any:
        with self.mode.passthrough():
            return getattr(torch.mul(self.row, self.other), name)

    def sum(self, dim: int, keepdim: bool = False) -> torch.Tensor:
        if dim % 3 != 1:
            return self.__getattr__("sum")(dim, keepdim=keepdim)
        out = self.mode.space.reduce(dots64(self.row[..., 0].T, self.other[..., 0].T))
        out = out.to(self.row.dtype).view(-1, 1)
        return out.unsqueeze(1) if keepdim else out


class BasisGemv(TorchFunctionMode):
    """Run ``lanczos_tridiag`` with its basis contractions evaluated as matrix-vector products.

    GPyTorch's full reorthogonalisation ``r <- r - Q (Q^T r)`` and its check ``Q^T r`` are
    written as broadcast multiply-then-sum (``r.unsqueeze(0).mul(Q[:k+1]).sum(-2)``), which
    materialises a ``(k+1, p, n, 1)`` temporary three times per step: memory-bound, and on
    glibc each temporary over 32 MiB is a fresh ``mmap`` that the kernel zero-fills again.
    Inside this mode the ``mul`` of a slice of GPyTorch's basis (recognised as the
    ``torch.zeros`` block of shape ``(num_iter, p, n, 1)`` it allocates) returns a pending
    :class:`_Contraction`, and the ``sum`` that follows is computed as ``p`` GEMVs: the same
    numbers (up to summation order) from one read of the basis, no temporary. The recurrence,
    the reorthogonalisation loop, its stopping tests and the breakdown logic stay GPyTorch's.

    With a sharded ``space`` (each rank holds rows ``[lo, hi)`` of every vector) the mode
    also makes GPyTorch's contractions over ``n`` global: ``Q^T x``, every ``sum`` over the
    row dimension (its ``alpha = q^T r``) and every ``torch.norm`` over it are all-reduced
    (:meth:`~jupyter_curvature.core.distributed.basis.VectorSpace.reduce`), so the
    recurrence, its tests and its branches are those of the full vectors on every rank.
    """

    def __init__(
        self, num_iter: int, num_probes: int, n: int, pin: bool = False, space: Any = None
    ) -> None:
        super().__init__()
        self.shape = (num_iter, num_probes, n, 1)
        self.space = space or VectorSpace(n)
        self.pin = pin  # a CPU basis for a GPU operator: page-locked, for fast copies
        self.basis: torch.Tensor | None = None
        self._blocks: dict[str, torch.Tensor] = {}  # reused temporaries (see _block)
        self._turn = 0  # which of the two residual blocks the next residual goes to
        self._before: tuple[int, torch.Tensor] | None = None  # r's address and ||r||
        self._after: torch.Tensor | None = None  # ||r|| after the projection
        self._off = 0

    @contextlib.contextmanager
    def passthrough(self):
        """Every torch call runs untouched inside (the operator's products, fallbacks)."""
        self._off += 1
        try:
            yield
        finally:
            self._off -= 1

    def _is_basis(self, t: Any) -> bool:
        b = self.basis
        return (
            isinstance(t, torch.Tensor)
            and b is not None
            and t.ndim == 4
            and t.shape[1:] == b.shape[1:]
            and t.stride() == b.stride()
            and t.data_ptr() == b.data_ptr()
        )

    def _is_row(self, t: Any) -> bool:
        """``t`` is one ``(p, n, 1)`` row ``q_k`` of the basis block."""
        b = self.basis
        if not isinstance(t, torch.Tensor) or b is None or t.shape != b.shape[1:]:
            return False
        offset = t.data_ptr() - b.data_ptr()
        return t.stride() == b.stride()[1:] and 0 <= offset < b.numel() * b.element_size()

    def projecting(self, r: torch.Tensor) -> None:
        """Remember ``||r||`` (per probe) before GPyTorch projects ``r`` against the basis."""
        with self.passthrough():
            self._before = (r.data_ptr(), self.space.norm(r[0, :, :, 0], dim=1))
        self._after = None

    def _projected(self, func: Any, args: tuple, result: torch.Tensor) -> None:
        """Keep ``||r||`` after the projection, which GPyTorch computes next."""
        if func is torch.norm and self._before is not None and args:
            if isinstance(args[0], torch.Tensor) and args[0].data_ptr() == self._before[0]:
                self._after = result.detach().reshape(-1)

    def orthogonal_after_one_pass(self, r: torch.Tensor) -> bool:
        """Is the projected ``r`` orthogonal to the basis to working precision, by the
        Daniel-Gragg-Kaufman-Stewart test (Math. Comp. 30, 1976): one classical Gram-Schmidt
        pass that kept ``||r'|| >= ||r|| / sqrt(2)`` of the norm had no cancellation, so
        ``|Q^T r'| / ||r'||`` is a few rounding errors times the basis's own loss of
        orthogonality, far under GPyTorch's ``tol`` (1e-5); its check would read the whole
        basis a third time to find that. ARPACK (``dsaitr``) decides its second pass the same
        way. A larger drop (cancellation) leaves the check, and a second pass, to GPyTorch.
        Float64 bases only."""
        before, after = self._before, self._after
        self._before = self._after = None
        if before is None or after is None or r.data_ptr() != before[0]:
            return False
        return bool((after >= DGKS_ETA * before[1]).all())

    def correction_block(self, Q: torch.Tensor) -> torch.Tensor:
        """A ``(p, n)`` block for ``Q c``: GPyTorch subtracts the correction and drops it."""
        j, p, n, _ = Q.shape
        return self._block("correction", Q[0, :, :, 0])

    def _block(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The mode's reused block ``name``, shaped like ``like`` (contiguous).

        GPyTorch's recurrence makes its temporaries afresh every step (the residual, ``beta
        q_{k-1}``, ``alpha q_k``, the correction ``Q c``); each is an ``n``-vector per probe
        that a new allocation would page-fault in again (glibc serves blocks over 32 MiB by
        a fresh ``mmap``; on the shared VM this was measured on, a first touch cost 2 to
        ~60 us per 4 KiB page). Each lives only until the next step makes it anew.
        """
        block = self._blocks.get(name)
        if block is None or block.shape != like.shape or block.dtype != like.dtype:
            block = self._blocks[name] = torch.empty(
                like.shape, dtype=like.dtype, device=like.device
            )
        return block

    @contextlib.contextmanager
    def suspended(self):
        """Leave the mode for a block (the operator's products run with no mode at all)."""
        self.__exit__(None, None, None)
        try:
            yield
        finally:
            self.__enter__()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._off:
            return func(*args, **kwargs)
        if self.space.sharded and (global_ := self._global(func, args, kwargs)) is not None:
            self._projected(func, args, global_)
            return global_
        if func is torch.norm:
            result = func(*args, **kwargs)
            self._projected(func, args, result)
            return result
        if func is torch.zeros and self.basis is None:
            if tuple(args) == self.shape or (len(args) == 1 and tuple(args[0]) == self.shape):
                # every row of the basis is written before it is read: no need to zero-fill
                # (and touch) num_iter x p x n numbers up front
                self.basis = torch.empty(self.shape, **kwargs, pin_memory=self.pin)
                return self.basis
            return func(*args, **kwargs)
        if func is torch.Tensor.mul and len(args) == 2 and not kwargs:
            if self._is_basis(args[0]):
                return _Contraction(self, args[0], args[1])
            if self._is_basis(args[1]):
                return _Contraction(self, args[1], args[0])
            if self._is_row(args[0]) and _same_block(args[0], args[1]):
                return _Dots(self, args[0], args[1])
            row, c = (args[0], args[1]) if self._is_row(args[0]) else (args[1], args[0])
            if self._is_row(row) and _coefficients(c, row):
                # beta q_{k-1} and alpha q_k: used once, by the subtraction that follows
                return torch.mul(row, c, out=self._block("scaled", row))
        if func in (torch.Tensor.sub, torch.Tensor.__sub__) and len(args) == 2 and not kwargs:
            if args[1] is self._blocks.get("scaled") and _same_block(args[1], args[0]):
                # r = A q_k - beta q_{k-1}: a new residual each step, in one of two blocks
                self._turn ^= 1
                out = self._block(f"residual{self._turn}", args[1])
                return torch.sub(args[0], args[1], out=out)
        if (
            func is torch.Tensor.contiguous
            and self.basis is not None
            and args[0].data_ptr() == self.basis.data_ptr()
        ):
            # the permuted copy of the basis that lanczos_tridiag returns is discarded (the
            # closure records the basis), so it is not made
            return args[0]
        return func(*args, **kwargs)

    def _global(self, func: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """A sum or norm over the row dimension (-2) of ``(..., n, 1)`` blocks, all-reduced."""
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.ndim < 3:
            return None
        dim = args[1] if len(args) == 2 else None
        if func is torch.Tensor.sum and isinstance(dim, int) and dim % x.ndim == x.ndim - 2:
            keepdim = kwargs.get("keepdim", False)
            with self.passthrough():
                return self.space.reduce(x.sum(dim, keepdim=keepdim))
        # torch.norm hands its arguments on as keywords (torch.functional.norm)
        p = args[1] if len(args) > 1 else kwargs.get("p", "fro")
        dim = args[2] if len(args) > 2 else kwargs.get("dim")
        if func is torch.norm and p == 2 and dim in (-2, x.ndim - 2) and not kwargs.get("out"):
            with self.passthrough():
                return self.space.norm(x, x.ndim - 2, keepdim=bool(kwargs.get("keepdim")))
        return None
