"""Per-block spectra: top eigenvalue, trace and density of every block ``H_jj`` in one call.

:func:`block_spectra` splits the parameters into blocks (embeddings, each attention and MLP,
norms, head; CNN stages: :mod:`jupyter_curvature.core.blocks`) and gives, for each block, the
spectral density of ``H_jj`` by stochastic Lanczos quadrature (:mod:`.density`), its top
eigenvalue certified by its residual, and its trace.

Shared passes. The Lanczos processes of all blocks and probes run in lockstep on the
block-diagonal operator ``D = diag(H_11, ..., H_bb)``
(:class:`~jupyter_curvature.operators.BlockDiagonalOperator`): at step ``t`` probe ``i``'s
vectors of all blocks travel in one column ``[q_1; ...; q_b]``, and ``D`` maps it to
``[H_11 q_1; ...; H_bb q_b]``. So a step is one product of ``D`` with ``p`` columns (``p``
probes), one pass over the data for all blocks, as the whole model's SLQ takes one product
of ``H`` with ``p`` columns per step. For a Hessian the pass shares each batch's forward and
gradient graph among the blocks; what grows with the number of blocks is the backward
passes, one per block, each through the part of the graph between the block's gradient and
its parameters (docs/blocks.md measures it). A block smaller than ``num_iters`` stops at its
dimension, where its Ritz values are its exact eigenvalues.

Each block's Lanczos is the standard one with full reorthogonalisation (classical
Gram-Schmidt twice) on the block's own coordinates, with a float64 basis, or a float32 one
whose inner products and combinations are summed in float64 (as the density's, chosen by
``memory_budget`` or the memory free: :mod:`.memory`); a probe whose Krylov space
becomes invariant before the block's dimension is reached continues with a random vector
orthogonal to its basis, with ``beta = 0`` (the tridiagonal decouples, the new Ritz values
get weight 0 in the quadrature), as :func:`~.lanczos.lanczos` does.

* Top eigenvalue: the largest Ritz value over the probes, with its residual
  ``||H_jj y - theta y||`` recomputed from one more product of ``D`` (the top Ritz vectors of
  all blocks in one column); ``converged`` when it is at most ``tol * scale`` (``scale`` the
  block's largest ``|Ritz value|``). A residual ``r`` puts an eigenvalue within ``r`` of
  ``theta`` (Parlett, *The Symmetric Eigenvalue Problem*, 1998, Thm 4.5.1).
* Trace: Hutchinson with the Lanczos start vectors (Rademacher ``z``, ``z^T H_jj z =
  n_j q_0^T H_jj q_0 = n_j alpha_0``), with its standard error; exact (the sum of the
  eigenvalues, standard error 0) when the Lanczos reached the block's dimension.
* Density: a :class:`~.density.SpectralDensity` per block (its statistics, its figure).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.records import jsonable, write_json
from ..core.tables import format_table
from ..operators import CurvatureOperator, GGNOperator, HessianOperator
from ..operators.blocks import BlockDiagonalOperator, groups_products
from ._checks import Operator, check_int, check_positive, check_seed, raise_if_asymmetric
from .density import SpectralDensity
from .lanczos import GPYTORCH_BREAKDOWN, SCALE_TARGET, diagonalise, start_vectors
from .memory import BasisMode, blocks_bytes, check_budget, choose_basis, combine64, dot64
from .trace import TraceEstimate

__all__ = ["BlockSpectra", "BlockSpectrum", "block_lanczos", "block_spectra", "blocks_basis",
           "curvature_operator"]  # fmt: skip

#: relative breakdown threshold: GPyTorch's absolute 1e-6 on an operator scaled to 1e4
BREAKDOWN_RTOL = GPYTORCH_BREAKDOWN / SCALE_TARGET

CURVATURES = {"hessian": HessianOperator, "ggn": GGNOperator}


def curvature_operator(
    model: Any, loss_fn: Any, data: Any, curvature: str = "hessian", **kwargs: Any
) -> CurvatureOperator:
    """``HessianOperator`` or ``GGNOperator`` by name (``curvature="hessian"|"ggn"``)."""
    return _curvature_class(curvature)(model, loss_fn, data, **kwargs)


def _curvature_class(curvature: str) -> type[CurvatureOperator]:
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    return CURVATURES[curvature]


@dataclass
class _BlockRun:
    """The lockstep Lanczos state of one block: basis ``(m, n_j, p)`` and coefficients."""

    size: int
    steps: int
    basis: torch.Tensor
    alphas: torch.Tensor
    betas: torch.Tensor
    scale: float = 0.0
    restarts: int = 0


def block_lanczos(
    D: Operator,
    blocks: BlockDiagonalOperator,
    num_iters: int,
    num_probes: int,
    seed: int,
    basis_dtype: torch.dtype = torch.float64,
) -> tuple[list[_BlockRun], list[torch.Tensor], float]:
    """Lanczos on every block of ``blocks`` in lockstep, one product of ``D`` per step.

    ``D`` is the (opened) view of ``blocks``. Returns the runs, the last residual norms
    ``beta_m`` per block ``(p,)`` and the seconds spent in products.
    """
    p = num_probes
    device = D.device
    z = start_vectors(D.n, p, seed, "rademacher", basis_dtype, device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 7919)
    runs = []
    for idx, size in zip(blocks.indices, blocks.sizes):
        m = min(num_iters, size)
        basis = torch.empty(m, size, p, dtype=basis_dtype, device=device)
        q0 = z[idx]
        basis[0] = q0 / q0.norm(dim=0, keepdim=True)
        zeros = torch.zeros(m, p, dtype=torch.float64)
        runs.append(_BlockRun(size, m, basis, zeros, zeros.clone()))
    last_beta = [torch.zeros(p, dtype=torch.float64) for _ in runs]
    product_seconds = 0.0
    first: tuple[torch.Tensor, torch.Tensor] | None = None
    for t in range(max(r.steps for r in runs)):
        pieces = [
            r.basis[t] if t < r.steps else torch.zeros(r.size, p, dtype=basis_dtype, device=device)
            for r in runs
        ]
        x = blocks.pack(pieces)
        t0 = time.perf_counter()
        y = D.matmat(x)
        product_seconds += time.perf_counter() - t0
        if t == 0:
            first = (x[:, :1], y[:, :1])
        elif t == 1 and first is not None:  # symmetry of D, for free (as lanczos does)
            raise_if_asymmetric(
                torch.cat([first[0], x[:, :1]], 1), torch.cat([first[1], y[:, :1]], 1), D.dtype
            )
            first = None  # its views held step 0's whole input and product
        for j, (run, idx) in enumerate(zip(runs, blocks.indices)):
            if t >= run.steps:
                continue
            w = y[idx]
            if t == 0:
                run.scale = float(w.norm(dim=0).max())
            Q = run.basis
            alpha = (Q[t] * w).sum(0)
            r = w - Q[t] * alpha
            if t > 0:
                r = r - Q[t - 1] * run.betas[t - 1].to(r)
            for _ in range(2):  # classical Gram-Schmidt twice
                r = _project_out(Q[: t + 1], r)
            beta = r.norm(dim=0)
            run.alphas[t] = alpha.double().cpu()
            broken = beta <= BREAKDOWN_RTOL * max(run.scale, torch.finfo(torch.float64).tiny)
            if t + 1 == run.steps:
                last_beta[j] = torch.where(broken, 0.0, beta).double().cpu()
                continue
            run.betas[t] = torch.where(broken, 0.0, beta).double().cpu()
            q = r / torch.where(broken, 1.0, beta)
            for i in broken.nonzero().flatten().tolist():  # restart orthogonal to the basis
                v = torch.randn(run.size, 1, generator=gen, dtype=torch.float64).to(q)
                for _ in range(2):
                    v = v - Q[: t + 1, :, i].T @ (Q[: t + 1, :, i] @ v)
                q[:, i : i + 1] = v / v.norm()
                run.restarts += 1
            Q[t + 1] = q
    return runs, last_beta, product_seconds


def _project_out(Q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``r - Q (Q^T r)`` per probe, for a basis ``Q`` ``(t, n_j, p)`` and ``r`` ``(n_j, p)``.

    A float64 basis: two contractions. A reduced-precision one: the inner products and the
    combination of each probe summed in float64 (:func:`.memory.dot64`,
    :func:`.memory.combine64`), so only the stored entries and the result are rounded.
    """
    if Q.dtype == torch.float64:
        return r - torch.einsum("tnp,tp->np", Q, torch.einsum("tnp,np->tp", Q, r))
    out = torch.empty_like(r)
    for i in range(r.shape[1]):
        Qi = Q[:, :, i]
        out[:, i] = r[:, i] - combine64(Qi, dot64(Qi, r[:, i]))
    return out


