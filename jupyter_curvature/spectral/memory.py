"""The memory model of the Lanczos basis, the choice it drives, and float64 accumulation.

A curvature spectrum of an ``n``-parameter model holds, besides the model and its gradient
graphs (the operator's memory, see ``docs/scale.md``), the Lanczos vectors. In bytes, with
``b`` the basis element size (8 for float64, 4 for float32):

* ``spectral_density`` with full reorthogonalisation: ``b n p (m + W_DENSITY)`` for ``p``
  probes and ``m`` steps: GPyTorch's ``(m, p, n, 1)`` basis plus ``W_DENSITY = 8`` working
  blocks of ``(n, p)`` (the residual, the product in the basis dtype and its scaled copy,
  the copy handed back to GPyTorch, the last product kept for the next ``beta``, the
  reorthogonalisation's correction, and the float64 chunks of a float32 basis);
* ``spectral_density(reorthogonalize="none")``: ``b n p W_NONE``: the three-term recurrence
  keeps ``q_{j-1}``, ``q_j`` and the last product; with the product's scaled copy, the
  residuals and the next vector, at most ``W_NONE = 10`` blocks are alive at once (measured),
  and nothing grows with ``m``;
* ``eigenpairs``: ``b n (c B + W_EIGEN + 2 k)`` for a basis of ``B = max_basis`` vectors,
  ``c = 1`` (the restartable ``Q`` is GPyTorch's own basis block, taken over, not copied),
  ``W_EIGEN = 16``,
  ``c = 2`` with ``verify="stored"`` (the products ``A Q`` are kept as a second basis, written
  by the closure straight into the block the thick restarts use),
  plus the locked and candidate vectors (``2 k``);
* ``block_spectra``: ``b p (sum_j min(m, n_j) n_j + W_BLOCKS n)``: each block's own basis
  ``(min(m, n_j), n_j, p)`` (a block smaller than ``m`` stops at its dimension) plus
  ``W_BLOCKS = 8`` full-length ``(n, p)`` working blocks (the packed input and the product,
  the zero pieces of finished blocks, the first step's pair kept for the symmetry check, and
  the block being updated: its slice of the product and three residual temporaries, each at
  most ``(n, p)``). Always on the operator's device. An operator without the Hessian's
  per-group backward (the GGN) takes the ``b`` blocks' product as one product of ``b p``
  columns: ``+ 2 b_op b n p`` for its input and output.

With the basis sharded over ``W`` ranks (``shard_basis=True``,
:mod:`jupyter_curvature.core.distributed.basis`) every vector above holds ``ceil(n / W)``
rows per rank instead of ``n``, and each product adds its gathered full-length input and
output in the operator's dtype (``2 n p`` elements, :data:`W_GATHERED`): per rank,
``b ceil(n / W) p (m + W_DENSITY) + 2 b_op n p`` for the density, and for eigenpairs
``b ceil(n / W) (c B + W_EIGEN + 2 k) + 2 b_op n``.

These are what is *allocated*; on a CUDA device that is what is used. On the CPU an allocation
is resident only once written, so a run that stops early (eigenpairs converged in ``j <
max_basis`` steps) keeps fewer pages resident than the model says: the model is an upper
bound there. ``benchmarks/bench_memory.py`` reports the peak resident memory beside the model
(``docs/scale.md`` gives the figures; it is not a test, as resident memory depends on the
machine's state).

A budget (``memory_budget=``, bytes for the Lanczos vectors on the operator's device) picks
the most accurate mode that fits, in this order: float64 basis on the operator's device,
float32 basis there (float64 accumulation, see :func:`dot64`), and, for an operator on a GPU,
the same two with the basis in (pinned) CPU memory, which costs the device only the working
blocks. ``reorthogonalize="none"`` (density only) is never chosen silently: it changes the
Ritz values (ghost copies, ``docs/scale.md``), so the error that says no stored basis fits
names it and its bytes.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..core.sizes import parse_bytes
from ..operators.graphs import free_memory

#: working ``(n, p)`` blocks beside the basis (density, full reorthogonalisation)
W_DENSITY = 8
#: working ``(n, p)`` blocks of the three-term recurrence without a stored basis
W_NONE = 10
#: working ``(n, 1)`` vectors of eigenpairs beside its bases (f, y, r, projections, GPyTorch's)
W_EIGEN = 16
#: full-length ``(n, p)`` working blocks of ``block_spectra`` beside the blocks' bases
W_BLOCKS = 8
#: full-length ``(n, p)`` blocks of a product with a sharded basis (gathered input, output)
W_GATHERED = 2
#: elements of a reduced-precision basis upcast at once by the float64 accumulation
#: (32 MiB of float64 temporaries whatever ``n``)
CHUNK = 1 << 22

REORTHOGONALIZE = ("full", "none")


class MemoryWarning(UserWarning):
    """No ``memory_budget`` was given and the most accurate basis does not fit in the memory
    free now: a smaller mode was chosen, or the caller's choice was kept at their risk."""


