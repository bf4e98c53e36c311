"""Spectra of curvature operators on GPyTorch's Lanczos.

* :func:`lanczos`: batched Lanczos with full reorthogonalisation (GPyTorch's
  ``lanczos_tridiag``), safe for indefinite operators, float64 basis, breakdown handled.
* :func:`eigenpairs`: extreme eigenpairs, each certified by its residual ``||A v - lambda v||``.
* :func:`warm_eigenpairs`: the same, started from earlier eigenvectors (tracking in training).
* :func:`spectral_density`: stochastic Lanczos quadrature, density with a band, statistics.
* :func:`trace`: Hutchinson and Hutch++ with a standard error.
* :func:`diagonal`: the diagonal by Hutchinson or Diag++, each entry with a standard error.
* :func:`block_spectra`: top eigenvalue, trace and density of every block of a model, the
  blocks' Lanczos runs sharing each pass over the data.
* :func:`minibatch_top_eigenvalues`: the top eigenvalue of each mini-batch's Hessian.
"""

from ._checks import reachable_tol
from .blocks import BlockSpectra, BlockSpectrum, block_spectra
from .density import DensityCurve, SpectralDensity, SpectrumStats, spectral_density
from .diagonal import DiagonalEstimate, diagonal
from .eigenpairs import ConvergenceWarning, EigenpairsResult, eigenpairs
from .lanczos import LanczosResult, lanczos
from .minibatch import MinibatchEigenvalues, minibatch_top_eigenvalues
from .trace import TraceEstimate, trace
from .tracking import warm_eigenpairs

__all__ = [
    "BlockSpectra",
    "BlockSpectrum",
    "DiagonalEstimate",
    "MinibatchEigenvalues",
    "block_spectra",
    "diagonal",
    "minibatch_top_eigenvalues",
    "ConvergenceWarning",
    "DensityCurve",
    "EigenpairsResult",
    "LanczosResult",
    "SpectralDensity",
    "SpectrumStats",
    "TraceEstimate",
    "eigenpairs",
    "lanczos",
    "reachable_tol",
    "spectral_density",
    "trace",
    "warm_eigenpairs",
]
