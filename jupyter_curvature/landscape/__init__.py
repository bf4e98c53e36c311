"""Loss landscapes along curvature eigenvectors and other directions.

>>> import jupyter_curvature as jc                                          # doctest: +SKIP
>>> dirs = jc.landscape.eigen_directions(jc.eigenpairs(H, k=8), model=model)  # doctest: +SKIP
>>> line = jc.landscape_1d(model, loss_fn, train, dirs, test_data=test)      # doctest: +SKIP
>>> line.plot()                                                             # doctest: +SKIP

See ``docs/landscape.md``.
"""

from ..plotting import plot_landscape_1d, plot_landscape_2d, plot_landscape_surface  # re-exported
from ._data import NestedSubsamples, subsample_data
from .direction_specs import DirectionSpec, parse_direction_spec
from .directions import (
    ORIGINAL_POSITIONS,
    Direction,
    Directions,
    as_directions,
    checkpoint_directions,
    eigen_directions,
    filter_normalize,
    original_selection,
    random_directions,
    user_directions,
)
from .evaluator import BN_MODES, LandscapeEvaluator
from .explorer import HeadlessExplorer
from .grid import (
    LandscapeProgress,
    axis_levels,
    iter_landscape_1d,
    iter_landscape_2d,
    landscape_1d,
    landscape_2d,
)
from .perturb import Perturber, perturbed
from .results import Landscape1D, Landscape2D, LandscapeResult

__all__ = [
    "BN_MODES",
    "ORIGINAL_POSITIONS",
    "Direction",
    "DirectionSpec",
    "Directions",
    "HeadlessExplorer",
    "Landscape1D",
    "Landscape2D",
    "LandscapeEvaluator",
    "LandscapeProgress",
    "LandscapeResult",
    "NestedSubsamples",
    "Perturber",
    "as_directions",
    "axis_levels",
    "checkpoint_directions",
    "eigen_directions",
    "filter_normalize",
    "iter_landscape_1d",
    "iter_landscape_2d",
    "landscape_1d",
    "landscape_2d",
    "original_selection",
    "parse_direction_spec",
    "perturbed",
    "plot_landscape_1d",
    "plot_landscape_2d",
    "plot_landscape_surface",
    "random_directions",
    "subsample_data",
    "user_directions",
]
