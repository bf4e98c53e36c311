"""The Lanczos core: GPyTorch's ``lanczos_tridiag`` made safe for indefinite curvature matrices.

Lanczos (1950) builds an orthonormal basis ``Q_m = [q_0 .. q_{m-1}]`` of the Krylov space
``K_m(A, q_0)`` and the tridiagonal ``T_m = Q_m^T A Q_m`` with

    A Q_m = Q_m T_m + beta_m q_m e_m^T,

so the eigenpairs ``(theta_i, s_i)`` of ``T_m`` give Ritz pairs ``(theta_i, Q_m s_i)`` of ``A``
with residual ``||A y_i - theta_i y_i|| = |beta_m s_i[m-1]|`` (Parlett, *The Symmetric
Eigenvalue Problem*, 1998, eq. 13.2.1), and the squared first components ``s_i[0]^2`` are
the Gauss quadrature weights of stochastic Lanczos quadrature (Golub & Meurant 2010).

The recurrence and the full reorthogonalisation are GPyTorch's
(:func:`linear_operator.utils.lanczos.lanczos_tridiag`). Around it this module adds what a
Hessian needs (measured in ``docs/spectral.md``):

* the tridiagonal is diagonalised here with ``torch.linalg.eigh`` in float64, never with
  ``lanczos_tridiag_to_diag`` (which replaces negative Ritz values by 1);
* the operator is **scaled** so that ``lanczos_tridiag``'s absolute breakdown test
  ``|beta| < 1e-6`` becomes a relative one (``1e-6 / SCALE_TARGET`` of ``max ||A q_0||``): an
  operator scaled by 1e-7 loses no step;
* early breakdown (an invariant subspace) stops the run cleanly; a probe that breaks down
  while others continue is restarted with a fresh random vector orthogonal to its basis
  (``lanczos_tridiag`` would otherwise divide by zero and feed NaN to the operator);
* ``k`` probes run as one batched process: the operator always sees the whole ``(n, k)``
  block, so a Hessian shares one forward and one gradient graph per batch among the probes;
* the basis is float64 by default whatever the operator's dtype (CPU float32 norms drift for
  ``n >= 1e6``: sums of a million float32 terms lose digits), and may live on another device than the operator;
* products are checked for NaN, and symmetry is checked for free at step 1
  (``q_0^T A q_1 = q_1^T A q_0``).

GPyTorch's basis contractions run as matrix-vector products inside the torch-function mode
of :mod:`.gpytorch_mode`, which also holds the checks of ``lanczos_tridiag``'s source that
the mode relies on; this module drives the recurrence, records it and returns the result.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.distributed.basis import VectorSpace
from ..core.progress import Cancelled
from ._checks import Operator, check_int, check_seed, raise_if_asymmetric, resolve_device

# lanczos_tridiag as gpytorch_mode imports it, with linear_operator's import warning silenced
from .gpytorch_mode import BasisGemv, gemv_supported, gpytorch_copies_products, lanczos_tridiag
from .memory import check_reorthogonalize, dots64, inner64

#: the scaled operator has ``max_j ||A q_0j|| = SCALE_TARGET``, so GPyTorch's absolute
#: breakdown threshold ``1e-6`` means ``1e-6 / SCALE_TARGET = 1e-10`` relative.
SCALE_TARGET = 1e4
#: GPyTorch's hard-coded breakdown threshold on |beta| (linear_operator 0.6.1, lanczos.py).
GPYTORCH_BREAKDOWN = 1e-6


def coarser(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The less precise of two floating dtypes (a float32 basis rounds a float64 product)."""
    return a if torch.finfo(a).eps >= torch.finfo(b).eps else b


class _Stop(Exception):
    """Raised by the closure to end ``lanczos_tridiag`` early (converged or broken down)."""

    def __init__(self, breakdown: bool) -> None:
        super().__init__("stop")
        self.breakdown = breakdown


