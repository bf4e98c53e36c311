"""Every static matplotlib figure of the package, one function per figure.

- :func:`plot_spectrum`: a spectral density with its band across probes, the Ritz values
  as stems and certified eigenvalues as lines (:func:`plot_spectral_density` is the CLI's
  call of it: a log axis, returning the axes);
- :func:`plot_training`: loss and accuracy of a training run, with the curvature seen
  while training when recorded (:func:`plot_training_history` is the CLI's call of it);
- :func:`plot_stats`: the per-layer statistics as bar charts (:func:`layer_quantities`
  gives their numbers);
- :func:`plot_block_spectra`, :func:`plot_minibatch_top_eigenvalues`: per-block spectra
  and the histogram of mini-batch top eigenvalues;
- :func:`plot_landscape_1d`, :func:`plot_landscape_2d`, :func:`plot_landscape_surface`,
  :func:`plot_landscape_overview`: loss landscapes along lines and over planes.

Results draw themselves through these (``result.plot()``). This package is part of the
engine: it imports matplotlib (when a function is called) and numpy, never a Jupyter
package, and takes results by their attributes, not their classes. The widgets'
``to_matplotlib()`` use the same functions.
"""

from ._figures import curvature_label, format_count
from .blocks import plot_block_spectra, plot_minibatch_top_eigenvalues
from .landscape import (
    plot_landscape_1d,
    plot_landscape_2d,
    plot_landscape_overview,
    plot_landscape_surface,
)
from .spectrum import plot_spectral_density, plot_spectrum
from .stats import layer_quantities, plot_stats
from .training import plot_training, plot_training_history

__all__ = [
    "curvature_label",
    "format_count",
    "layer_quantities",
    "plot_block_spectra",
    "plot_landscape_1d",
    "plot_landscape_2d",
    "plot_landscape_overview",
    "plot_landscape_surface",
    "plot_minibatch_top_eigenvalues",
    "plot_spectral_density",
    "plot_spectrum",
    "plot_stats",
    "plot_training",
    "plot_training_history",
]
