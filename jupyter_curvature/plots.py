"""Deprecated: the figures live in :mod:`jupyter_curvature.plotting` (one function per figure).

``jupyter_curvature.plots`` stays one release as an alias of that package: importing it
warns, and every name it had resolves to the same function in ``plotting``.
"""

from __future__ import annotations

import warnings

from .plotting import *  # noqa: F403 (the alias re-exports the package)
from .plotting import __all__  # noqa: F401

warnings.warn(
    "jupyter_curvature.plots is deprecated; use jupyter_curvature.plotting "
    "(plot_spectrum, plot_training, plot_stats, plot_landscape_*)",
    DeprecationWarning,
    stacklevel=2,
)
