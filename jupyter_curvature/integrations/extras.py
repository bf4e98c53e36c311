"""The optional packages of the integrations, imported only when used."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["require"]

_EXTRAS = {
    "lightning": "lightning",
    "pytorch_lightning": "lightning",
    "transformers": "hf",
    "tensorboard": "tensorboard",
    "wandb": "wandb",
}


def require(module: str) -> Any:
    """Import ``module`` or raise a one-line ``ImportError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRAS.get(top, top)
        raise ImportError(
            f'this needs the {top!r} package: pip install "jupyter_curvature[{extra}]"'
        ) from exc
