"""The record of :func:`~jupyter_curvature.spectral.eigenpairs`: certified pairs, how they
were found, and a lossless ``.npz`` form; and the warning for a budget that ended first."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.files import atomic_savez


class ConvergenceWarning(UserWarning):
    """The budget ended before every requested eigenpair met the tolerance."""


@dataclass
class EigenpairsResult:
    """Extreme eigenpairs of a symmetric operator, each certified by its residual.

    Attributes:
        eigenvalues: ``(k,)`` float64; descending for ``"LA"``/``"LM"`` (by magnitude for
            ``"LM"``), ascending for ``"SA"``.
        eigenvectors: ``(n, k)`` unit columns, in the operator's dtype and on its device;
            with a sharded basis (``shard_basis=True``) this rank's rows ``(n_r, k)``,
            gathered by :func:`~jupyter_curvature.distributed.gather_rows`.
        residuals: ``(k,)`` float64, ``||A v - lambda v||`` recomputed from true products
            (stored ones, or a final product with ``verify="product"``; the Lanczos estimate
            ``|beta_m s[m-1]|`` with ``verify="estimate"``).
        residual_estimates: ``(k,)`` the Lanczos estimates, for comparison.
        pair_converged: ``(k,)`` bool, ``residual <= tol * scale`` for each pair.
        converged: True when every pair converged.
        scale: the spectral scale the tolerance is relative to (largest ``|Ritz value|``).
        tol: the relative tolerance asked for.
        which: ``"LA"``, ``"SA"`` or ``"LM"``.
        num_matvecs: operator products (with ``verify="product"`` including the final ``k``).
        iterations: Lanczos steps over all restarts.
        restarts: thick restarts (the basis was full), plus the runs in the orthogonal
            complement after a breakdown.
        seconds: wall time; ``product_seconds`` of it inside the operator.
        cancelled: the run was cancelled: the pairs are the current Ritz pairs, with true
            residuals, but never certified (``converged`` and ``pair_converged`` are False:
            the stopping rule's guard against missing an eigenvalue was not applied).
        basis: how the Lanczos vectors were held (:meth:`.memory.BasisMode.to_dict`: dtype,
            device, pinned, bytes, the budget), or ``None`` (a record saved before it was kept).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    residual_estimates: torch.Tensor
    pair_converged: torch.Tensor
    converged: bool
    scale: float
    tol: float
    which: str
    num_matvecs: int
    iterations: int
    restarts: int
    seconds: float
    product_seconds: float
    cancelled: bool = False
    basis: dict[str, Any] | None = None

    @property
    def k(self) -> int:
        return int(self.eigenvalues.numel())

    @property
    def relative_residuals(self) -> torch.Tensor:
        return self.residuals / self.scale if self.scale > 0 else self.residuals

    def __repr__(self) -> str:
        return self.describe()

    def describe(self, basis: bool = True) -> str:
        """The repr: the run and a table of the pairs; ``basis=False`` leaves out the Lanczos
        vectors' line (the CLI and the magic print one line for every run's basis instead)."""
        head = (
            f"EigenpairsResult(k={self.k}, which={self.which!r}, converged={self.converged}, "
            f"matvecs={self.num_matvecs}, iterations={self.iterations}, restarts={self.restarts}, "
            f"tol={self.tol:g} x scale {self.scale:.6g}"
            f"{', CANCELLED (partial)' if self.cancelled else ''})"
        )
        if basis and self.basis:
            head += f"\n  Lanczos vectors: {self.basis['description']}"
        rows = ["   #    eigenvalue        residual   rel. residual  converged"]
        rel = self.relative_residuals
        for i in range(self.k):
            rows.append(
                f"{i:4d} {float(self.eigenvalues[i]): .10e} {float(self.residuals[i]):12.3e}"
                f" {float(rel[i]):14.3e}  {bool(self.pair_converged[i])}"
            )
        return "\n".join([head, *rows])

    def to_dict(self, include_vectors: bool = False) -> dict[str, Any]:
        """Plain Python values (JSON-ready); vectors only on request (they are ``n x k``)."""
        out: dict[str, Any] = {
            "eigenvalues": self.eigenvalues.tolist(),
            "residuals": self.residuals.tolist(),
            "residual_estimates": self.residual_estimates.tolist(),
            "pair_converged": self.pair_converged.tolist(),
            "converged": self.converged,
            "scale": self.scale,
            "tol": self.tol,
            "which": self.which,
            "num_matvecs": self.num_matvecs,
            "iterations": self.iterations,
            "restarts": self.restarts,
            "seconds": self.seconds,
            "product_seconds": self.product_seconds,
            "cancelled": self.cancelled,
            "basis": self.basis,
        }
        if include_vectors:
            out["eigenvectors"] = self.eigenvectors.detach().cpu().tolist()
        return out

    def save(self, path: str | Path) -> Path:
        """Save losslessly to ``.npz`` (arrays exact, scalars in a JSON header)."""
        meta = self.to_dict()
        for key in ("eigenvalues", "residuals", "residual_estimates", "pair_converged"):
            meta.pop(key)
        meta["vector_dtype"] = str(self.eigenvectors.dtype).replace("torch.", "")
        return atomic_savez(
            path,
            eigenvalues=self.eigenvalues.cpu().numpy(),
            eigenvectors=self.eigenvectors.detach().cpu().numpy(),
            residuals=self.residuals.cpu().numpy(),
            residual_estimates=self.residual_estimates.cpu().numpy(),
            pair_converged=self.pair_converged.cpu().numpy(),
            meta=np.array(json.dumps(meta)),
        )

    @classmethod
    def load(cls, path: str | Path) -> EigenpairsResult:
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            meta.pop("vector_dtype")
            return cls(
                eigenvalues=torch.from_numpy(z["eigenvalues"]),
                eigenvectors=torch.from_numpy(z["eigenvectors"]),
                residuals=torch.from_numpy(z["residuals"]),
                residual_estimates=torch.from_numpy(z["residual_estimates"]),
                pair_converged=torch.from_numpy(z["pair_converged"]),
                **meta,
            )
