"""Thick-restart Lanczos on GPyTorch's run: the Krylov decomposition :func:`eigenpairs` restarts.

GPyTorch's ``lanczos_tridiag`` builds the first ``m``-vector basis (:func:`.lanczos.run_tridiag`);
:class:`Krylov` takes it over as a decomposition ``A Q = Q T + f b^T`` and goes on with thick
restarts (Wu & Simon, SIAM J. Matrix Anal. Appl. 22, 2000; Stathopoulos, Saad & Wu, SIAM J.
Sci. Comput. 19, 1998): keep the most wanted Ritz pairs (:func:`keep_count`), extend by
Lanczos steps with full reorthogonalisation (classical Gram-Schmidt twice), until the caller's
monitor is satisfied (:func:`thick_restart_run`). The stopping rule, locking and the result
are :mod:`.eigenpairs`'.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..core.distributed.basis import VectorSpace
from ._checks import Operator
from .lanczos import GPYTORCH_BREAKDOWN, LanczosClosure, final_residual, run_tridiag, tridiagonal
from .memory import combine64, dot64, inner64


class Monitor(Protocol):
    """The stopping rule :func:`thick_restart_run` consults (``eigenpairs``' ``_Monitor``)."""

    k: int  # wanted pairs
    which: str  # "LA", "SA" or "LM"

    def due(self, j: int, size: int | None = None) -> bool:
        """Is a verdict taken before the product at step ``j`` (basis of ``size``)?"""

    def done(self, theta: np.ndarray, res: np.ndarray, j: int) -> bool:
        """Have the wanted Ritz values ``theta`` (residuals ``res``) converged at step ``j``?"""


def wanted_order(values: np.ndarray, which: str) -> np.ndarray:
    """Indices of ``values`` from most to least wanted (stable: earlier entries win ties)."""
    key = {"LA": -values, "SA": values, "LM": -np.abs(values)}[which]
    return np.argsort(key, kind="stable")


def wanted_key(value: float, which: str) -> float:
    return {"LA": -value, "SA": value, "LM": -abs(value)}[which]


def keep_count(k: int, m: int) -> int:
    """How many Ritz vectors a thick restart of an ``m``-vector basis keeps: ``k + min(k, (m - k) // 2)``.

    The ``k`` wanted ones and up to ``k`` more from the same end of the spectrum, after ARPACK's
    ``dsaup2`` (``nev + min(nconv, np / 2)``) with every wanted pair counted: the extra vectors
    carry the approximations just past the ``k``-th value, so that a cluster straddling it
    keeps converging across restarts, and at most half of the free room goes to them, so that
    each cycle adds at least ``(m - k) / 2`` new Lanczos vectors. With ``m >= k + 2`` it keeps
    ``k + 1`` at least and adds one at least. On the Hessians of three tanh MLPs (64-16/32/64-10
    trained on the digits; k = 5, "SA", tol 1e-8; bases of 100 and 30) it took the fewest
    products of the rules tried: 274-329 and 662-823, against 280-344 and 785-1177 for
    ``k + 1``, 280-331 and 711-912 for up to ``2k`` extra, 330-366 and 749-925 for
    ``(m + k) / 2`` and 374-424 and 1156-1413 for ``3m / 4``.
    """
    return k + min(k, (m - k) // 2)


@dataclass
class Krylov:
    """A Krylov decomposition ``A Q = Q T + f b^T`` in the scaled units of the run.

    ``Q`` ``(n, m)`` orthonormal, ``f`` a unit vector orthogonal to it, ``T = Q^T A Q``
    symmetric. After ``m`` Lanczos steps ``T`` is tridiagonal and ``b = beta_m e_m``; after a
    thick restart that keeps the Ritz pairs ``(theta_i, Q s_i)``, ``i in K``,

        A (Q S_K) = (Q S_K) diag(theta_K) + f (S_K^T b)^T,

    so the new ``T`` is ``diag(theta_K)`` and the new ``b = S_K^T b`` (``beta_m s_i[m-1]``);
    the next Lanczos step appends ``f``, which borders ``diag(theta_K)`` with ``b``: the arrow
    matrix of Wu & Simon (2000), followed by a tridiagonal again. In every state the Ritz pair
    ``(theta_i, Q s_i)`` of ``T`` has residual ``||A Q s_i - theta_i Q s_i|| = |b^T s_i|``.
    """

    Q: torch.Tensor  # (n, capacity): the first m columns are the basis
    AQ: torch.Tensor | None  # (n, capacity) the true products A q_j (before deflation), if kept
    T: np.ndarray  # (m, m) float64
    b: np.ndarray  # (m,) float64
    f: torch.Tensor | None  # (n, 1), None when the space became invariant (or is not needed)
    breakdown: bool

    @property
    def m(self) -> int:
        return self.T.shape[0]

    @classmethod
    def from_lanczos(cls, closure: LanczosClosure, capacity: int) -> Krylov:
        """The decomposition GPyTorch's run left in ``closure.rec`` (the record is emptied)."""
        rec = closure.rec
        T = tridiagonal(rec)[0].numpy(force=True)
        m = T.shape[0]
        f = None
        if rec.next_beta is not None:  # stopped before a product: converged or broken down
            beta = float(rec.next_beta[0])
        else:
            r = final_residual(closure)
            beta = float(closure.space.norm(r))
            f = r / beta if beta >= GPYTORCH_BREAKDOWN else None
        q0 = rec.inputs[0]
        Q = inputs_in_place(rec.inputs, capacity)
        if Q is None:
            # every column is written before it is read (restart, extend); filled column by
            # column, so no concatenated copy of the basis is made (memory.eigenpairs_bytes)
            Q = columns(q0, capacity)
            for i, q in enumerate(rec.inputs):
                Q[:, i : i + 1] = q
        AQ = None
        if rec.outputs:
            # the closure wrote them as the columns of one block (LanczosClosure.capacity)
            AQ = consecutive_columns(rec.outputs, 0, capacity)
        if rec.outputs and AQ is None:
            AQ = columns(q0, capacity)
            for i in range(len(rec.outputs)):
                AQ[:, i : i + 1] = rec.outputs[i]
                rec.outputs[i] = None  # freed as copied
        rec.inputs.clear()  # the basis lives on in Q only
        rec.outputs.clear()
        b = np.zeros(m)
        b[-1] = beta
        return cls(Q, AQ, T, b, f, rec.breakdown)

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), the eigenvectors ``S`` of ``T``, residuals ``|b^T s_i|``."""
        theta, S = np.linalg.eigh(self.T)
        return theta, S, np.abs(self.b @ S)

    def restart(self, theta: np.ndarray, S: np.ndarray, keep: np.ndarray) -> None:
        """Thick restart: keep the Ritz pairs ``keep`` (and their coupling to ``f``)."""
        Sk = S[:, keep]
        m, l = self.m, len(keep)
        self.Q[:, :l] = combine(self.Q[:, :m], Sk)
        if self.AQ is not None:
            self.AQ[:, :l] = combine(self.AQ[:, :m], Sk)
        self.T = np.diag(theta[keep])
        self.b = Sk.T @ self.b

    def extend(self, A: Operator, scale: float, deflate: torch.Tensor) -> float:
        """One Lanczos step from ``f`` with full reorthogonalisation; returns the product's seconds.

        ``y = A f``; ``T`` grows by the column ``(b, alpha = f^T y)``; the new residual
        ``r = y - [Q f] [Q f]^T y`` (classical Gram-Schmidt twice, also against the locked
        vectors ``deflate``) gives ``beta = ||r||`` and the next ``f = r / beta``.
        """
        q, m = self.f, self.m
        t0 = time.perf_counter()
        y = A.matmat(q) / scale
        seconds = time.perf_counter() - t0
        if self.AQ is not None:
            self.AQ[:, m : m + 1] = y  # before deflation: the true product, for true residuals
        self.Q[:, m : m + 1] = q
        space = A.space
        y = orthogonalise(y, deflate, space=space)
        alpha = float(space.reduce(inner64(q, y)).sum())
        T = np.zeros((m + 1, m + 1))
        T[:m, :m] = self.T
        T[:m, m] = T[m, :m] = self.b
        T[m, m] = alpha
        r = orthogonalise(y, self.Q[:, : m + 1], deflate, space=space)
        beta = float(space.norm(r))
        self.T, self.b = T, np.zeros(m + 1)
        self.b[m] = beta
        self.breakdown = beta < GPYTORCH_BREAKDOWN
        self.f = None if self.breakdown else r / beta
        return seconds


def columns(like: torch.Tensor, capacity: int) -> torch.Tensor:
    """An uninitialised ``(n, capacity)`` block like ``like`` ``(n, 1)``, stored column-major.

    Column-major, so that each Lanczos vector is contiguous and writing one is a memcpy (in a
    row-major block every column write was a strided pass: measured, twice the time of
    copying the basis, and 10-20% slower projections)."""
    return like.new_empty(capacity, like.shape[0]).T


def inputs_in_place(inputs: list[torch.Tensor], capacity: int) -> torch.Tensor | None:
    """GPyTorch's own basis as the ``(n, capacity)`` column-major block, when it is one.

    ``lanczos_tridiag`` writes its vectors as consecutive rows of one ``(num_iter, p, n, 1)``
    tensor (row 0 a copy of the start vector it was given) and the closure records views of
    the rows after it; for one probe with room for ``capacity``
    vectors that storage already is the block :func:`columns` would allocate, so the Krylov
    decomposition takes it over instead of copying (and page-faulting) the basis again: at
    n = 270k this was a quarter of the Lanczos bookkeeping of a 17-step run. ``None`` when
    the layout is anything else (the caller copies)."""
    if len(inputs) < 2:
        return None
    # the first vector is GPyTorch's normalised start, copied into row 0
    Q = consecutive_columns(inputs[1:], 1, capacity)
    if Q is None or not torch.equal(Q[:, :1], inputs[0]):
        return None
    return Q


def consecutive_columns(
    vectors: list[torch.Tensor], first: int, capacity: int
) -> torch.Tensor | None:
    """The ``(n, capacity)`` column-major block whose columns ``first, first + 1, ...`` are the
    ``(n, 1)`` ``vectors``, when they are consecutive rows of one storage with room for
    ``capacity`` (GPyTorch's basis; the closure's stored products); ``None`` otherwise."""
    q = vectors[0]
    n, size = q.shape[0], q.element_size()
    start = q.storage_offset() - first * n
    if q.shape[1] != 1 or start < 0 or (n > 1 and q.stride(0) != 1):
        return None
    storage = q.untyped_storage()
    if storage.nbytes() < (start + capacity * n) * size:
        return None
    for i, v in enumerate(vectors):
        if v.untyped_storage().data_ptr() != storage.data_ptr() or v.shape != q.shape:
            return None
        if v.data_ptr() != q.data_ptr() + i * n * size or (n > 1 and v.stride(0) != 1):
            return None
    return q.as_strided((n, capacity), (1, n), start)


def orthogonalise(
    x: torch.Tensor, *bases: torch.Tensor, space: VectorSpace | None = None
) -> torch.Tensor:
    """``x`` with its components along the orthonormal columns of ``bases`` removed (CGS2).

    For a float32 basis the inner products and the combination are accumulated in float64
    (:func:`.memory.dot64`, :func:`.memory.combine64`), without a float64 copy of the basis.
    ``space``: the rows' layout; the inner products are reduced over a sharded one.
    """
    reduce = space.reduce if space is not None else (lambda t: t)
    for _ in range(2):
        for V in bases:
            if not V.shape[1]:
                continue
            if V.dtype == torch.float64 or x.shape[1] != 1:
                x = x - V @ reduce(V.T @ x)
            else:
                x = x - combine64(V.T, reduce(dot64(V.T, x[:, 0]))).unsqueeze(1)
    return x


def combine(V: torch.Tensor, S: np.ndarray) -> torch.Tensor:
    """``V S`` (a thick restart's new basis), accumulated in float64 for a float32 ``V``."""
    coeffs = torch.as_tensor(S).to(device=V.device)
    if V.dtype == torch.float64:
        return V @ coeffs.to(V)
    return torch.stack([combine64(V.T, coeffs[:, i]) for i in range(coeffs.shape[1])], 1)


def ritz_vectors(
    K: Krylov, S: np.ndarray, idx: list[int], space: VectorSpace
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Y = Q S[:, idx]`` and ``A Y`` (scaled units, from the stored products), unit columns.

    By linearity ``A (Q s) = (A Q) s``, so ``A Y`` is a true product, up to rounding, at no
    new cost (zeros when the products were not kept).
    """
    coeffs = torch.as_tensor(S[:, idx]).to(K.Q)
    Y = K.Q[:, : K.m] @ coeffs
    AY = K.AQ[:, : K.m] @ coeffs if K.AQ is not None else torch.zeros_like(Y)
    norm = space.norm(Y, keepdim=True)
    return Y.div_(norm), AY.div_(norm)  # in place: two fewer (n, k) blocks to fault in


def thick_restart_run(
    A: Operator,
    closure: LanczosClosure,
    start: torch.Tensor,
    m: int,
    budget: int,
    dim: int,
    monitor: Monitor,
    step_hook: Callable[[Krylov, int], bool] | None = None,
) -> tuple[Krylov, int, int, float]:
    """Lanczos from ``start`` (GPyTorch's, ``m`` steps), then thick restarts until ``monitor`` stops.

    Whenever the basis holds ``m`` vectors and the wanted pairs have not converged, the
    ``keep_count(k, m)`` most wanted Ritz pairs are kept with their coupling to the residual
    vector (:meth:`Krylov.restart`) and Lanczos goes on from that vector
    (:meth:`Krylov.extend`). Ends when the monitor is satisfied, the space becomes invariant,
    or ``budget`` products are spent, or ``step_hook(K, steps)`` (progress, before each
    product) returns True (cancelled). Returns the decomposition, the products, the thick
    restarts and the seconds of the products after GPyTorch's run.
    """
    run_tridiag(closure, m, start)
    K = Krylov.from_lanczos(closure, m)
    steps, restarts, seconds = K.m, 0, 0.0
    while K.f is not None and steps < budget and m < dim:
        full = K.m == m
        if full or monitor.due(steps, K.m):
            theta, S, res = K.ritz()
            if monitor.done(theta, res, steps):
                break
            if full:
                K.restart(theta, S, wanted_order(theta, monitor.which)[: keep_count(monitor.k, m)])
                restarts += 1
        if step_hook is not None and step_hook(K, steps):
            break
        seconds += K.extend(A, closure.rec.scale, closure.deflate)
        steps += 1
    return K, steps, restarts, seconds
