"""Run a function on several local processes, with a process group, results and errors returned.

:func:`launch` is ``torch.multiprocessing.start_processes`` plus what a caller needs: a free
port on localhost, :func:`~jupyter_curvature.distributed.context.init_distributed` with a
short timeout in every child, the children's return values (saved with ``torch.save``), and
one clear :class:`DistributedRunError` listing every failed rank's exception when any rank
fails, the first failure first (usually the cause; the others typically report a closed
connection). A rank that hangs outside any collective is stopped by ``join_timeout``.

Under ``torchrun`` you do not need it: call ``init_distributed()`` in the script.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from ..core.distributed.context import init_distributed
from ..core.files import atomic_write, atomic_write_text


class DistributedRunError(RuntimeError):
    """One or more ranks of a :func:`launch` failed; ``failures`` maps rank -> traceback text."""

    def __init__(self, message: str, failures: dict[int, str]) -> None:
        super().__init__(message)
        self.failures = failures


def free_port() -> int:
    """A TCP port free on localhost now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(
    local_rank: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    world_size: int,
    port: int,
    backend: str | None,
    timeout: float,
    device: str | None,
    result_dir: str,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    out = Path(result_dir)
    try:
        ctx = init_distributed(backend, timeout=timeout, device=device)
        try:
            result = fn(*args)
        finally:
            ctx.close()
        atomic_write(out / f"rank{local_rank}.pt", lambda f: torch.save(result, f))
    except BaseException:
        # the time stamp orders the failures: the earliest is usually the cause
        report = f"{time.time()!r}\n{traceback.format_exc()}"
        atomic_write_text(out / f"rank{local_rank}.err", report)
        raise


def _failures(result_dir: Path) -> dict[int, tuple[float, str]]:
    found = {}
    for path in result_dir.glob("rank*.err"):
        stamp, _, text = path.read_text().partition("\n")
        found[int(path.stem[4:])] = (float(stamp), text)
    return found


def launch(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: tuple[Any, ...] = (),
    *,
    backend: str | None = "gloo",
    timeout: float = 60.0,
    join_timeout: float | None = None,
    device: str | None = "cpu",
    start_method: str = "spawn",
) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` local processes inside a process group.

    Args:
        fn: a module-level function (it is pickled to the children).
        world_size: number of processes.
        args: positional arguments of ``fn`` (picklable).
        backend: ``"gloo"`` (default, CPUs), ``"nccl"`` (one GPU per process) or ``None``.
        timeout: the process group's collective timeout in seconds: a rank waiting for a
            dead or stuck rank raises after this long.
        join_timeout: stop everything and raise :class:`TimeoutError` after this many
            seconds (``None``: no limit); for ranks that hang outside a collective.
        device: the children's device (``None``: ``cuda:rank`` when GPUs are visible).
        start_method: ``"spawn"`` (safe default) or ``"forkserver"``/``"fork"``.

    Returns:
        The return values of ``fn``, in rank order.

    Raises:
        DistributedRunError: a rank raised or died; the message lists each failed rank with
            its exception, the earliest first.
        TimeoutError: ``join_timeout`` passed.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    with tempfile.TemporaryDirectory(prefix="jc-launch-") as tmp:
        result_dir = Path(tmp)
        context = mp.start_processes(
            _worker,
            args=(fn, tuple(args), world_size, free_port(), backend, timeout, device, tmp),
            nprocs=world_size,
            join=False,
            start_method=start_method,
        )
        deadline = None if join_timeout is None else time.monotonic() + join_timeout
        try:
            while not context.join(timeout=0.2):
                if deadline is not None and time.monotonic() > deadline:
                    _terminate(context)
                    raise TimeoutError(
                        f"the {world_size} processes did not finish within {join_timeout} s; "
                        "they were stopped (a rank hangs outside a collective?)"
                    )
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
            _terminate(context)
            raise _run_error(err, _failures(result_dir)) from None
        return [
            torch.load(result_dir / f"rank{r}.pt", weights_only=False) for r in range(world_size)
        ]


def _terminate(context: Any) -> None:
    for process in context.processes:
        if process.is_alive():
            process.terminate()
        process.join(timeout=5)


_PEER_FAILURE_MARKERS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Another rank failed or timed out",
    "ProcessGroupGloo",
    "NCCL communicator was aborted",
)


def _is_peer_failure(text: str) -> bool:
    return any(marker in text for marker in _PEER_FAILURE_MARKERS)


def _run_error(err: Exception, failures: dict[int, tuple[float, str]]) -> DistributedRunError:
    if not failures:  # died without a Python exception (a signal, os._exit)
        return DistributedRunError(f"a rank died: {err}", {})
    # a rank that failed because a peer went away is a consequence, not the cause: under load
    # its timestamp can even precede the cause's, so causes sort first, then by time
    ordered = sorted(failures.items(), key=lambda item: (_is_peer_failure(item[1][1]), item[1][0]))
    last_lines = {r: text.strip().splitlines()[-1] for r, (_, text) in ordered}
    first = ordered[0][0]
    message = f"rank {first} failed: {last_lines[first]}"
    others = [f"rank {r}: {line}" for r, line in last_lines.items() if r != first]
    if others:
        message += " (then " + "; ".join(others) + ")"
    message += f"\n\nrank {first}'s traceback:\n{failures[first][1]}"
    return DistributedRunError(message, {r: text for r, (_, text) in ordered})
