"""The trainer's collectives under ``DistributedDataParallel``: small, and the same on every rank.

Every function here is a collective (every rank calls it, in the same order) and a no-op
without a process group. They keep the ranks in lock step so that a mistake or a failure on
one rank becomes an error on every rank rather than a rank waiting forever:

* :func:`step_split`: this rank's slice of a global batch (``tensor_split``: sizes differ by
  at most one sample, the first ranks get the extra ones).
* :func:`reduce_step`: one all-reduce per step of ``[loss * W_r, W_r, b_r, correct, counted]``
  (``W_r`` the rank's weight in the loss's mean, ``b_r`` its samples) and
  one failure flag per rank, *before* the backward pass (whose gradient all-reduce would
  otherwise wait for a rank that failed in its forward pass).
* :func:`any_flags`: logical or of a few flags over the ranks (stop, interrupt, failure).
* :func:`broadcast_decision`, :func:`broadcast_object`: rank 0's choice for everyone.
* :func:`sync_buffers`: rank 0's buffers (BatchNorm running statistics) to every rank.
* :func:`check_same_settings`: the model's parameters and the settings that fix the number
  and order of collectives are the same on every rank.

and the trainer's set-up: :func:`wants_ddp` (whether to train under DDP) and
:func:`setup_ddp` (the checks every rank makes, then the ``DistributedDataParallel``
wrapper).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..core.distributed.context import get_rank, get_world_size, is_initialized
from ..core.distributed.primitives import DistributedMismatchError, check_signatures, gather_objects
from ..core.params import select_parameters


def active() -> bool:
    """A process group with more than one rank is initialised."""
    return is_initialized() and get_world_size() > 1


def step_split(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """``rank``'s part of one global batch's ``indices`` (contiguous, sizes within one)."""
    return indices.tensor_split(world_size)[rank]


def _flag_tensor(values: list[float], device: torch.device) -> torch.Tensor:
    # NCCL reduces CUDA tensors only; gloo reduces CPU ones
    on = device if device.type == "cuda" else torch.device("cpu")
    return torch.tensor(values, dtype=torch.float64, device=on)


def reduce_step(
    loss_sum: float,
    weight: float,
    samples: int,
    correct: int,
    counted: int,
    failed: bool,
    device: torch.device,
) -> tuple[float, int | float, int, int, int, list[int]]:
    """Sum one step's metrics over the ranks and name the ranks that failed.

    ``weight`` is the rank's weight in the loss's mean
    (:func:`~jupyter_curvature.core.losses.mean_weight`: samples, counted labels or summed
    class weights), ``loss_sum`` the rank's mean loss times it.

    Returns:
        ``(loss_sum, weight, samples, correct, counted, failed_ranks)`` summed over all
        ranks, the same on every rank (``weight`` an int when it sums to one: summed class
        weights stay floats). A failed rank passes zeros (its numbers are not used).
    """
    world = get_world_size()
    flags = [0.0] * world
    flags[get_rank()] = 1.0 if failed else 0.0
    packed = _flag_tensor([loss_sum, weight, samples, correct, counted, *flags], device)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    values = packed.cpu().tolist()
    failed_ranks = [r for r in range(world) if values[5 + r] > 0]
    total = values[1]
    total = round(total) if total == round(total) else total
    return values[0], total, round(values[2]), round(values[3]), round(values[4]), failed_ranks


def any_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag or-ed over the ranks (one all-reduce of ``len(flags)`` numbers)."""
    if not active():
        return list(flags)
    packed = _flag_tensor([1.0 if f else 0.0 for f in flags], device)
    dist.all_reduce(packed, op=dist.ReduceOp.MAX)
    return [v > 0 for v in packed.cpu().tolist()]