@dataclass(frozen=True)
class BasisMode:
    """Where and how the Lanczos vectors are held, and the bytes it costs.

    Attributes:
        dtype: element type of the stored basis.
        device: where the basis lives.
        reorthogonalize: ``"full"`` (stored basis) or ``"none"`` (three-term recurrence).
        device_bytes: bytes on the operator's device.
        host_bytes: bytes in CPU memory when the basis is held there for a GPU operator.
        budget: the ``memory_budget`` it was chosen under (``None``: no budget).
    """

    dtype: torch.dtype
    device: torch.device
    reorthogonalize: str
    device_bytes: int
    host_bytes: int = 0
    budget: float | None = None

    @property
    def name(self) -> str:
        kind = str(self.dtype).removeprefix("torch.")
        if self.reorthogonalize == "none":
            return f'reorthogonalize="none" ({kind})'
        return f"{kind} basis on {self.device}"

    def describe(self) -> str:
        text = f"{self.name}: {format_bytes(self.device_bytes)}"
        if self.host_bytes:
            text += f" on the device + {format_bytes(self.host_bytes)} of CPU memory"
        return text

    def to_dict(self, pinned: bool = False) -> dict[str, Any]:
        """The record of a result (``pinned``: the basis was allocated page-locked)."""
        return {
            "mode": self.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "pinned": bool(pinned),
            "reorthogonalize": self.reorthogonalize,
            "device_bytes": int(self.device_bytes),
            "host_bytes": int(self.host_bytes),
            "memory_budget": self.budget,
            "description": self.describe(),
        }


