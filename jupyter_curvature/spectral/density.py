"""Stochastic Lanczos quadrature (SLQ): the spectral density of a curvature operator.

For a start vector ``v`` with ``||v||^2 = n`` (Rademacher) and ``q_0 = v / sqrt(n)``, ``m``
Lanczos steps give Ritz values ``theta_k`` and weights ``tau_k = s_k[0]^2`` (``sum tau_k = 1``)
with

    q_0^T f(A) q_0 ~= sum_k tau_k f(theta_k)        (Gauss quadrature, Golub & Meurant 2010)

so ``phi(t) = (1/n_v) sum_l sum_k tau_k^(l) g_sigma(t - theta_k^(l))`` estimates the density of
eigenvalues (Lin, Saad & Yang, SIAM Review 2016, eq. 3.8; Ubaru, Chen & Saad, SIMAX 2017;
Ghorbani, Krishnan & Xiao, ICML 2019). ``n_v`` probes run together as one batched Lanczos, so
each pass over the data serves all of them.

Bandwidth: Papyan (2019, DeepnetHessian ``main.py``) on the spectrum mapped to ``[-1, 1]``:
``sigma = (2 / (m - 1)) / sqrt(8 ln kappa)`` with ``kappa = 1.25`` and a 5% margin, i.e. the
resolution of an ``m``-point quadrature; override with ``sigma=``.

Statistics are those the original package printed, computed correctly (its trace was not
multiplied by ``n``; its "mean of bulk" was a median; its smallest-value weight was read after
deleting entries): see :class:`SpectrumStats`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.files import atomic_savez, atomic_write_text
from ..core.progress import Progress
from ._checks import Operator, check_int, check_positive, check_seed
from .lanczos import _Stop, diagonalise, run_lanczos, tridiagonal
from .memory import BasisMode, check_budget, check_reorthogonalize, choose_basis, density_bytes

#: Papyan (2019) bandwidth constants: kappa and the margin added to the spectral range
KAPPA = 1.25
MARGIN = 0.05


@dataclass
class DensityCurve:
    """A Gaussian-broadened spectral density on a grid; integrates to 1 over the real line.

    Attributes:
        grid: ``(g,)`` points ``t``.
        density: ``(g,)`` mean over probes of ``phi_l(t)``; ``n * density`` is eigenvalues per unit.
        std: ``(g,)`` standard deviation across probes (0 for one probe).
        stderr: ``(g,)`` ``std / sqrt(num_probes)``: draw ``density +- 2 stderr`` as a band.
        per_probe: ``(p, g)`` each probe's density.
        sigma: the Gaussian bandwidth used.
    """

    grid: np.ndarray
    density: np.ndarray
    std: np.ndarray
    stderr: np.ndarray
    per_probe: np.ndarray
    sigma: float

    @property
    def lower(self) -> np.ndarray:
        return np.maximum(self.density - 2 * self.stderr, 0.0)

    @property
    def upper(self) -> np.ndarray:
        return self.density + 2 * self.stderr

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()
        }

    def __repr__(self) -> str:
        i = int(np.argmax(self.density))
        return (
            f"DensityCurve(points={self.grid.size}, range=[{self.grid[0]:.4g}, {self.grid[-1]:.4g}], "
            f"sigma={self.sigma:.3g}, peak={self.density[i]:.4g} at {self.grid[i]:.4g}, "
            f"probes={self.per_probe.shape[0]})"
        )


@dataclass
class SpectrumStats:
    """Summary statistics of an SLQ spectrum (``n`` = dimension, ``p`` = probes).

    Attributes:
        largest, smallest: extreme Ritz values over all probes (Lanczos finds the extremes
            first: these converge fastest, Kaniel-Paige-Saad).
        trace: ``n * mean_l sum_k tau_k theta_k`` (equals Hutchinson with the same probes).
        trace_stderr: ``n * std_l(...) / sqrt(p)``.
        negative_mass: ``mean_l sum_{theta < -z} tau`` with ``z = zero_tol * scale``.
        negative_count: ``n * negative_mass``, the estimated number of negative eigenvalues.
        negative_count_stderr: its standard error across probes (``n std_l / sqrt(p)``;
            NaN for one probe).
        zero_mass: weight of Ritz values with ``|theta| <= z`` (degenerate directions).
        log_abs_det: ``n * mean_l sum_{|theta| > z} tau log|theta|``, the log-determinant of the
            non-degenerate part (the original's "pseudo log-determinant", times ``n``).
        outliers: eigenvalues separated from the bulk: Ritz values converged
            (``|beta_m s[m-1]| <= outlier_tol * scale``) outside the bulk, found by at least
            half the probes, merged across probes.
        bulk_range: ``(lo, hi)``: the connected part of the Ritz values (neighbours at most
            ``outlier_gap * scale`` apart) that holds the weighted median.
        bulk_mean: weighted mean of the non-outlier part.
        outlier_mass: weight of the outlier Ritz values (about ``num_outliers / n``).
        weight_at_largest, weight_at_smallest: mean weight of the extreme Ritz values.
        scale: ``max |theta|``, the spectral norm estimate the tolerances are relative to.
    """

    largest: float
    smallest: float
    trace: float
    trace_stderr: float
    negative_mass: float
    negative_count: float
    zero_mass: float
    log_abs_det: float
    outliers: list[float]
    bulk_range: tuple[float, float]
    bulk_mean: float
    outlier_mass: float
    weight_at_largest: float
    weight_at_smallest: float
    scale: float
    negative_count_stderr: float = float("nan")

    @property
    def num_outliers(self) -> int:
        return len(self.outliers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bulk_range"] = list(self.bulk_range)
        d["num_outliers"] = self.num_outliers
        return d

    def __repr__(self) -> str:
        rows = [
            ("largest eigenvalue", f"{self.largest:.6g}"),
            ("smallest eigenvalue", f"{self.smallest:.6g}"),
            ("trace", f"{self.trace:.6g} +- {self.trace_stderr:.2g}"),
            ("negative mass / count", f"{self.negative_mass:.4g} / {self.negative_count:.4g}"),
            ("zero mass", f"{self.zero_mass:.4g}"),
            ("log |det| (non-zero part)", f"{self.log_abs_det:.6g}"),
            ("outliers", ", ".join(f"{v:.4g}" for v in self.outliers) or "none"),
            ("bulk range", f"[{self.bulk_range[0]:.4g}, {self.bulk_range[1]:.4g}]"),
            ("bulk mean", f"{self.bulk_mean:.4g}"),
            ("outlier mass", f"{self.outlier_mass:.4g}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "SpectrumStats\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


@dataclass
class SpectralDensity:
    """An SLQ spectrum: Ritz values and quadrature weights per probe, and what follows from them.

    Attributes:
        ritz_values: ``(p, m)`` float64, ascending per probe.
        weights: ``(p, m)`` float64, ``tau = s[0]^2``; each row sums to 1.
        residuals: ``(p, m)`` float64, ``|beta_m s[m-1]|``: Ritz pair residuals.
        n: dimension of the operator.
        num_iters: steps asked for; ``num_steps`` reached (fewer after a breakdown or if
            ``n`` is smaller).
        num_matvecs: operator products (``p * num_steps``).
        seed: seed of the probes.
        breakdown: an invariant subspace ended the run early.
        seconds, product_seconds: wall time and the part of it inside the operator.
        ritz_vectors: ``(p, n, m)`` (basis dtype) when asked for, else ``None``; with a
            sharded basis (:class:`~jupyter_curvature.core.distributed.basis.ShardedBasis`)
            this rank's rows ``(p, n_r, m)``, gathered by
            :func:`~jupyter_curvature.distributed.gather_rows` along dim 1.
        zero_tol, outlier_tol: the relative tolerances of :attr:`stats`.
        cancelled: the run was cancelled after ``num_steps`` steps (a partial result: the
            same as a run of ``num_iters = num_steps``, see :func:`spectral_density`).
        basis: how the Lanczos vectors were held (:meth:`.memory.BasisMode.to_dict`: dtype,
            device, pinned, reorthogonalize, bytes, the budget), or ``None`` (a record saved
            before it was kept).
    """

    ritz_values: torch.Tensor
    weights: torch.Tensor
    residuals: torch.Tensor
    n: int
    num_iters: int
    num_steps: int
    num_matvecs: int
    seed: int
    breakdown: bool
    seconds: float
    product_seconds: float
    ritz_vectors: torch.Tensor | None = None
    zero_tol: float = 1e-8
    outlier_tol: float = 1e-3
    outlier_gap: float = 0.05
    cancelled: bool = False
    basis: dict[str, Any] | None = None

    @property
    def num_probes(self) -> int:
        return int(self.ritz_values.shape[0])

    @property
    def scale(self) -> float:
        return float(self.ritz_values.abs().max()) if self.ritz_values.numel() else 0.0

    # ------------------------------------------------------------------ density
    def default_sigma(self) -> float:
        """Papyan (2019): ``(2 / (m - 1)) / sqrt(8 ln 1.25)`` on the spectrum mapped to [-1, 1]."""
        lo, hi = float(self.ritz_values.min()), float(self.ritz_values.max())
        half = (hi - lo) / 2 * (1 + MARGIN)
        if half <= 0:
            half = max(abs(hi), 1.0) * MARGIN  # a single point: any small positive width
        m = max(self.num_steps, 2)
        return half * (2 / (m - 1)) / math.sqrt(8 * math.log(KAPPA))

    def density(
        self, grid: Any = None, sigma: float | None = None, num_points: int = 1000
    ) -> DensityCurve:
        """The Gaussian-broadened density ``phi(t)`` on ``grid`` (default: the range +- 5 sigma).

        Args:
            grid: points ``t`` (array-like); default ``num_points`` points spanning the Ritz
                values plus a margin of ``max(5 sigma, 5% of the range)``.
            sigma: Gaussian standard deviation; default :meth:`default_sigma`.
            num_points: size of the default grid.
        """
        sigma = self.default_sigma() if sigma is None else check_positive("sigma", sigma)
        theta = self.ritz_values.numpy(force=True)
        tau = self.weights.numpy(force=True)
        if grid is None:
            num_points = check_int("num_points", num_points, 2)
            lo, hi = theta.min(), theta.max()
            pad = max(5 * sigma, MARGIN * (hi - lo))
            grid = np.linspace(lo - pad, hi + pad, num_points)
        grid = np.asarray(grid, dtype=np.float64).reshape(-1)
        z = (grid[None, :, None] - theta[:, None, :]) / sigma  # (p, g, m)
        per_probe = (tau[:, None, :] * np.exp(-0.5 * z**2)).sum(-1) / (
            sigma * math.sqrt(2 * math.pi)
        )
        mean = per_probe.mean(0)
        std = per_probe.std(0, ddof=1) if self.num_probes > 1 else np.zeros_like(mean)
        return DensityCurve(grid, mean, std, std / math.sqrt(self.num_probes), per_probe, sigma)

    # ------------------------------------------------------------------ statistics
    @property
    def stats(self) -> SpectrumStats:
        """Summary statistics (see :class:`SpectrumStats`); recomputed on each access."""
        theta = self.ritz_values.numpy(force=True)
        tau = self.weights.numpy(force=True)
        res = self.residuals.numpy(force=True)
        n, p = self.n, self.num_probes
        scale = self.scale
        z = self.zero_tol * scale
        per_trace = (tau * theta).sum(1)
        nonzero = np.abs(theta) > z
        logs = np.where(nonzero, np.log(np.where(nonzero, np.abs(theta), 1.0)), 0.0)
        outliers, outlier_mask, bulk_range = _outliers(
            theta, tau, res, self.outlier_tol * scale, self.outlier_gap * scale
        )
        negative = n * np.where(theta < -z, tau, 0).sum(1)  # per probe
        bulk_w = np.where(outlier_mask, 0.0, tau)
        bulk_mass = bulk_w.sum()
        return SpectrumStats(
            largest=float(theta.max()),
            smallest=float(theta.min()),
            trace=float(n * per_trace.mean()),
            trace_stderr=float(n * per_trace.std(ddof=1) / math.sqrt(p)) if p > 1 else float("nan"),
            negative_mass=float(np.where(theta < -z, tau, 0).sum(1).mean()),
            negative_count=float(n * np.where(theta < -z, tau, 0).sum(1).mean()),
            zero_mass=float(np.where(~nonzero, tau, 0).sum(1).mean()),
            log_abs_det=float(n * (tau * logs).sum(1).mean()),
            outliers=outliers,
            bulk_range=bulk_range,
            bulk_mean=float((bulk_w * theta).sum() / bulk_mass) if bulk_mass > 0 else float("nan"),
            outlier_mass=float(np.where(outlier_mask, tau, 0).sum(1).mean()),
            weight_at_largest=float(tau[np.arange(p), theta.argmax(1)].mean()),
            weight_at_smallest=float(tau[np.arange(p), theta.argmin(1)].mean()),
            scale=scale,
            negative_count_stderr=float(negative.std(ddof=1) / math.sqrt(p)) if p > 1 else math.nan,
        )

    # ------------------------------------------------------------------ records
    def to_dict(self, include_vectors: bool = False) -> dict[str, Any]:
        out = {
            "ritz_values": self.ritz_values.tolist(),
            "weights": self.weights.tolist(),
            "residuals": self.residuals.tolist(),
            **{k: getattr(self, k) for k in _SCALARS},
            "stats": self.stats.to_dict(),
        }
        if include_vectors and self.ritz_vectors is not None:
            out["ritz_vectors"] = self.ritz_vectors.tolist()
        return out

    def save(self, path: str | Path) -> Path:
        """Save losslessly: ``.json`` (exact float repr) or ``.npz`` (arrays bit-exact)."""
        path = Path(path)
        if path.suffix == ".json":
            return atomic_write_text(path, json.dumps(self.to_dict(include_vectors=True)))
        arrays = {
            "ritz_values": self.ritz_values.numpy(force=True),
            "weights": self.weights.numpy(force=True),
            "residuals": self.residuals.numpy(force=True),
            "meta": np.array(json.dumps({k: getattr(self, k) for k in _SCALARS})),
        }
        if self.ritz_vectors is not None:
            arrays["ritz_vectors"] = self.ritz_vectors.numpy(force=True)
        return atomic_savez(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> SpectralDensity:
        path = Path(path)
        if path.suffix == ".json":
            d = json.loads(path.read_text())
            vecs = d.get("ritz_vectors")
            return cls(
                ritz_values=torch.tensor(d["ritz_values"], dtype=torch.float64),
                weights=torch.tensor(d["weights"], dtype=torch.float64),
                residuals=torch.tensor(d["residuals"], dtype=torch.float64),
                ritz_vectors=None if vecs is None else torch.tensor(vecs, dtype=torch.float64),
                **{k: d[k] for k in _SCALARS if k in d},
            )
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            vecs = torch.from_numpy(z["ritz_vectors"]) if "ritz_vectors" in z.files else None
            return cls(
                ritz_values=torch.from_numpy(z["ritz_values"]),
                weights=torch.from_numpy(z["weights"]),
                residuals=torch.from_numpy(z["residuals"]),
                ritz_vectors=vecs,
                **meta,
            )

    def __repr__(self) -> str:
        return self.describe()

    def describe(self, basis: bool = True) -> str:
        """The repr; ``basis=False`` leaves out the Lanczos vectors' line (the CLI and the magic
        print one line for every run's basis instead)."""
        s = self.stats
        return (
            f"SpectralDensity(n={self.n}, probes={self.num_probes}, steps={self.num_steps}/"
            f"{self.num_iters}, matvecs={self.num_matvecs}, breakdown={self.breakdown}"
            f"{', CANCELLED (partial)' if self.cancelled else ''})\n"
            f"  Ritz values in [{s.smallest:.6g}, {s.largest:.6g}], trace ~ {s.trace:.6g}, "
            f"negative mass {s.negative_mass:.4g}, outliers {[float(f'{v:.4g}') for v in s.outliers]}"
            + (f"\n  Lanczos vectors: {self.basis['description']}" if basis and self.basis else "")
        )


_SCALARS = (
    "n",
    "num_iters",
    "num_steps",
    "num_matvecs",
    "seed",
    "breakdown",
    "seconds",
    "product_seconds",
    "zero_tol",
    "outlier_tol",
    "outlier_gap",
    "cancelled",
    "basis",
)


def _outliers(
    theta: np.ndarray, tau: np.ndarray, res: np.ndarray, tol: float, gap: float
) -> tuple[list[float], np.ndarray, tuple[float, float]]:
    """Outliers: converged Ritz values separated from the bulk by a gap, merged across probes.

    The bulk is the connected part of the spectrum (all probes' Ritz values, consecutive ones
    no more than ``gap`` apart) that contains the weighted median. Lanczos resolves isolated
    extreme eigenvalues first (Kaniel-Paige-Saad), so an outlier is a Ritz value outside the
    bulk whose residual is below ``tol``, found by at least half of the probes.
    """
    p = theta.shape[0]
    flat, w = theta.reshape(-1), tau.reshape(-1)
    order = np.argsort(flat, kind="stable")
    vals = flat[order]
    cdf = np.cumsum(w[order]) / max(w.sum(), 1e-300)
    c = int(min(np.searchsorted(cdf, 0.5), vals.size - 1))
    lo_i, hi_i = c, c
    while lo_i > 0 and vals[lo_i] - vals[lo_i - 1] <= gap:
        lo_i -= 1
    while hi_i < vals.size - 1 and vals[hi_i + 1] - vals[hi_i] <= gap:
        hi_i += 1
    lo, hi = float(vals[lo_i]), float(vals[hi_i])
    mask = (res <= tol) & ((theta < lo) | (theta > hi))
    merged: list[list[float]] = []
    for v in np.sort(theta[mask]):  # the same eigenvalue seen by several probes
        if merged and v - merged[-1][-1] <= max(tol, 1e-12 * abs(v)):
            merged[-1].append(float(v))
        else:
            merged.append([float(v)])
    outliers = [float(np.mean(g)) for g in merged if len(g) >= math.ceil(p / 2)]
    return outliers, mask, (lo, hi)


def spectral_density(
    op: Any,
    num_iters: int = 80,
    num_probes: int = 4,
    seed: int = 0,
    *,
    init: str | torch.Tensor = "rademacher",
    ritz_vectors: bool = False,
    basis_dtype: torch.dtype | None = None,
    basis_device: torch.device | str | None = None,
    memory_budget: float | None = None,
    reorthogonalize: str = "full",
    zero_tol: float = 1e-8,
    outlier_tol: float = 1e-3,
    outlier_gap: float = 0.05,
    keep_graphs: bool | None = None,
    progress: Any = None,
    cancel: Any = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature with ``num_probes`` probes run as one batched Lanczos.

    Args:
        op: a curvature operator or a symmetric square tensor.
        num_iters: Lanczos steps per probe (default 80: Ghorbani et al. 2019 found 80-90
            "certainly enough"); capped at ``n``. With ``num_iters = n`` the Ritz values are
            the exact eigenvalues.
        num_probes: start vectors (default 4); all share each operator pass.
        seed: seeds the probes.
        init: ``"rademacher"`` (default), ``"gaussian"`` or an ``(n, num_probes)`` tensor.
        ritz_vectors: also return the ``(p, n, m)`` Ritz vectors (memory: ``p m n`` numbers).
        basis_dtype, basis_device: dtype/device of the Lanczos vectors; ``None``: float64 on
            the operator's device, or what ``memory_budget`` allows.
        memory_budget: bytes the Lanczos vectors may take on the operator's device, or
            ``None``: the memory free there now (a float64 basis that does not fit is
            replaced by a float32 one, with a :class:`~.memory.MemoryWarning`, and a run
            that fits in no mode is refused before any product; an explicit
            ``basis_dtype``/``basis_device`` is kept, with the warning). The most accurate
            basis that fits is chosen by the memory
            model of :mod:`.memory` (``docs/scale.md``): float64, then float32 (float64
            accumulation), then, for a GPU operator, the same in pinned CPU memory. A
            ``basis_dtype``/``basis_device`` given explicitly is kept and checked.
        reorthogonalize: ``"full"`` (default): every Lanczos vector is reorthogonalised
            against the stored basis (``b p n m`` bytes); ``"none"``: the three-term
            recurrence with no stored basis (``b p n W`` bytes, ``W`` = 10 working blocks,
            whatever ``m``): converged Ritz values get ghost copies that split their weight,
            the moments ``sum tau theta^j`` (``j < 2m``) and the smoothed density do not
            change (Golub & Meurant 2010; Ubaru, Chen & Saad 2017). For the largest models.
        zero_tol: Ritz values with ``|theta| <= zero_tol * scale`` count as zero in the stats.
        outlier_tol: relative residual under which a Ritz value counts as converged.
        outlier_gap: a gap wider than ``outlier_gap * scale`` separates outliers from the bulk
            (default 5% of the spectral norm).
        keep_graphs: for a ``HessianOperator``, keep each batch's gradient graph across the
            steps, so each block product costs only the second backward (one graph serves
            all probes). ``None`` (default): when the graphs fit in half the free memory;
            ``True``: always; ``False``: never (see :func:`~.lanczos.lanczos`).
        progress: ``True`` (a ``tqdm.auto`` bar), or a callable receiving a
            :class:`~jupyter_curvature.core.progress.ProgressEvent` before each step (phase
            ``"density"``, step ``j`` of ``num_iters``; its ``partial`` is the density of the
            ``j`` steps done), or a parent ``Progress``.
        cancel: a :class:`~jupyter_curvature.core.progress.CancelToken` (or
            ``threading.Event``), checked before each block product. Once set, the run stops
            and returns the ``j`` steps done with ``cancelled=True``: the Ritz values and
            weights of ``T_j``, which are those of a run with ``num_iters = j`` (the Lanczos
            recurrence does not depend on the number of steps asked for).

    Raises:
        ValueError: ``num_iters < 1``, ``num_probes < 1``, a non-symmetric operator, a
            ``memory_budget`` that cannot hold the basis (the message lists the modes that
            fit and the bytes each needs).
        FloatingPointError: a product contained NaN (the loss or the model produced NaN).
        Cancelled: cancelled before the first product.
    """
    A = Operator(op, keep_graphs=keep_graphs, sharded=True)
    num_iters = check_int("num_iters", num_iters, 1)
    num_probes = check_int("num_probes", num_probes, 1)
    seed = check_seed(seed)
    reorthogonalize = check_reorthogonalize(reorthogonalize)
    if ritz_vectors and reorthogonalize == "none":
        raise ValueError('ritz_vectors=True needs the stored basis of reorthogonalize="full"')
    mode = density_basis(A, num_iters, num_probes, basis_dtype=basis_dtype,
                         basis_device=basis_device, memory_budget=memory_budget,
                         reorthogonalize=reorthogonalize)  # fmt: skip
    zero_tol = check_positive("zero_tol", zero_tol)
    outlier_tol = check_positive("outlier_tol", outlier_tol)
    outlier_gap = check_positive("outlier_gap", outlier_gap)
    tracker = Progress.of(progress, cancel, "density", min(num_iters, A.n))
    stopped: list[int] = []
    tolerances = {"zero_tol": zero_tol, "outlier_tol": outlier_tol, "outlier_gap": outlier_gap}

    def partial(rec: Any, j: int) -> SpectralDensity:
        # T_j and beta_j of the steps done: what a cancellation now would return
        T, beta = tridiagonal(rec) * rec.scale, rec.next_beta * rec.scale
        theta, weights, residuals, _ = diagonalise(T, beta)
        return SpectralDensity(
            theta.cpu(), weights.cpu(), residuals.cpu(), A.n, num_iters, j, A.num_matvecs,
            int(seed), False, 0.0, 0.0, None, **tolerances,
        )  # fmt: skip

    def on_step(rec: Any, j: int) -> None:
        # the record grows in place: the partial is computed (later, if read) from a copy
        frozen = dataclasses.replace(rec, alphas=list(rec.alphas), betas=list(rec.betas))
        snapshot = (lambda: partial(frozen, j)) if j else None
        if tracker.step(j, A.num_matvecs, snapshot):
            stopped.append(j)
            raise _Stop(breakdown=False)

    with A:
        res = run_lanczos(
            A,
            num_iters,
            num_probes,
            seed,
            init=init,
            basis_dtype=mode.dtype,
            basis_device=mode.device,
            keep_basis=ritz_vectors,
            on_step=on_step if tracker.callback is not None or cancel is not None else None,
            reorthogonalize=reorthogonalize,
        )
    vecs = None
    if ritz_vectors:
        vecs = res.basis @ res.tridiagonal_vectors.to(res.basis)
    result = SpectralDensity(
        ritz_values=res.ritz_values.cpu(),
        weights=res.ritz_weights.cpu(),
        residuals=res.ritz_residuals.cpu(),
        n=A.n,
        num_iters=num_iters,
        num_steps=res.num_steps,
        num_matvecs=res.num_matvecs,
        seed=int(seed),
        breakdown=res.breakdown,
        seconds=res.seconds,
        product_seconds=res.product_seconds,
        ritz_vectors=vecs,
        **tolerances,
        cancelled=bool(stopped),
        basis=mode.to_dict(pinned=res.pinned),
    )
    tracker.finish(res.num_matvecs, lambda: result, step=res.num_steps)
    return result


def density_basis(
    op: Any,
    num_iters: int = 80,
    num_probes: int = 4,
    *,
    basis_dtype: torch.dtype | None = None,
    basis_device: torch.device | str | None = None,
    memory_budget: float | str | None = None,
    reorthogonalize: str = "full",
) -> BasisMode:
    """The basis mode :func:`spectral_density` would use with these settings, without a product.

    Lets a caller check a ``memory_budget`` before any work (the spectrum task does).

    Raises:
        ValueError: as :func:`spectral_density` for a budget that holds no allowed mode.
    """
    A = op if isinstance(op, Operator) else Operator(op)
    num_iters = check_int("num_iters", num_iters, 1)
    num_probes = check_int("num_probes", num_probes, 1)
    return choose_basis(
        lambda dt, how: density_bytes(
            A.n, num_iters, num_probes, dt, how, A.dtype, A.space.world_size
        ),
        A.device,
        check_budget(memory_budget),
        basis_dtype,
        basis_device,
        check_reorthogonalize(reorthogonalize),
        working=A.n * num_probes * A.dtype.itemsize,
    )
