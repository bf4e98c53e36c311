"""``%%curv_train``: train a model with a live dashboard (loss, accuracy, spectral density,
largest eigenvalues against ``2 / lr``, statistics, events); the cell body, if any, is the
training step.

Training runs in the kernel's main thread on the engine's
:class:`~jupyter_curvature.training.Trainer` (through :func:`jupyter_curvature.tasks.train`)
and stops cleanly at a step boundary on an interrupt; what it reached is stored in ``--out``
even when training fails.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from .. import tasks
from ..cell_step import CellBodyError, cell_step, point_at_user_code
from .arguments import (
    TRAIN_KEYWORDS,
    check_out,
    curvature_flags,
    deprecated,
    keywords,
    loss_flags,
    non_negative,
    parse_line,
    positive,
    seed_flag,
    seeded_model,
    usage_errors,
)

__all__ = ["curv_train"]


@magic_arguments()
@argument("--model", required=True, help="model variable (nn.Module) or registry name, e.g. mlp")
@argument(
    "--data", required=True, help="training DataLoader variable or built-in name, e.g. digits"
)
@argument("--test-data", default=None, help="test data (default: the test split of a built-in set)")
@argument(
    "--optimizer",
    default="sgd",
    help="optimiser variable, or sgd | adam | adamw | kfac | swats",
)
@argument("--lr", type=positive(float), default=None, help="learning rate (sgd 0.1, adam 1e-3)")
@argument(
    "--momentum", type=non_negative(float), default=0.0, help="SGD or K-FAC momentum (default 0)"
)
@argument("--weight-decay", type=non_negative(float), default=0.0, help="weight decay (default 0)")
@argument("--epochs", type=positive(int), default=None, help="epochs (default 1)")
@argument(
    "--steps",
    type=positive(int),
    default=None,
    help="optimisation steps (instead of --epochs)",
)
@argument(
    "--schedule",
    choices=["linear", "constant"],
    default=None,
    help="learning-rate schedule (default: linear with a registry model and dataset, else none)",
)
@argument("--batch-size", type=positive(int), default=64, help="batch size of built-in data (64)")
@loss_flags
@argument(
    "--spectrum-every", type=int, default=0, help="curvature spectrum every N steps (0: never)"
)
@curvature_flags
@argument("--num-iters", type=positive(int), default=30, help="Lanczos steps per spectrum (30)")
@deprecated("--iters", "--num-iters", type=positive(int))
@argument("--num-probes", type=positive(int), default=2, help="SLQ probes per spectrum (2)")
@deprecated("--probes", "--num-probes", type=positive(int))
@argument("--top-k", type=positive(int), default=3, help="largest eigenvalues tracked (3)")
@deprecated("--top", "--top-k", type=positive(int))
@argument(
    "--spectrum-samples",
    type=positive(int),
    default=256,
    help="training samples the curvature uses (256)",
)
@argument("--eval-every", type=positive(int), default=None, help="test evaluation every N steps")
@argument("--device", default=None, help="cpu | cuda | cuda:N (moves the model)")
@seed_flag
@argument(
    "--tensorboard",
    default=None,
    metavar="DIR",
    help="write TensorBoard event files (metrics and curvature checks) to DIR",
)
@argument(
    "--max-overhead",
    type=positive(float),
    default=None,
    help="skip a due spectrum when spectra would exceed this share of the training time",
)
@argument(
    "--checkpoint-dir",
    default=None,
    help="write the trainer's atomic checkpoints (exact resume) to this folder",
)
@argument(
    "--checkpoint-every",
    type=positive(int),
    default=None,
    help="steps between checkpoints (besides each epoch's end)",
)
@argument(
    "--resume",
    action="store_true",
    help="continue from checkpoint-last.pt in --checkpoint-dir (if there is one)",
)
@argument(
    "--out",
    default=None,
    help="store the TrainResult (model, optimizer, history) in this variable",
)
def curv_train(magics: Any, line: str, cell: str | None = None) -> Any:
    """Train a model with a live dashboard; the cell body (optional) is the training step."""
    name = "curv_train"
    args = parse_line(magics.curv_train, line, name)
    check_out(name, args.out)
    kwargs = keywords(args, name, TRAIN_KEYWORDS)
    if args.epochs is not None and args.steps is not None:
        raise UsageError("%curv_train: give --epochs or --steps, not both")
    if args.spectrum_every < 0:
        raise UsageError("%curv_train: --spectrum-every must be >= 0")
    if args.resume and args.checkpoint_dir is None:
        raise UsageError("%curv_train: --resume needs --checkpoint-dir")
    # the model now (the dashboard's title); data, loss and optimiser in the task
    model = seeded_model(kwargs.pop("model"), magics.ns, args.seed, name)
    step_fn, restore = (None, None)
    if cell is not None and cell.strip():
        try:
            step_fn, restore = cell_step(magics.shell, cell, line)
        except CellBodyError as exc:
            raise UsageError(f"%{name}: {exc}") from None
    progress = _progress(magics, model, line)
    recorder = tasks.StateRecorder()
    try:
        result = tasks.train(
            model, step_fn=step_fn, callbacks=[recorder, progress],
            resume=args.resume or None, namespace=magics.ns, **kwargs,
        )  # fmt: skip
    except BaseException as exc:
        _failed(magics, args.out, recorder.result(), progress, exc, step_fn, name)
        raise
    finally:
        if restore is not None:
            restore()
    magics._store(args.out, result)
    magics.last_result = result
    if magics.use_widgets:
        magics._publish_static(progress)
    if result.status == "interrupted":
        print(
            f"interrupted at step {result.trainer.step}; the model, the optimizer"
            + (f" and the history (in {args.out})" if args.out else " and the history")
            + " are kept"
        )
    return None


def _failed(
    magics: Any, out: str | None, partial: Any, progress: Any, exc: BaseException,
    step_fn: Any, name: str,
) -> None:  # fmt: skip
    """After a failed ``tasks.train``: keep what training reached, or raise a UsageError.

    A failure before the first step (a bad setting) stores nothing, so ``--out`` keeps its
    old value, and closes the empty dashboard; once training began, the partial result goes
    to ``--out``. An error of the cell body points at the user's line.
    """
    from_body = step_fn is not None and _raised_in(exc, step_fn.filename)
    if partial is None and not from_body and magics.use_widgets:
        progress.close()  # nothing to show: no empty "waiting" dashboard is left behind
    if partial is not None:
        magics._store(out, partial)
    if isinstance(exc, CellBodyError):
        raise UsageError(f"%{name}: {exc}") from None
    refused = isinstance(exc, (ValueError, TypeError)) and not from_body and partial is None
    if isinstance(exc, tasks.InputError) or refused:
        with usage_errors(name):  # a setting the tasks or the engine refused: one line
            raise exc
    if isinstance(exc, Exception):
        point_at_user_code(magics.shell, exc, getattr(step_fn, "filename", None))


def _raised_in(exc: BaseException, filename: str) -> bool:
    """Whether ``exc``'s traceback passes through the file ``filename`` (the cell body)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            return True
        tb = tb.tb_next
    return False


def _progress(magics: Any, model: Any, line: str) -> Any:
    """What the training reports to: a dashboard, shown now, or (without widgets) a tqdm bar."""
    if magics.use_widgets:
        from ..widgets.dashboard import TrainingDashboard

        dashboard = TrainingDashboard(f"Training {type(model).__name__}", interval=magics.interval)
        magics._show(dashboard, f"train {line}")
        return dashboard
    from ..training import ProgressBar

    return ProgressBar()
