"""Spectra of curvature operators on GPyTorch's Lanczos.

* :func:`lanczos`: batched Lanczos with full reorthogonalisation (GPyTorch's
  ``lanczos_tridiag``), safe for indefinite operators, float64 basis, breakdown handled.
* :func:`eigenpairs`: extreme eigenpairs, each certified by its residual ``||A v - lambda v||``.
* :func:`warm_eigenpairs`: the same, started from earlier eigenvectors (tracking in training).
* :func:`spectral_density`: stochastic Lanczos quadrature, density with a band, statistics.
* :func:`trace`: Hutchinson and Hutch++ with a standard error.
"""

from .density import DensityCurve, SpectralDensity, SpectrumStats, spectral_density
from .eigenpairs import ConvergenceWarning, EigenpairsResult, eigenpairs
from .lanczos import LanczosResult, lanczos
from .trace import TraceEstimate, trace
from .tracking import warm_eigenpairs

__all__ = [
    "ConvergenceWarning",
    "DensityCurve",
    "EigenpairsResult",
    "LanczosResult",
    "SpectralDensity",
    "SpectrumStats",
    "TraceEstimate",
    "eigenpairs",
    "lanczos",
    "spectral_density",
    "trace",
    "warm_eigenpairs",
]
