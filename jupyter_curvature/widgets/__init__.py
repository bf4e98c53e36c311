"""Jupyter panels (ipywidgets 8 + bqplot) for curvature spectra, statistics and training.

Usable without the magics::

    from jupyter_curvature import tasks
    from jupyter_curvature.widgets import SpectrumPanel, StatsPanel, TrainingDashboard

    SpectrumPanel(tasks.spectrum(model, data, top_k=5))       # a density with controls
    dash = TrainingDashboard(); display(dash)
    tasks.train(model, data, callbacks=[dash], spectrum_every=20)

Every panel owns its widgets and closes them all with ``panel.close()``; every panel has a
``to_matplotlib()`` (drawn by :mod:`jupyter_curvature.plotting`) for a static figure. This subpackage is the
only place (with :mod:`jupyter_curvature.magics`) that imports ipywidgets or bqplot.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Panel": "._base",
    "Throttle": "._base",
    "TrainingDashboard": ".dashboard",
    "CheckFeed": ".feed",
    "ProgressPanel": ".progress",
    "SpectrumPanel": ".spectrum",
    "StatsPanel": ".stats",
    "LandscapeExplorer": ".landscape",
    "LandscapeCanvas": ".landscape_canvas",
    # the static figures live in the engine (jupyter_curvature.plotting); re-exported here
    "plot_training": "..plotting",
    "plot_spectrum": "..plotting",
    "plot_stats": "..plotting",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(
            f"module 'jupyter_curvature.widgets' has no attribute {name!r}"
        ) from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