def blocks_basis(
    sizes: list[int],
    num_iters: int,
    num_probes: int,
    *,
    device: torch.device | str,
    op_dtype: torch.dtype,
    spreads: bool,
    basis_dtype: torch.dtype | None = None,
    memory_budget: float | str | None = None,
) -> BasisMode:
    """The basis mode :func:`block_spectra` uses for blocks of these ``sizes``, without a
    product: float64, or float32 with float64 sums when float64 does not fit
    ``memory_budget`` (or, without one, the memory free now); always on the operator's
    ``device`` (:func:`.memory.choose_basis`, ``host=False``).

    ``spreads``: :attr:`~jupyter_curvature.operators.BlockDiagonalOperator.spreads`.

    Raises:
        ValueError: no dtype fits ``memory_budget`` (the message lists each with its bytes).
    """
    return choose_basis(
        lambda dt, how: blocks_bytes(sizes, num_iters, num_probes, dt, op_dtype, spreads),
        torch.device(device),
        check_budget(memory_budget),
        basis_dtype,
        None,
        kinds=("full",),
        host=False,
    )


def planned_blocks_basis(
    model: Any,
    blocks: Any,
    curvature: str,
    num_iters: int,
    num_probes: int,
    params: Any = None,
    **basis: Any,
) -> BasisMode:
    """:func:`blocks_basis` for ``block_spectra(model, ..., blocks, curvature=...)`` from the
    block names alone (no operator is built, no data is read): lets a caller check a
    ``memory_budget`` before the first product of any run."""
    from ..core.blocks import resolve_blocks

    named = dict(model.named_parameters())
    resolved = resolve_blocks(model, blocks, params)
    sizes = [sum(named[p].numel() for p in names) for names in resolved.values()]
    first = named[next(iter(resolved.values()))[0]]
    spreads = not groups_products(_curvature_class(curvature))
    return blocks_basis(sizes, num_iters, num_probes, device=first.device,
                        op_dtype=first.dtype, spreads=spreads, **basis)  # fmt: skip


