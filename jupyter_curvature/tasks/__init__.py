"""The tasks: one layer behind every front end (the ``%curv_*`` magics, the
``jupyter-curvature`` CLI, plain Python).

Each task takes objects or names (:mod:`.names`), runs the engine and returns a result with
``.to_dict()`` (JSON-ready; written through :func:`jupyter_curvature.core.records.write_json`,
so NaN becomes ``null``), ``.save(folder)`` and ``.plot()``::

    from jupyter_curvature import tasks
    run = tasks.train("mlp", "digits", steps=50, spectrum_every=25)
    spec = tasks.spectrum(run.model, "digits", curvature="ggn", top_k=3)
    spec.save("out")

Settings use the names of ``docs/vocabulary.md``; the old ones (``ggn=True``, ``iters``,
``probes``, ``top``, ``subsample`` ...) still work for one release and warn.

* :func:`train` (:mod:`.train`): the engine's :class:`~jupyter_curvature.training.Trainer`,
  with live spectra and test evaluations as its callbacks (the dashboard is one more).
* :func:`spectrum`: SLQ spectral density and certified top eigenpairs.
* :func:`statistics`: evaluation, gradient, curvature, norm and per-layer statistics.
* :func:`landscape`: loss lines and planes along eigen- or random directions.
* :func:`report`: all of them on the built-in digits (``jupyter-curvature demo``);
  :func:`text_report`: a small GPT on the standard library's sources, per block
  (``jupyter-curvature demo --task text``).
"""

from ..core.vocabulary import ALIASES
from .landscape import LandscapeTaskResult, landscape
from .names import (
    DATASETS,
    LOSSES,
    MISSING,
    OPTIMIZERS,
    InputError,
    Setup,
    lookup,
    resolve_data,
    resolve_device,
    resolve_loss,
    resolve_model,
    resolve_optimizer,
    resolve_setup,
    resolve_test_data,
)
from .report import Report, report
from .spectrum import (
    BASIS_DTYPES,
    CURVATURES,
    SpectrumResult,
    basis_options,
    make_operator,
    spectrum,
)
from .stats import STATS_KINDS, StatsResult, statistics
from .text_report import text_report
from .train import StateRecorder, TrainResult, train

__all__ = [
    "ALIASES",
    "BASIS_DTYPES",
    "CURVATURES",
    "DATASETS",
    "LOSSES",
    "MISSING",
    "OPTIMIZERS",
    "STATS_KINDS",
    "InputError",
    "LandscapeTaskResult",
    "Report",
    "Setup",
    "SpectrumResult",
    "StateRecorder",
    "StatsResult",
    "TrainResult",
    "basis_options",
    "landscape",
    "lookup",
    "make_operator",
    "report",
    "text_report",
    "resolve_data",
    "resolve_device",
    "resolve_loss",
    "resolve_model",
    "resolve_optimizer",
    "resolve_setup",
    "resolve_test_data",
    "spectrum",
    "statistics",
    "train",
]
