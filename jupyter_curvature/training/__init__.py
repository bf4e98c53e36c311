"""Training: the :class:`Trainer` (epochs or steps, schedules, evaluation, history, atomic
checkpoints, exact resume, clean interruption), callbacks with live curvature spectra, and
:func:`named_trainer`, a trainer built from names (the train task,
:func:`jupyter_curvature.train`, runs it; :func:`train` is its deprecated one-call form).

Modules: :mod:`.trainer` (the loop), :mod:`.history` (the one :class:`History` record),
:mod:`.callbacks` (the one callback protocol), :mod:`.options` (:class:`DataOptions`,
:class:`CheckpointOptions`, :class:`DistributedOptions`), :mod:`.data_order` (the seeded,
resumable data order), :mod:`.atomic_step` (a step completes or is undone; Ctrl-C),
:mod:`.checkpoint` (files and the trainer's checkpoint state), :mod:`.ddp` (DDP set-up and
collectives), :mod:`.from_names` (:func:`named_trainer`).
"""

from .atomic_step import AtomicStep, InterruptGuard
from .budget import CheckBudget, CheckPlan
from .callbacks import (
    HOOKS,
    Callback,
    CurvatureCallback,
    EvaluationCallback,
    LambdaCallback,
    ProgressBar,
    default_compute,
    summarize,
    tracked_check,
)
from .checkpoint import (
    CheckpointMismatchError,
    atomic_save,
    check_state_fits,
    load_checkpoint,
    load_model_weights,
    model_state_from,
)
from .data_order import DataOrder, epoch_seed
from .from_names import DEFAULT_LR, named_trainer, train
from .history import History, describe_event
from .options import CheckpointOptions, DataOptions, DistributedOptions
from .trainer import Trainer
from .view import training_view

__all__ = [
    "DEFAULT_LR",
    "HOOKS",
    "AtomicStep",
    "Callback",
    "CheckpointMismatchError",
    "CheckpointOptions",
    "CurvatureCallback",
    "DataOptions",
    "DataOrder",
    "DistributedOptions",
    "EvaluationCallback",
    "History",
    "InterruptGuard",
    "LambdaCallback",
    "ProgressBar",
    "Trainer",
    "atomic_save",
    "check_state_fits",
    "default_compute",
    "tracked_check",
    "CheckBudget",
    "CheckPlan",
    "describe_event",
    "epoch_seed",
    "load_checkpoint",
    "load_model_weights",
    "model_state_from",
    "named_trainer",
    "summarize",
    "train",
    "training_view",
]