@dataclass
class BlockSpectrum:
    """One block's curvature: its top eigenvalue (certified), trace and density.

    Attributes:
        name: the block's name; ``params``: its parameter names; ``size``: its dimension.
        top_eigenvalue: the largest Ritz value over the probes.
        residual: ``||H_jj y - theta y||`` from a true product; ``converged``: at most
            ``tol * scale`` with ``scale`` the block's largest ``|Ritz value|``.
        trace: a :class:`~.trace.TraceEstimate` (``method="exact"`` when Lanczos reached
            the block's dimension, else ``"hutchinson"`` with the Lanczos probes).
        density: the block's :class:`~.density.SpectralDensity`.
    """

    name: str
    params: list[str]
    size: int
    top_eigenvalue: float
    residual: float
    converged: bool
    scale: float
    trace: TraceEstimate
    density: SpectralDensity

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": list(self.params),
            "size": self.size,
            "top_eigenvalue": self.top_eigenvalue,
            "residual": self.residual,
            "converged": self.converged,
            "scale": self.scale,
            "trace": self.trace.to_dict(),
            "density": self.density.to_dict(),
        }


@dataclass
class BlockSpectra:
    """Per-block spectra: a table (:meth:`table`), a figure (:meth:`plot`), a record.

    Attributes:
        blocks: one :class:`BlockSpectrum` per block, in model order.
        curvature: ``"hessian"``, ``"ggn"`` or ``"operator"`` (an operator was given).
        num_iters, num_probes, seed, tol: the settings.
        num_matvecs: products of the block-diagonal operator (columns), all blocks together:
            ``num_probes`` per step and one for the residuals.
        seconds, product_seconds: wall time, and the part inside the products.
        basis: how the Lanczos vectors were held
            (:meth:`~jupyter_curvature.spectral.memory.BasisMode.to_dict`).
    """

    blocks: list[BlockSpectrum]
    curvature: str
    num_iters: int
    num_probes: int
    seed: int
    tol: float
    num_matvecs: int
    seconds: float
    product_seconds: float
    basis: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def __getitem__(self, name: str) -> BlockSpectrum:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no block {name!r}; the blocks are {self.names}")

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def top_eigenvalues(self) -> np.ndarray:
        return np.array([b.top_eigenvalue for b in self.blocks])

    @property
    def traces(self) -> np.ndarray:
        return np.array([b.trace.estimate for b in self.blocks])

    def rows(self) -> list[dict[str, Any]]:
        """One plain dict per block: the table's numbers."""
        out = []
        for b in self.blocks:
            s = b.density.stats
            out.append(
                {
                    "block": b.name,
                    "size": b.size,
                    "top_eigenvalue": b.top_eigenvalue,
                    "residual": b.residual,
                    "converged": b.converged,
                    "trace": b.trace.estimate,
                    "trace_stderr": b.trace.stderr,
                    "trace_method": b.trace.method,
                    "smallest": s.smallest,
                    "negative_mass": s.negative_mass,
                }
            )
        return out

    def table(self) -> str:
        """A fixed-width text table, one row per block."""
        headers = [
            "block",
            "size",
            "top eigenvalue",
            "residual",
            "conv.",
            "trace",
            "+-",
            "smallest",
            "neg. mass",
        ]
        rows = [
            [
                r["block"],
                r["size"],
                r["top_eigenvalue"],
                r["residual"],
                r["converged"],
                r["trace"],
                r["trace_stderr"] if r["trace_method"] != "exact" else 0.0,
                r["smallest"],
                r["negative_mass"],
            ]
            for r in self.rows()
        ]
        title = (
            f"Per-block {self.curvature} spectra ({self.num_iters} Lanczos steps, "
            f"{self.num_probes} probes, {self.num_matvecs} block-diagonal products, "
            f"{self.seconds:.3g} s)"
        )
        return format_table(headers, rows, title)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"BlockSpectra({len(self)} blocks, curvature={self.curvature!r})\n{self.table()}"

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "curvature": self.curvature,
                "num_iters": self.num_iters,
                "num_probes": self.num_probes,
                "seed": self.seed,
                "tol": self.tol,
                "num_matvecs": self.num_matvecs,
                "seconds": self.seconds,
                "product_seconds": self.product_seconds,
                "table": self.rows(),
                "blocks": [b.to_dict() for b in self.blocks],
                "basis": self.basis,
                **self.extra,
            }
        )

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (NaN as ``null``)."""
        return write_json(path, self.to_dict())

    def plot(self, **kwargs: Any) -> Any:
        """The figure: top eigenvalue and trace per block, and every block's density."""
        from ..plotting.blocks import plot_block_spectra

        return plot_block_spectra(self, **kwargs)


