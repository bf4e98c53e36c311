"""Curvature tracked from the training loops people use, logged where they look.

- :func:`track` / :class:`Tracker`: a plain loop (``tracker.step()`` after each optimiser
  step);
- :mod:`jupyter_curvature.integrations.lightning`: a PyTorch Lightning callback
  (``pip install "jupyter_curvature[lightning]"``);
- :mod:`jupyter_curvature.integrations.huggingface`: a ``transformers.TrainerCallback``
  (``[hf]``);
- :class:`TensorBoardLogger` (``[tensorboard]``) and :class:`WandbLogger` (``[wandb]``);
- :class:`LoggingCallback` / :func:`tensorboard_callback`: the package's own ``Trainer``
  logged to them (the CLI's ``train --tensorboard DIR``);
- :func:`tiny_gpt` / :class:`CausalLM`: a small GPT-2 built from a ``transformers`` config
  for the offline text task (``[hf]``);
- :func:`curvature_check`: the one check they all run (certified top-k eigenpairs, SLQ
  density, trace, ``lambda_max`` against ``2/lr``).

This package imports none of Lightning, transformers, TensorBoard or W&B itself: each is
imported when its callback or logger is used (``LightningCurvatureCallback`` and
``HFCurvatureCallback`` below are resolved on first access), and a missing one raises a
one-line ``ImportError`` naming the extra to install. See ``docs/integrations.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .checks import CheckResult, curvature_check, fixed_batches, pick_logits
from .loggers import TensorBoardLogger, WandbLogger
from .text_model import CausalLM, tiny_gpt
from .tracker import Tracker, track
from .trainer_logging import LoggingCallback, tensorboard_callback

_LAZY = {
    "LightningCurvatureCallback": (".lightning", "CurvatureCallback"),
    "HFCurvatureCallback": (".huggingface", "CurvatureCallback"),
}

__all__ = [
    "CausalLM",
    "CheckResult",
    "HFCurvatureCallback",
    "LightningCurvatureCallback",
    "LoggingCallback",
    "TensorBoardLogger",
    "Tracker",
    "WandbLogger",
    "curvature_check",
    "fixed_batches",
    "pick_logits",
    "tensorboard_callback",
    "tiny_gpt",
    "track",
]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(
            f"module 'jupyter_curvature.integrations' has no attribute {name!r}"
        ) from None
    return getattr(importlib.import_module(module, __name__), attr)
