"""Training: the :class:`Trainer` (epochs or steps, schedules, evaluation, history, atomic
checkpoints, exact resume, clean interruption), callbacks with live curvature spectra, and
:func:`train`, one call from names to a trained model (the CLI's ``train``)."""

from .callbacks import (
    HOOKS,
    Callback,
    CurvatureCallback,
    LambdaCallback,
    ProgressBar,
    default_compute,
    describe_event,
    summarize,
)
from .checkpoint import (
    CheckpointMismatchError,
    atomic_save,
    check_state_fits,
    load_checkpoint,
    load_model_weights,
    model_state_from,
)
from .trainer import DEFAULT_LR, History, Trainer, train

__all__ = [
    "DEFAULT_LR",
    "HOOKS",
    "Callback",
    "CheckpointMismatchError",
    "CurvatureCallback",
    "History",
    "LambdaCallback",
    "ProgressBar",
    "Trainer",
    "atomic_save",
    "check_state_fits",
    "default_compute",
    "describe_event",
    "load_checkpoint",
    "load_model_weights",
    "model_state_from",
    "summarize",
    "train",
]