def block_spectra(
    model: Any,
    loss_fn: Any = None,
    data: Any = None,
    blocks: Any = "auto",
    *,
    curvature: str = "hessian",
    num_iters: int = 80,
    num_probes: int = 4,
    seed: int = 0,
    tol: float = 1e-3,
    params: Any = None,
    keep_graphs: bool | None = None,
    basis_dtype: torch.dtype | None = None,
    memory_budget: float | str | None = None,
    **operator_options: Any,
) -> BlockSpectra:
    """Top eigenvalue, trace and spectral density of every block of a model, sharing passes.

    Args:
        model: the network, or a curvature operator (then ``loss_fn`` and ``data`` are not
            given and ``blocks`` is what :class:`BlockDiagonalOperator` takes for it).
        loss_fn, data: as for :class:`~jupyter_curvature.operators.HessianOperator`.
        blocks: ``"auto"`` (embeddings, each attention, MLP and norm group, head; CNN stages),
            a dict ``{name: parameter pattern(s)}`` or a list of module names
            (:func:`~jupyter_curvature.core.blocks.resolve_blocks`).
        curvature: ``"hessian"`` (default) or ``"ggn"``.
        num_iters: Lanczos steps per probe (capped at each block's dimension).
        num_probes: SLQ probes (Rademacher), shared by all blocks.
        seed: seeds the probes.
        tol: a top eigenvalue is ``converged`` when its residual is at most ``tol * scale``.
        params: only these parameters (blocks are cut to them).
        keep_graphs: keep each batch's gradient graph across the steps (Hessian; ``None``:
            when they fit, as :func:`~.density.spectral_density`).
        basis_dtype: dtype of the Lanczos vectors (float32: sums in float64); ``None``:
            float64, or float32 when float64 does not fit ``memory_budget``.
        memory_budget: bytes (or a size, ``"8GB"``) the blocks' Lanczos vectors may take
            on the operator's device (:func:`blocks_basis`; ``docs/scale.md``); ``None``:
            the memory free there now (float32 with a ``MemoryWarning`` when float64 does
            not fit).
        **operator_options: passed to the operator (``batchnorm``, ``outputs``,
            ``batch_layout``, ``check_deterministic``, ...).

    Returns:
        :class:`BlockSpectra` (``.table()``, ``.plot()``, ``.to_dict()``, ``.save(path)``).

    Raises:
        ValueError: a block that matches nothing (the message lists the model's modules),
            overlapping blocks, bad settings, a ``memory_budget`` that holds no basis (before
            any product).
    """
    num_iters = check_int("num_iters", num_iters, 1)
    num_probes = check_int("num_probes", num_probes, 1)
    seed = check_seed(seed)
    tol = check_positive("tol", tol)
    if isinstance(model, CurvatureOperator):
        if loss_fn is not None or data is not None:
            raise TypeError("pass either an operator, or a model with loss_fn and data")
        op, name = model, "operator"
    else:
        if loss_fn is None or data is None:
            raise TypeError("block_spectra(model, loss_fn, data, ...) needs loss_fn and data")
        from ..core.blocks import resolve_blocks

        resolved = resolve_blocks(model, blocks, params)
        chosen = [p for names in resolved.values() for p in names]
        op = curvature_operator(model, loss_fn, data, curvature, params=chosen, **operator_options)
        blocks, name = resolved, curvature
    D = BlockDiagonalOperator(op, blocks)
    mode = blocks_basis(D.sizes, num_iters, num_probes, device=D.device, op_dtype=D.dtype,
                        spreads=D.spreads, basis_dtype=basis_dtype,
                        memory_budget=memory_budget)  # fmt: skip
    start = time.perf_counter()
    A = Operator(D, keep_graphs=keep_graphs)
    with A:
        runs, last_beta, product_seconds = block_lanczos(
            A, D, num_iters, num_probes, seed, mode.dtype
        )
        results = [_diagonalise(run, beta) for run, beta in zip(runs, last_beta)]
        tops = [_top_ritz_vector(run, res) for run, res in zip(runs, results)]
        t0 = time.perf_counter()
        y = D.pack([v for _, v in tops])
        product = A.matmat(y)
        product_seconds += time.perf_counter() - t0
        num_matvecs = A.num_matvecs
    seconds = time.perf_counter() - start
    out = []
    for j, (run, res, (theta, _)) in enumerate(zip(runs, results, tops)):
        idx = D.indices[j]
        residual = float((product[idx] - theta * y[idx]).norm())
        ritz, weights, residuals, _ = res
        density = SpectralDensity(
            ritz_values=ritz.cpu(),
            weights=weights.cpu(),
            residuals=residuals.cpu(),
            n=run.size,
            num_iters=num_iters,
            num_steps=run.steps,
            num_matvecs=num_probes * run.steps,
            seed=seed,
            breakdown=run.restarts > 0,
            seconds=seconds,
            product_seconds=product_seconds,
        )
        scale = density.scale
        out.append(
            BlockSpectrum(
                name=D.names[j],
                params=_block_params(op, D, j),
                size=run.size,
                top_eigenvalue=theta,
                residual=residual,
                converged=residual <= tol * scale,
                scale=scale,
                trace=_trace(run, num_probes),
                density=density,
            )
        )
    return BlockSpectra(
        out, name, num_iters, num_probes, seed, tol, num_matvecs, seconds, product_seconds,
        basis=mode.to_dict(),
    )  # fmt: skip