def start_vectors(
    n: int,
    num_probes: int,
    seed: int,
    kind: str | torch.Tensor = "rademacher",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Seeded start vectors ``(n, num_probes)``: Rademacher (+-1), Gaussian, or given."""
    if isinstance(kind, torch.Tensor):
        v = kind.reshape(n, -1) if kind.ndim == 1 else kind
        if v.shape != (n, num_probes):
            raise ValueError(
                f"init must have shape ({n}, {num_probes}) (one column per probe), got {tuple(kind.shape)}"
            )
        if not torch.isfinite(v).all() or (v.norm(dim=0) == 0).any():
            raise ValueError("init must be finite and have no zero column")
        return v.to(dtype=dtype, device=device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if kind == "rademacher":
        v = torch.randint(0, 2, (n, num_probes), generator=gen, dtype=torch.int64) * 2 - 1
    elif kind == "gaussian":
        v = torch.randn(n, num_probes, generator=gen, dtype=torch.float64)
    else:
        raise ValueError(f"init must be 'rademacher', 'gaussian' or a tensor, got {kind!r}")
    return v.to(dtype=dtype, device=device)


@dataclass
class _Record:
    """What the closure saw: inputs (basis columns), the recurrence coefficients, timings."""

    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)  # A q_j (scaled), if stored
    alphas: list[torch.Tensor] = field(default_factory=list)  # (p,) float64, scaled units
    betas: list[torch.Tensor] = field(default_factory=list)  # beta_j, j >= 1: q_j . A q_{j-1}
    last_output: torch.Tensor | None = None
    next_beta: torch.Tensor | None = None  # beta_m when stopped before the product at q_m
    scale: float = 1.0
    product_seconds: float = 0.0
    breakdown: bool = False


class LanczosClosure:
    """The ``matmul_closure`` handed to ``lanczos_tridiag``: scale, deflate, check, record.

    The scaling and the deflation stay here rather than in a composite operator
    (``(A / s).projected(V)``, :mod:`jupyter_curvature.operators`) for four reasons: the
    residuals of Ritz pairs are computed from the true products ``A q`` before deflation
    (``store_products``), which a projected operator does not return without a second
    product; every ``q`` is already orthogonal to ``V``, so the left projection
    ``(I - V V^T) A q`` is all of ``P A P q`` and a right one would be wasted work; the
    projection runs in the basis dtype (float64 also for a float32 operator), so locked
    vectors stay orthogonal to rounding in float64, not in the operator's precision; and the
    scale is known only after the first product. (Hutch++'s remainder in :mod:`.trace`,
    which needs none of this, is the composite ``A.projected(Q)``.)

    Args:
        A: the wrapped operator.
        deflate: ``(n, l)`` orthonormal columns to project out of every product
            (``(I - V V^T) A``), for restarts after locking converged eigenvectors.
        monitor: called as ``monitor(record, j)`` before the product at step ``j >= 1``; it
            may raise :class:`_Stop` to end the run (used by :func:`eigenpairs`).
        check_symmetry: compare ``q_0^T A q_1`` with ``q_1^T A q_0`` at step 1.
        seed: for the random vectors that replace a broken-down probe.
        scale: a fixed internal scaling (default: ``max ||A q_0|| / SCALE_TARGET``).
        store_products: keep every product ``A q_j`` (memory: a second basis), so that Ritz
            vectors' residuals can be recomputed from true products without new ones.
        on_step: called as ``on_step(record, j)`` before every product (``j = 0, 1, ...``
            steps done): progress reports; it may raise :class:`_Stop` to end the run
            (cancelled).
        window: keep only the last ``window`` inputs (2 for the three-term recurrence of
            :func:`run_recurrence`: no basis is stored); ``None`` keeps them all.
    """

    def __init__(
        self,
        A: Operator,
        deflate: torch.Tensor | None = None,
        monitor: Callable[[_Record, int], None] | None = None,
        check_symmetry: bool = True,
        seed: int = 0,
        scale: float | None = None,
        store_products: bool = False,
        on_step: Callable[[_Record, int], None] | None = None,
        window: int | None = None,
    ) -> None:
        self.A = A
        self.window = window
        self.on_step = on_step
        self.store_products = store_products
        self.deflate = deflate
        self.monitor = monitor
        self.check_symmetry = check_symmetry
        self.rec = _Record()
        self.space = getattr(A, "space", None) or VectorSpace(A.n)  # where the rows live
        self._fixed_scale = scale
        self._gen = torch.Generator(device="cpu").manual_seed(int(seed) + 7919)
        self._spare: torch.Tensor | None = None  # a product block free for reuse
        #: rows of the block the stored products are written into (set by :func:`run_tridiag`)
        self.capacity: int | None = None
        self._stored: torch.Tensor | None = None

    # ------------------------------------------------------------------ helpers
    def _project(self, x: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
        """Remove the components of ``x`` (n, p) along ``basis`` and ``deflate`` (twice: CGS2)."""
        reduce = self.space.reduce
        for _ in range(2):
            for q in basis:
                x = x - q * reduce(inner64(q, x, keepdim=True)).to(x)
            if self.deflate is not None and self.deflate.shape[1]:
                x = x - self.deflate @ reduce(self.deflate.T @ x)
        return x

    def _repair(self, q: torch.Tensor, broken: torch.Tensor) -> None:
        """Replace broken columns of ``q`` in place by random unit vectors orthogonal to the basis.

        ``lanczos_tridiag`` divides ``r / ||r||`` without a guard, so a probe whose Krylov space
        became invariant while the others go on arrives here as NaN (or as normalised rounding
        noise, not reorthogonalised at step 1); its ``beta`` is set to 0, so the tridiagonal
        decouples and the fresh vector simply continues in the complement.
        """
        idx = broken.nonzero().flatten().tolist()
        for i in idx:
            cols = [b[:, i : i + 1] for b in self.rec.inputs]
            # drawn full-length and sliced: the same vector whatever the row layout
            v = torch.randn(self.A.n, 1, generator=self._gen, dtype=torch.float64)
            v = self._project(self.space.local(v).to(q), cols)
            v = self._project(v, cols)
            q[:, i : i + 1] = v / self.space.norm(v)

    # ------------------------------------------------------------------ the closure
    def _beta(self, q: torch.Tensor) -> torch.Tensor:
        """``beta_j = q_j^T (A q_{j-1} - alpha_{j-1} q_{j-1} - beta_{j-1} q_{j-2})`` ``(p,)`` float64.

        The coefficient GPyTorch stored; as a projection on the three-term residual it is also
        right at step 1, where GPyTorch does not reorthogonalise (a dot with ``A q_0`` alone
        is not). Expanded into three dots, so the residual is never formed. NaN or inf where a
        column of ``q`` is not finite (the dot with a finite product carries it).

        The coefficients are the latest recorded ones, ``alphas[-1]`` and ``betas[-1]``, and
        the vectors the last two inputs: counting steps by ``len(inputs)`` would be wrong
        under ``window=2`` (:func:`run_recurrence`), which caps that count at 2 and so would
        subtract ``alpha_1`` and ``beta_1`` at every later step.
        """
        rec = self.rec
        beta = dots64(q, rec.last_output) - rec.alphas[-1] * dots64(q, rec.inputs[-1])
        if len(rec.inputs) >= 2:
            beta = beta - rec.betas[-1] * dots64(q, rec.inputs[-2])
        return self.space.reduce(beta)

    def _output_block(self, q: torch.Tensor) -> torch.Tensor:
        """Where this step's product goes, in the basis dtype and layout.

        When every product is kept (``store_products``), the next row of one
        ``(capacity, p, n)`` block, so that the stored products already are the column-major
        block the thick restarts use (no copy); otherwise the block of two steps ago (only
        the last product, ``A q_{j-1}``, is read again). Either way no new ``n x p``
        allocation per step, whose pages the system would fault in again each time (glibc
        serves blocks over 32 MiB by a fresh ``mmap``; at n = 5.4M that was 25 ms a block).
        """
        if self.store_products:
            return self._stored_row(q)
        spare, self._spare = self._spare, None
        layout = (q.shape, q.stride(), q.dtype, q.device)
        if spare is None or (spare.shape, spare.stride(), spare.dtype, spare.device) != layout:
            return torch.empty_like(q)
        return spare

    def _stored_row(self, q: torch.Tensor) -> torch.Tensor:
        j, (n, p) = len(self.rec.outputs), q.shape
        block = self._stored
        if j == 0 and self.capacity is not None:
            block = self._stored = q.new_empty(self.capacity, p, n)
        if block is None or j >= block.shape[0] or block.shape[1:] != (p, n):
            return torch.empty_like(q)  # past the capacity: Krylov.from_lanczos copies
        return block[j].T

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        rec = self.rec
        j = len(rec.inputs)
        if j >= 1:
            beta = self._beta(q)
            broken = ~torch.isfinite(beta) | (beta.abs() < GPYTORCH_BREAKDOWN)
            beta = torch.where(broken, torch.zeros_like(beta), beta)
            rec.next_beta = beta
            if bool(broken.all()):
                rec.breakdown = True
                raise _Stop(breakdown=True)
            if self.monitor is not None:
                self.monitor(rec, j)
            if bool(broken.any()):
                self._repair(q, broken)
        if self.on_step is not None:
            self.on_step(rec, j)
        t0 = time.perf_counter()
        y = self.A.matmat(q, out=self._output_block(q))
        rec.product_seconds += time.perf_counter() - t0
        if j == 0:
            if self._fixed_scale is not None:
                rec.scale = self._fixed_scale
            else:
                size = float(self.space.norm(y).max())
                rec.scale = size / SCALE_TARGET if size > 0 else 1.0
        y.div_(rec.scale)
        if self.store_products:
            rec.outputs.append(y)  # before deflation: the true product, for true residuals
        if self.deflate is not None and self.deflate.shape[1]:
            correction = self.deflate @ self.space.reduce(self.deflate.T @ y)
            y = y - correction if self.store_products else y.sub_(correction)
        if j == 1 and self.check_symmetry:
            for i in range(q.shape[1]):
                pair = torch.stack([rec.inputs[-1][:, i], q[:, i]], 1)
                prods = torch.stack([rec.last_output[:, i], y[:, i]], 1)
                raise_if_asymmetric(pair, prods, coarser(self.A.dtype, q.dtype), self.space)
        if j >= 1:
            rec.betas.append(rec.next_beta)
            rec.next_beta = None
        rec.alphas.append(self.space.reduce(dots64(q, y)))
        rec.inputs.append(q)
        if self.window is not None and len(rec.inputs) > self.window:
            del rec.inputs[0]
        if not self.store_products:
            self._spare = rec.last_output  # free again once y is the last product
        rec.last_output = y
        # lanczos_tridiag subtracts in place from the block it gets at its first step only
        # (later steps subtract into a new tensor: checked in its source); ours stays intact
        return y.clone() if j == 0 or not gpytorch_copies_products() else y


def run_tridiag(
    closure: LanczosClosure,
    num_iters: int,
    init: torch.Tensor,
    gemv: bool = True,
    pin: bool = False,
) -> bool:
    """Drive ``lanczos_tridiag`` with ``closure``; the results are in ``closure.rec``.

    ``gemv``: evaluate GPyTorch's basis contractions as matrix-vector products
    (:class:`BasisGemv`; same arithmetic, no ``(k, p, n, 1)`` temporaries; for a float32
    basis accumulated in float64). ``pin``: allocate the basis in page-locked memory (a CPU
    basis for a GPU operator). Returns whether the basis was page-locked.
    """
    n, p = init.shape  # this rank's rows with a sharded basis
    space = closure.space
    if space.sharded and num_iters > n:
        raise ValueError(
            f"shard_basis: {num_iters} Lanczos vectors in one basis need at least as many rows "
            f"per rank, but this rank holds {n} of the {space.n}: lower num_iters / max_basis "
            "to at most the smallest slice, or do not shard the basis of so small an operator"
        )
    if num_iters == 1 or space.n == 1:
        # lanczos_tridiag(max_iter=1) raises IndexError (linear_operator 0.6): one step by hand
        with contextlib.suppress(_Stop):
            closure(init / space.norm(init, keepdim=True))
        return False

    # The p probes go to lanczos_tridiag as a batch of p single-vector runs, (p, n, 1), not as
    # p init vectors (n, p): its reorthogonalisation multiplies and sums (k, *batch, n, vecs)
    # temporaries over n, which is ~3-10x faster on CPU with n innermost (measured at n = 5e4,
    # p = 4). The operator still receives one (n, p) block per step.
    # a sharded basis needs the mode whatever the GPyTorch version: it makes the sums global
    use_mode = (gemv and gemv_supported()) or space.sharded
    closure.capacity = min(num_iters, n)
    mode = BasisGemv(min(num_iters, n), p, n, pin, space) if use_mode else None

    def batched(qb: torch.Tensor) -> torch.Tensor:
        with mode.suspended() if mode is not None else contextlib.nullcontext():
            return closure(qb[..., 0].T).T.unsqueeze(-1)

    try:
        with mode if mode is not None else contextlib.nullcontext():
            lanczos_tridiag(
                batched,
                max_iter=num_iters,
                dtype=init.dtype,
                device=init.device,
                matrix_shape=torch.Size((n, n)),
                batch_shape=torch.Size((p,)),
                init_vecs=init.T.unsqueeze(-1).contiguous(),
                num_init_vecs=1,
            )
    except _Stop:
        pass
    rec = closure.rec
    if len(rec.inputs) < min(num_iters, n) and rec.next_beta is None:
        # lanczos_tridiag ended on its own |beta| < 1e-6 test: an invariant subspace
        rec.breakdown = True
    return bool(pin and mode is not None and mode.basis is not None and mode.basis.is_pinned())


def run_recurrence(closure: LanczosClosure, num_iters: int, init: torch.Tensor) -> None:
    """The Lanczos three-term recurrence with no reorthogonalisation and no stored basis.

    ``beta_{j+1} q_{j+1} = A q_j - alpha_j q_j - beta_j q_{j-1}``: only ``q_{j-1}``, ``q_j``
    and the product are held (``closure.window == 2``), so the memory does not grow with
    the steps. In floating point the ``q_j`` lose orthogonality once a Ritz value converges
    (Paige 1971/1980): the converged value then reappears as a ghost copy, and the Ritz
    weights of the copies share the weight of the one eigenvalue. The tridiagonal is still
    that of a Gauss quadrature of the spectral measure of ``q_0`` to working accuracy
    (Greenbaum 1989; Golub & Meurant, *Matrices, Moments and Quadrature*, 2010, ch. 4), so
    the moments ``q_0^T A^j q_0 = e_1^T T^j e_1`` for ``j < 2m`` and the smoothed density
    are kept (Ubaru, Chen & Saad, SIMAX 2017, section 4 on SLQ without reorthogonalisation).
    """
    space = closure.space
    norm = space.norm(init, keepdim=True, dtype=torch.float64).to(init)
    q = init / norm
    with contextlib.suppress(_Stop):
        for j in range(num_iters):
            closure(q)
            if j + 1 == num_iters:
                break
            rec = closure.rec
            r = rec.last_output - q * rec.alphas[-1].to(q)
            if len(rec.inputs) == 2:
                r = r - rec.inputs[0] * rec.betas[-1].to(q)
            beta = space.norm(r, keepdim=True, dtype=torch.float64).to(q)
            # a probe whose space became invariant divides by ~0: the closure sees a
            # non-finite or tiny column and restarts or stops it
            q = r / beta


def tridiagonal(rec: _Record) -> torch.Tensor:
    """``T_m`` ``(p, m, m)`` in float64 and scaled units, from the recorded coefficients."""
    alphas = torch.stack(rec.alphas, 1)  # (p, m)
    T = torch.diag_embed(alphas)
    if rec.betas:
        betas = torch.stack(rec.betas, 1)
        T = T + torch.diag_embed(betas, 1) + torch.diag_embed(betas, -1)
    return T


def final_residual(closure: LanczosClosure) -> torch.Tensor:
    """``r_m = (I - Q Q^T) A q_{m-1}`` ``(n, p)``: ``beta_m q_m``, the next Lanczos vector unnormalised."""
    return closure._project(closure.rec.last_output, closure.rec.inputs)


def final_beta(closure: LanczosClosure) -> torch.Tensor:
    """``beta_m = ||(I - Q Q^T) A q_{m-1}||`` per probe: the residual scale of every Ritz pair."""
    rec = closure.rec
    if rec.next_beta is not None:
        return rec.next_beta.abs()
    return closure.space.norm(final_residual(closure)).double()


@dataclass
class LanczosResult:
    """The outcome of a (batched) Lanczos run, in the operator's units.

    Attributes:
        tridiagonal: ``(p, m, m)`` float64, ``T_m = Q_m^T A Q_m`` for each of ``p`` probes.
        basis: ``(p, n, m)`` Lanczos vectors (basis dtype/device), or ``None`` if not kept;
            with a sharded basis (:class:`~jupyter_curvature.core.distributed.basis.ShardedBasis`)
            this rank's rows, ``(p, n_r, m)``.
        beta_last: ``(p,)`` float64, ``beta_m``: ``||A q_{m-1} - Q_m T_m e_m||``.
        ritz_values: ``(p, m)`` ascending eigenvalues of each ``T_m``.
        ritz_weights: ``(p, m)`` quadrature weights ``s_i[0]^2`` (each row sums to 1).
        ritz_residuals: ``(p, m)`` ``|beta_m s_i[m-1]| = ||A y_i - theta_i y_i||``.
        tridiagonal_vectors: ``(p, m, m)`` eigenvectors ``s_i`` of ``T_m`` (columns).
        num_steps: ``m``, the Krylov dimension reached (shared by all probes).
        breakdown: True when an invariant subspace ended the run before ``num_iters``.
        num_matvecs: operator products used (a block of ``p`` counts ``p``).
        seconds: wall time; ``product_seconds`` of it inside the operator.
        pinned: the basis was allocated in page-locked CPU memory (a CPU basis for a GPU
            operator).
    """

    tridiagonal: torch.Tensor
    basis: torch.Tensor | None
    beta_last: torch.Tensor
    ritz_values: torch.Tensor
    ritz_weights: torch.Tensor
    ritz_residuals: torch.Tensor
    tridiagonal_vectors: torch.Tensor
    num_steps: int
    breakdown: bool
    num_matvecs: int
    seconds: float
    product_seconds: float
    pinned: bool = False

    @property
    def num_probes(self) -> int:
        return int(self.tridiagonal.shape[0])

    def ritz_vectors(self, probe: int = 0, indices: Any = None) -> torch.Tensor:
        """Ritz vectors ``Q_m s_i`` ``(n, len(indices))`` of one probe (needs ``keep_basis``)."""
        if self.basis is None:
            raise ValueError("the basis was not kept; rerun with keep_basis=True")
        S = self.tridiagonal_vectors[probe]
        if indices is not None:
            S = S[:, indices]
        return self.basis[probe] @ S.to(self.basis)

    def __repr__(self) -> str:
        top = self.ritz_values[:, -1].tolist()
        bottom = self.ritz_values[:, 0].tolist()
        return (
            f"LanczosResult(probes={self.num_probes}, steps={self.num_steps}, "
            f"breakdown={self.breakdown}, matvecs={self.num_matvecs}, "
            f"largest={[f'{v:.6g}' for v in top]}, smallest={[f'{v:.6g}' for v in bottom]})"
        )


def diagonalise(T: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Ritz values, weights, residuals and vectors of a batch of tridiagonals (float64)."""
    theta, S = torch.linalg.eigh(T.double())
    weights = S[..., 0, :] ** 2
    residuals = (beta.double().unsqueeze(-1) * S[..., -1, :]).abs()
    return theta, weights, residuals, S


def lanczos(
    op: Any,
    num_iters: int,
    num_probes: int = 1,
    seed: int = 0,
    *,
    init: str | torch.Tensor = "rademacher",
    basis_dtype: torch.dtype = torch.float64,
    basis_device: torch.device | str | None = None,
    keep_basis: bool = False,
    check_symmetry: bool = True,
    keep_graphs: bool | None = None,
    reorthogonalize: str = "full",
) -> LanczosResult:
    """Batched Lanczos with full reorthogonalisation on GPyTorch's ``lanczos_tridiag``.

    All ``num_probes`` start vectors run as one process: each step multiplies the operator
    with one ``(n, num_probes)`` block.

    Args:
        op: a curvature operator (``HessianOperator``, ``GGNOperator``, ``DenseOperator``...)
            or a symmetric square tensor.
        num_iters: Lanczos steps ``m`` (products per probe); capped at ``n``.
        num_probes: independent start vectors run together.
        seed: seeds the start vectors (and the vectors that replace broken-down probes).
        init: ``"rademacher"`` (default, as PyHessian and Ubaru et al. 2017), ``"gaussian"``,
            or an ``(n, num_probes)`` tensor.
        basis_dtype: dtype of the Lanczos vectors; float64 by default even for a float32
            operator (the product runs in the operator's dtype).
        basis_device: where the basis lives (e.g. ``"cpu"`` for a large model on a GPU);
            defaults to the operator's device.
        keep_basis: return the ``(p, n, m)`` basis (needed for Ritz vectors).
        check_symmetry: the free step-1 probe check ``q_0^T A q_1 == q_1^T A q_0``.
        keep_graphs: for a ``HessianOperator``, keep each batch's gradient graph across the
            steps so that a product costs only the second backward. ``None`` (default): when
            the graphs fit in half the free memory (counted as they are built, see
            :mod:`._graphs`); ``True``: always; ``False``: never. The operator is left as
            it was found.
        reorthogonalize: ``"full"`` (default): GPyTorch's full reorthogonalisation against
            the stored basis; ``"none"``: the plain three-term recurrence
            (:func:`run_recurrence`), no basis stored (``keep_basis`` must be False); ghost
            copies of converged Ritz values appear, the quadrature's moments do not change.

    Returns:
        LanczosResult, with ``T_m`` in the operator's units (the internal scaling undone).

    Raises:
        ValueError: ``num_iters < 1``, ``num_probes < 1``, a non-symmetric operator.
        FloatingPointError: a product contained NaN (the loss or the model produced NaN).
    """
    A = Operator(op, keep_graphs=keep_graphs, sharded=True)
    num_iters = check_int("num_iters", num_iters, 1)
    num_probes = check_int("num_probes", num_probes, 1)
    seed = check_seed(seed)
    with A:
        return run_lanczos(
            A,
            num_iters,
            num_probes,
            seed,
            init=init,
            basis_dtype=basis_dtype,
            basis_device=basis_device,
            keep_basis=keep_basis,
            check_symmetry=check_symmetry,
            reorthogonalize=reorthogonalize,
        )


def run_lanczos(
    A: Operator,
    num_iters: int,
    num_probes: int,
    seed: int,
    *,
    init: str | torch.Tensor,
    basis_dtype: torch.dtype,
    basis_device: torch.device | str | None,
    keep_basis: bool,
    check_symmetry: bool = True,
    on_step: Callable[[_Record, int], None] | None = None,
    reorthogonalize: str = "full",
) -> LanczosResult:
    """:func:`lanczos` on an already wrapped (and opened) operator.

    ``on_step(record, j)`` runs before each product and may raise :class:`_Stop` (a
    cancellation): the result then holds the ``j`` steps done; with none done it raises
    :class:`~jupyter_curvature.core.progress.Cancelled`.
    """
    reorthogonalize = check_reorthogonalize(reorthogonalize)
    full = reorthogonalize == "full"
    if keep_basis and not full:
        raise ValueError(
            'reorthogonalize="none" stores no basis: ritz_vectors/keep_basis need "full"'
        )
    device = resolve_device(basis_device, A.device)
    # drawn full-length and sliced: the same start vectors whatever the row layout
    init_vecs = A.space.local(start_vectors(A.n, num_probes, seed, init, basis_dtype, device))
    closure = LanczosClosure(
        A, check_symmetry=check_symmetry, seed=seed, on_step=on_step, window=None if full else 2
    )
    t0 = time.perf_counter()
    pinned = False
    if full:
        pin = device.type == "cpu" and A.device.type == "cuda"
        pinned = run_tridiag(closure, min(num_iters, A.n), init_vecs, pin=pin)
    else:
        run_recurrence(closure, min(num_iters, A.n), init_vecs)
    rec = closure.rec
    if not rec.alphas:
        raise Cancelled("lanczos")
    scale = rec.scale
    T = tridiagonal(rec) * scale
    beta = final_beta(closure) * scale
    theta, weights, residuals, S = diagonalise(T, beta)
    basis = torch.stack(rec.inputs, -1).permute(1, 0, 2) if keep_basis else None
    seconds = time.perf_counter() - t0
    return LanczosResult(
        tridiagonal=T,
        basis=basis,
        beta_last=beta,
        ritz_values=theta,
        ritz_weights=weights,
        ritz_residuals=residuals,
        tridiagonal_vectors=S,
        num_steps=len(rec.alphas),
        breakdown=rec.breakdown,
        num_matvecs=A.num_matvecs,
        seconds=seconds,
        product_seconds=rec.product_seconds,
        pinned=pinned,
    )
