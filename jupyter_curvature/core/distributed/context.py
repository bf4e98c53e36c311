"""Who am I in the process group: rank, world size, device; start the group with timeouts.

``torchrun`` (and SLURM through ``srun torchrun``) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and
starts the process group with a finite ``timeout``, so a rank that dies or hangs makes every
other rank stop with an error after ``timeout`` seconds instead of waiting forever (PyTorch's
default is 10 minutes for NCCL and 30 minutes for gloo). Without those variables it does
nothing and the program runs as one process, so the same script works with and without
``torchrun``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

#: default collective timeout (seconds) of :func:`init_distributed`: long enough for one
#: pass over a large dataset between two collectives, short enough to notice a dead rank
DEFAULT_TIMEOUT = 600.0

T = TypeVar("T")


def is_initialized() -> bool:
    """A ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, and in a program without a process group.

    Use it wherever a result is written, printed or plotted, so that ``N`` ranks write one
    file, not ``N`` copies racing on the same path::

        if is_main_process():
            result.save("spectrum.npz")
    """
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_initialized() and get_world_size() > 1:
        dist.barrier()


@dataclass(frozen=True)
class DistributedContext:
    """What :func:`init_distributed` set up.

    Attributes:
        rank: global rank, ``0 .. world_size - 1``.
        world_size: number of processes.
        local_rank: rank on this machine (the GPU index under ``torchrun``).
        device: the device this rank should compute on (``cuda:local_rank`` or ``cpu``).
        backend: ``"nccl"``, ``"gloo"`` or ``None`` without a process group.
        initialized_here: this call created the group (and :meth:`close` destroys it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.initialized_here and is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def init_distributed(
    backend: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    device: str | torch.device | None = None,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> DistributedContext:
    """Start the process group from ``torchrun``'s environment, with a finite timeout.

    Args:
        backend: ``"nccl"`` (GPUs), ``"gloo"`` (CPUs) or ``None``: NCCL when the device is a
            GPU, else gloo.
        timeout: seconds a collective waits for the other ranks before raising (default
            :data:`DEFAULT_TIMEOUT`). A rank that crashes makes the others fail at their
            next collective; one that hangs, after ``timeout``.
        device: where this rank computes; default ``cuda:LOCAL_RANK`` when GPUs are
            visible, else the CPU. The CUDA device is made current.
        init_method: a rendezvous URL (``"tcp://host:port"``); default ``env://``
            (``MASTER_ADDR``/``MASTER_PORT``, set by ``torchrun``).
        rank, world_size: override ``RANK``/``WORLD_SIZE``.

    Returns:
        The :class:`DistributedContext`. Without ``WORLD_SIZE`` in the environment (and no
        ``world_size`` given) nothing is initialised: rank 0 of 1. An already initialised
        group is used as it is.

    Raises:
        ValueError: a bad ``timeout``, or a backend that cannot serve the device.
    """
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    local_rank = _env_int("LOCAL_RANK", 0) or 0
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if is_initialized():
        return DistributedContext(
            dist.get_rank(), dist.get_world_size(), local_rank, device, str(dist.get_backend())
        )
    world_size = world_size if world_size is not None else _env_int("WORLD_SIZE")
    if world_size is None or (world_size == 1 and init_method is None):
        return DistributedContext(0, 1, 0, device, None)
    rank = rank if rank is not None else _env_int("RANK")
    if rank is None:
        raise ValueError(
            "WORLD_SIZE is set but RANK is not: launch with torchrun, which sets both, or pass "
            "rank= and world_size="
        )
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(
            f"backend='nccl' reduces CUDA tensors only, but device={device}; use backend='gloo' "
            "on CPUs"
        )
    dist.init_process_group(
        backend=backend,
        init_method=init_method or "env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=float(timeout)),
        **({"device_id": device} if backend == "nccl" else {}),
    )
    return DistributedContext(rank, world_size, local_rank, device, backend, True)


def on_main_process(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorator: run ``fn`` on rank 0 only (other ranks get ``None``); no collective."""

    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main_process() else None

    wrapper.__name__ = getattr(fn, "__name__", "wrapper")
    wrapper.__doc__ = fn.__doc__
    return wrapper


def save_on_main(save: Callable[[str], Any], path: str | os.PathLike, *, wait: bool = True) -> None:
    """Call ``save(path)`` on rank 0 only, then (``wait``) let every rank pass a barrier.

    The barrier makes the file exist for every rank after the call (for a rank that reads
    it back). Example: ``save_on_main(result.save, "spectrum.npz")``.
    """
    if is_main_process():
        save(os.fspath(path))
    if wait:
        barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a download or a cache build), then the others."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()
