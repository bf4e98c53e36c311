"""jupyter_curvature: the curvature of neural networks, computed exactly and seen live in Jupyter.

The engine (operators, spectra, statistics, landscapes, models, data, optimisers,
training) never imports IPython, ipywidgets, bqplot, traitlets or anywidget; only
:mod:`jupyter_curvature.widgets` and :mod:`jupyter_curvature.magics` do, and they are
imported lazily, when a notebook asks for them (``%load_ext jupyter_curvature``).

Public names are resolved on first access, so ``import jupyter_curvature`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__  # noqa: F401 (public, listed in __all__)

# public name -> module that defines it (relative to this package)
_LAZY_EXPORTS: dict[str, str] = {
    # operators
    "CurvatureOperator": ".operators",
    "HessianOperator": ".operators",
    "GGNOperator": ".operators",
    "EmpiricalFisherOperator": ".operators",
    "BatchNormPolicy": ".operators",
    "BlockDiagonalOperator": ".operators",
    "as_operator": ".operators",
    "register_output_hessian": ".operators",
    "shared": ".operators",  # marks a batch_layout input shared by the whole batch
    "TokenCrossEntropy": ".operators",
    # spectra
    "lanczos": ".spectral",
    "eigenpairs": ".spectral",
    "warm_eigenpairs": ".spectral",
    "EigenpairsResult": ".spectral",
    "spectral_density": ".spectral",
    "SpectralDensity": ".spectral",
    "trace": ".spectral",
    "TraceEstimate": ".spectral",
    "diagonal": ".spectral",
    "DiagonalEstimate": ".spectral",
    "block_spectra": ".spectral",
    "BlockSpectra": ".spectral",
    "minibatch_top_eigenvalues": ".spectral",
    "MinibatchEigenvalues": ".spectral",
    # progress and cancellation of long calls
    "CancelToken": ".core.progress",
    "Cancelled": ".core.progress",
    "Progress": ".core.progress",
    "ProgressEvent": ".core.progress",
    # statistics
    "evaluate": ".stats",
    "bn_update": ".stats",
    "gradient_statistics": ".stats",
    "curvature_statistics": ".stats",
    "weight_norms": ".stats",
    "layer_curvature": ".stats",
    "network_statistics": ".stats",
    # landscape
    "perturbed": ".landscape",
    "Perturber": ".landscape",
    "landscape_1d": ".landscape",
    "landscape_2d": ".landscape",
    "HeadlessExplorer": ".landscape",
    # training and files
    "Trainer": ".training",
    "DiskFullError": ".core.files",
    "train": ".tasks",  # the train task: names or objects -> TrainResult
    "TrainResult": ".tasks",
    "History": ".training",
    "DataOptions": ".training",
    "CheckpointOptions": ".training",
    "DistributedOptions": ".training",
    # integrations (Lightning, Hugging Face, TensorBoard and W&B are imported only on use)
    "track": ".integrations",
    # subpackages
    "operators": ".operators",
    "spectral": ".spectral",
    "stats": ".stats",
    "landscape": ".landscape",
    "models": ".models",
    "data": ".data",
    "optim": ".optim",
    "training": ".training",
    "distributed": ".distributed",
    "integrations": ".integrations",
    "plotting": ".plotting",
    "plots": ".plots",  # deprecated alias of plotting
    "tasks": ".tasks",
    "widgets": ".widgets",
    "magics": ".magics",
}

_SUBPACKAGES = {
    "operators",
    "spectral",
    "stats",
    "landscape",
    "models",
    "data",
    "optim",
    "training",
    "distributed",
    "integrations",
    "plotting",
    "plots",
    "tasks",
    "widgets",
    "magics",
}

__all__ = sorted([*_LAZY_EXPORTS, "__version__"])


#: deprecated module names -> (module, message)
_DEPRECATED_MODULES: dict[str, tuple[str, str]] = {
    "api": (".tasks", "jupyter_curvature.api is deprecated; use jupyter_curvature.tasks"),
}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED_MODULES:
        import warnings

        module_name, message = _DEPRECATED_MODULES[name]
        warnings.warn(message, FutureWarning, stacklevel=2)
        return importlib.import_module(module_name, __name__)
    try:
        module_name = _LAZY_EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'jupyter_curvature' has no attribute {name!r}") from None
    module = importlib.import_module(module_name, __name__)
    value = module if name in _SUBPACKAGES else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%curv_*`` magics (``%load_ext jupyter_curvature``)."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics and close the panels they opened (``%unload_ext``)."""
    from .magics import unload_ipython_extension as _unload

    _unload(ipython)