def _diagonalise(run: _BlockRun, beta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    T = torch.diag_embed(run.alphas.T)
    if run.steps > 1:
        b = run.betas[: run.steps - 1].T
        T = T + torch.diag_embed(b, 1) + torch.diag_embed(b, -1)
    return diagonalise(T, beta)


def _top_ritz_vector(run: _BlockRun, res: tuple[torch.Tensor, ...]) -> tuple[float, torch.Tensor]:
    """The largest Ritz value over the probes and its unit Ritz vector ``(n_j, 1)``."""
    theta, _, _, S = res
    probe = int(theta[:, -1].argmax())
    v = run.basis[:, :, probe].T @ S[probe][:, -1].to(run.basis)
    return float(theta[probe, -1]), (v / v.norm()).unsqueeze(1)


def _trace(run: _BlockRun, p: int) -> TraceEstimate:
    """Hutchinson with the Lanczos probes, or exact when the block was fully explored."""
    if run.steps == run.size:
        exact = float(run.alphas.sum(0).mean())  # trace(T) = trace(H_jj): T is Q^T H_jj Q
        return TraceEstimate(exact, 0.0, p * run.steps, "exact", exact, [], run.size)
    samples = (run.size * run.alphas[0]).tolist()
    std = float(np.std(samples, ddof=1)) / math.sqrt(p) if p > 1 else float("nan")
    return TraceEstimate(float(np.mean(samples)), std, p, "hutchinson", 0.0, samples, run.size)


def _block_params(op: Any, D: BlockDiagonalOperator, j: int) -> list[str]:
    if D.groups is None:
        return []
    names = op.param_names
    return [names[i] for i in D.groups[j]]