def broadcast_decision(decision: bool, device: torch.device) -> bool:
    """Rank 0's ``decision`` on every rank."""
    if not active():
        return decision
    packed = _flag_tensor([1.0 if decision else 0.0], device)
    dist.broadcast(packed, src=0)
    return bool(packed.item() > 0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's picklable ``obj`` on every rank (others pass anything, e.g. ``None``)."""
    if not active():
        return obj
    box = [obj if get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's floating and integer buffers to every rank (one broadcast per dtype).

    DDP broadcasts buffers at the start of each forward pass; after the last one every rank
    has updated its running statistics from its own samples. Syncing after each step makes
    the model every rank sees between steps (callbacks, evaluation, checkpoints) identical.
    """
    if not active():
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for b in model.buffers():
        by_dtype.setdefault(b.dtype, []).append(b)
    for group in by_dtype.values():
        flat = torch.cat([b.detach().reshape(-1) for b in group])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for b in group:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()


def check_same_settings(model: nn.Module, settings: dict[str, Any]) -> None:
    """Raise :class:`DistributedMismatchError` on every rank unless every rank has the same
    parameters (names, shapes, dtypes) and the same ``settings``.

    One ``all_gather_object``. The settings are those that fix how many collectives a run
    makes (steps per epoch, the plan, the live-curvature schedule) or what they mean (the
    dataset size, the global batch size, the seed of the data order): a difference would
    otherwise be a hang at the end of the shortest run or silently different batches.
    """
    if not active():
        return
    signature = [(n, tuple(p.shape), str(p.dtype)) for n, p in select_parameters(model, None)]
    gathered = gather_objects((signature, settings))
    check_signatures([sig for sig, _ in gathered])
    reference = gathered[0][1]
    problems = []
    for key, value in reference.items():
        values = [s.get(key) for _, s in gathered]
        if any(v != value for v in values):
            per_rank = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            problems.append(f"{key} ({per_rank})")
    if problems:
        raise DistributedMismatchError(
            "the ranks' trainers differ in " + "; ".join(problems) + ". Build the Trainer with "
            "the same data, batch_size, plan, seed and curvature callbacks on every rank"
        )


# --- the trainer's set-up ------------------------------------------------------------------------


def wants_ddp(enabled: bool | None, ddp_model: DDP | None) -> bool:
    """Whether the trainer trains under DDP: ``enabled`` is
    :attr:`~jupyter_curvature.training.DistributedOptions.enabled`, ``ddp_model`` the DDP
    module the trainer was given (or ``None``)."""
    if enabled is False:
        if ddp_model is not None:
            raise ValueError(
                "DistributedOptions(enabled=False) but model is a DistributedDataParallel "
                "module; pass model.module to train this rank's copy alone"
            )
        return False
    group = is_initialized()
    if enabled is True and not group:
        raise ValueError(
            "DistributedOptions(enabled=True) needs a torch.distributed process group: launch "
            "with torchrun and call jupyter_curvature.distributed.init_distributed() first"
        )
    return ddp_model is not None or (group and (bool(enabled) or active()))


def setup_ddp(trainer: Any, ddp_model: DDP | None, ddp_kwargs: dict[str, Any]) -> DDP:
    """Check that ``trainer`` can train under DDP and agrees with every rank (every rank
    raises the same error), then return the DDP module (``ddp_model`` or a new wrapper).

    A callback whose work is collective declares the settings that fix its collectives by
    a ``collective_settings()`` method (the live curvature does); they are compared too.
    """
    from ..core.distributed.primitives import check_backend_device

    device = trainer.device
    check_backend_device(device)
    for obj in (trainer.optimizer, trainer.preconditioner):
        if obj is not None and callable(getattr(obj, "wants_fisher", None)):
            raise ValueError(
                f"{type(obj).__name__} (K-FAC) is not supported under "
                "DistributedDataParallel: each rank's factors would come from its own "
                "samples and the ranks' weights would drift apart; train K-FAC in one "
                "process (DistributedOptions(enabled=False)) or use SGD, Adam or SWATS"
            )
    if trainer.preconditioner is not None:
        raise ValueError(
            "preconditioner= is not supported under DistributedDataParallel; pass "
            "distributed=DistributedOptions(enabled=False) to train each rank alone"
        )
    collective = [
        cb.collective_settings()
        for cb in trainer.callbacks
        if callable(getattr(cb, "collective_settings", None))
    ]
    order, data, ckpt = trainer.data_order, trainer.data_options, trainer.checkpoint
    own = order.opaque is None  # a loader with its own sampler brings its own settings
    check_same_settings(
        trainer.model,
        {
            "len(train_data)": len(trainer.train_dataset),
            "batch_size": data.batch_size if own else None,
            "shuffle": data.shuffle if own else None,
            "drop_last": data.drop_last if own else None,
            "seed": trainer.seed,
            "steps per epoch": trainer.steps_per_epoch,
            "epochs": trainer.epochs,
            "total steps": trainer.total_steps,
            "test data": trainer.has_test_data,
            "eval_every": trainer.eval_every,
            "checkpoint_dir": ckpt.dir is not None,
            "checkpoint_every": ckpt.every,
            "checkpoint_steps": ckpt.steps,
            "optimizer": type(trainer.optimizer).__name__,
            "curvature callbacks": collective,
        },
    )
    if ddp_model is None:
        ids = [device.index] if device.type == "cuda" else None
        ddp_model = DDP(trainer.model, device_ids=ids, **ddp_kwargs)
    return ddp_model