def format_bytes(x: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= size:
            return f"{x / size:.3g} {unit}"
    return f"{int(x)} B"


def density_bytes(
    n: int,
    num_iters: int,
    num_probes: int,
    dtype: torch.dtype,
    reorthogonalize: str = "full",
    op_dtype: torch.dtype | None = None,
    world_size: int = 1,
) -> int:
    """Bytes of the Lanczos vectors of ``spectral_density`` per rank (see the module docstring).

    ``op_dtype``: the operator's dtype; when it differs from the basis', each product adds
    its input and output block in that dtype. ``world_size``: ranks the basis is sharded over.
    """
    blocks = W_NONE if reorthogonalize == "none" else min(num_iters, n) + W_DENSITY
    extra = 2 * op_dtype.itemsize if op_dtype is not None and op_dtype != dtype else 0
    rows = -(-n // world_size)
    return int((dtype.itemsize * blocks + extra) * rows * num_probes) + _gathered(
        n, num_probes, op_dtype or dtype, world_size
    )


def _gathered(n: int, p: int, op_dtype: torch.dtype, world_size: int) -> int:
    """The full-length input and output of a product with a sharded basis (0 unsharded)."""
    return W_GATHERED * op_dtype.itemsize * n * p if world_size > 1 else 0


def eigenpairs_bytes(
    n: int,
    k: int,
    max_basis: int,
    verify: str,
    dtype: torch.dtype,
    world_size: int = 1,
    op_dtype: torch.dtype | None = None,
) -> int:
    """Bytes of the Lanczos vectors of ``eigenpairs`` per rank (see the module docstring)."""
    b = dtype.itemsize
    copies = 2 if verify == "stored" else 1
    rows = -(-n // world_size)
    return int(b * rows * (copies * min(max_basis, n) + W_EIGEN + 2 * k)) + _gathered(
        n, 1, op_dtype or dtype, world_size
    )


def blocks_bytes(
    sizes: list[int],
    num_iters: int,
    num_probes: int,
    dtype: torch.dtype,
    op_dtype: torch.dtype | None = None,
    spreads: bool = False,
) -> int:
    """Bytes of the Lanczos vectors of ``block_spectra`` (see the module docstring).

    ``sizes``: the blocks' dimensions ``n_j``; ``op_dtype`` as for :func:`density_bytes`.
    ``spreads``: the operator takes the ``b`` blocks' product as one product of ``b p``
    columns (not the Hessian's per-group backward): its input and output add ``2 b`` blocks
    in the operator's dtype.
    """
    n = sum(sizes)
    vectors = sum(min(num_iters, size) * size for size in sizes) + W_BLOCKS * n
    b_op = (op_dtype or dtype).itemsize
    extra = 2 * b_op * n if op_dtype is not None and op_dtype != dtype else 0
    extra += 2 * b_op * n * len(sizes) if spreads else 0
    return int((dtype.itemsize * vectors + extra) * num_probes)


def check_budget(value: Any) -> float | None:
    """``memory_budget``: ``None``, a positive number of bytes or a size (:func:`parse_bytes`)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return parse_bytes(value)
        except ValueError as exc:
            raise ValueError(f"memory_budget: {exc}") from None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 < value < float("inf")
    ):
        raise ValueError(
            "memory_budget must be a positive number of bytes (8e9), a size with a unit "
            f"('8GB', '512MiB') or None; got {value!r}"
        )
    return float(value)


def check_reorthogonalize(value: Any) -> str:
    if value not in REORTHOGONALIZE:
        raise ValueError(
            f'reorthogonalize must be "full" (stored basis) or "none" (three-term recurrence, '
            f"no basis: for models whose basis does not fit), got {value!r}"
        )
    return value


def available_host_bytes() -> int | None:
    """Free CPU memory (``MemAvailable`` on Linux), as the kept graphs' budget reads it."""
    return free_memory(torch.device("cpu"))


def choose_basis(
    bytes_of: Any,
    op_device: torch.device,
    budget: float | None,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
    reorthogonalize: str = "full",
    working: int = 0,
    kinds: tuple[str, ...] = REORTHOGONALIZE,
    host: bool = True,
) -> BasisMode:
    """The basis mode: the given one, or the most accurate one that fits ``budget``.

    Args:
        bytes_of: ``bytes_of(dtype, reorthogonalize)``, the memory model of the routine.
        op_device: the operator's device (where ``budget`` applies).
        budget: bytes for the Lanczos vectors on the operator's device, or ``None`` (no
            limit: float64 on the operator's device unless ``dtype``/``device`` say otherwise).
        dtype, device: the caller's ``basis_dtype``/``basis_device``; ``None`` = automatic.
        reorthogonalize: ``"full"`` or ``"none"`` (then no basis is stored).
        working: bytes of one working block on the device when the basis is on the CPU.
        kinds: the ``reorthogonalize`` values the routine offers (listed in the error;
            ``eigenpairs`` has only ``"full"``).
        host: whether the routine can hold its basis in CPU memory for a GPU operator
            (``block_spectra`` cannot).

    Without a budget the memory free now on the operator's device is the limit: the first
    allowed mode that fits is taken (with a :class:`MemoryWarning` when it is not the most
    accurate); ``dtype`` and ``device`` fix what the caller set and leave the rest to choose
    (``basis_device="cpu"`` alone may still fall back to float32 there). When nothing allowed
    fits, a mode the caller set is kept with a warning (at their risk), and a fully automatic
    choice is refused.

    Raises:
        ValueError: nothing allowed fits the budget (a host-held basis must also fit in the
            free CPU memory); the message lists every mode with its bytes and names those
            that fit.
    """
    op_device = torch.device(op_device)
    dtypes = [dtype] if dtype is not None else [torch.float64, torch.float32]
    if device is not None:
        devices = [torch.device(device)]
    else:
        devices = _devices(op_device, host)
    if reorthogonalize == "none":
        devices = devices[:1]  # nothing is stored, so nothing to move to the host

    def mode(dt: torch.dtype, dev: torch.device, how: str) -> BasisMode:
        total = bytes_of(dt, how)
        if dev.type == op_device.type and dev == op_device or how == "none":
            return BasisMode(dt, dev, how, total)
        return BasisMode(dt, dev, how, W_DENSITY * working, total)  # host-held basis

    allowed = [mode(dt, dev, reorthogonalize) for dev in devices for dt in dtypes]
    host = available_host_bytes()

    def fits(m: BasisMode, limit: float) -> bool:
        # a host-held basis must also fit in the free CPU memory
        return m.device_bytes <= limit and (
            not m.host_bytes or host is None or m.host_bytes <= host
        )

    def refuse(limit: float, what: str, remedy: str) -> ValueError:
        """Every mode with its bytes, and those that fit ``limit`` (``what`` names it)."""
        others = [
            mode(dt, dev, how)
            for how in kinds
            for dev in _devices(op_device, host)
            for dt in (torch.float64, torch.float32)
            if not (how == "none" and dev != op_device)
        ]
        fitting = [m for m in others if fits(m, limit)]
        lines = "\n".join(f"  {m.describe()}" for m in others)
        advice = (
            "use " + " or ".join(m.name for m in fitting) + f" (or {remedy})"
            if fitting
            else f"none of them fits: {remedy}, lower num_iters/num_probes/max_basis"
        )
        return ValueError(
            f"{what} cannot hold {' or '.join(m.describe() for m in allowed)}. The Lanczos "
            f"vectors of each mode need (on the operator's device):\n{lines}\n{advice}"
        )

    if budget is not None:
        for m in allowed:
            if fits(m, budget):
                return dataclasses.replace(m, budget=budget)
        raise refuse(budget, f"memory_budget={format_bytes(budget)}", "raise memory_budget")
    # no budget: the most accurate mode, unless it cannot fit in the memory free right now
    # (a run that would be killed for memory hours later is refused, or made smaller, now)
    free = free_memory(op_device)
    if fits(allowed[0], free):
        return allowed[0]
    for m in allowed[1:]:
        if fits(m, free):
            warnings.warn(
                f"Lanczos vectors ({allowed[0].describe()}) need more than the "
                f"{format_bytes(free)} free on {op_device}: using the {m.describe()} instead"
                f"{_ACCUMULATED * (m.dtype != torch.float64)}. Set basis_dtype and "
                "basis_device to insist, or memory_budget to set the limit",
                MemoryWarning,
                stacklevel=3,
            )
            return m
    if dtype is not None or device is not None:  # the caller's choice is kept, with a warning
        warnings.warn(
            f"Lanczos vectors ({allowed[0].describe()}) need more than the {format_bytes(free)} "
            f"free on {op_device} now: the run may be stopped for memory (leave basis_dtype and "
            "basis_device unset, or set memory_budget, to let a mode that fits be chosen)",
            MemoryWarning,
            stacklevel=3,
        )
        return allowed[0]
    raise refuse(free, f"the {format_bytes(free)} free on {op_device}", "free some memory")


_ACCUMULATED = " (float64 accumulation; its accuracy is in docs/scale.md)"


def _devices(op_device: torch.device, host: bool) -> list[torch.device]:
    """Where a basis may live: the operator's device, then (GPU operators) the host."""
    cpu = torch.device("cpu")
    return [op_device] + ([cpu] if host and op_device.type != "cpu" else [])


# ---------------------------------------------------------------------- float64 accumulation
def _step(rows: int) -> int:
    return max(1, CHUNK // max(rows, 1))


def dot64(Q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``Q x`` for rows ``Q`` ``(j, n)`` and ``x`` ``(n,)``, accumulated in float64.

    For a float32 basis each of the ``j`` inner products is summed in float64 over chunks of
    ``n`` (upcast ``CHUNK`` elements at a time, so no float64 copy of the basis is made):
    the only rounding is that of the stored float32 entries. Returns float64 ``(j,)``.
    """
    if Q.dtype == torch.float64:
        return torch.mv(Q, x.double())
    out = torch.zeros(Q.shape[0], dtype=torch.float64, device=Q.device)
    step = _step(Q.shape[0])
    for s in range(0, Q.shape[1], step):
        out += torch.mv(Q[:, s : s + step].double(), x[s : s + step].double())
    return out


def combine64(Q: torch.Tensor, c: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``Q^T c`` for rows ``Q`` ``(j, n)`` and coefficients ``c`` ``(j,)``, accumulated in float64.

    Each entry of the result is a sum of ``j`` terms formed and added in float64 and rounded
    once to ``Q``'s dtype. Returns ``(n,)`` in ``Q``'s dtype, written into ``out`` if given.
    """
    if Q.dtype == torch.float64:
        return torch.mv(Q.T, c.double(), out=out)
    c = c.double()
    if out is None:
        out = torch.empty(Q.shape[1], dtype=Q.dtype, device=Q.device)
    step = _step(Q.shape[0])
    for s in range(0, Q.shape[1], step):
        out[s : s + step] = torch.mv(Q[:, s : s + step].T.double(), c)
    return out


def inner64(a: torch.Tensor, b: torch.Tensor, dim: int = 0, keepdim: bool = False) -> torch.Tensor:
    """``sum(a * b, dim)`` accumulated in float64 (the products formed in the inputs' dtype)."""
    return (a * b).sum(dim, keepdim=keepdim, dtype=torch.float64)


def dots64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Column by column ``a_i . b_i`` of two ``(n, p)`` blocks, accumulated in float64: ``(p,)``.

    One pass over each column and no ``n x p`` temporary (``(a * b).sum(0)`` writes and
    re-reads one, and a fresh large allocation page-faults its memory in again: measured 10x
    slower at n = 5.4M). Float64 columns are BLAS dots; others are upcast ``CHUNK`` elements
    at a time, as in :func:`dot64`.
    """
    if a.dtype == b.dtype == torch.float64:
        return torch.stack([torch.dot(a[:, i], b[:, i]) for i in range(a.shape[1])])
    out = torch.zeros(a.shape[1], dtype=torch.float64, device=a.device)
    for s in range(0, a.shape[0], CHUNK):
        out += inner64(a[s : s + CHUNK].double(), b[s : s + CHUNK].double())
    return out
