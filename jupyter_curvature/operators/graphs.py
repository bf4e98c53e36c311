"""Kept gradient graphs: Hessian products that cost only the second backward.

A :class:`~jupyter_curvature.operators.HessianOperator` with ``keep_graphs=True`` builds each
batch's gradient graph ``g_b(w) = dL_b/dw`` (``create_graph=True``) once and reuses it for every
later product ``H v = d(g^T v)/dw``, so a product costs one backward through the kept graph
instead of a forward, a gradient and that backward (docs/spectral.md: 1.3-2.0x a
gradient instead of 2.4-3.4x). PyHessian keeps its one batch's graph the same way. The price is
memory: every batch's graph at once. The operator rebuilds the graphs when the value of a
parameter or a floating-point buffer changes, whatever changed it (an optimiser step, a
hand-written ``p.data -= lr * p.grad`` that leaves the version counter alone, ``bn_update``):
a :class:`ValueSnapshot` taken at the build is compared exactly before each product, so kept
graphs never give stale products.

An operator's own context ``with op.kept_graphs(keep): ...`` turns this on for the length of
the block (spectral routines enter it for one call, ``keep_graphs=None`` by default: when the
graphs fit; a composite operator enters it for each of its parts). The bytes autograd saves while the graphs are built are counted with
:func:`torch.autograd.graph.saved_tensors_hooks` (unique storages, the parameters' own
excluded); when the count passes the budget (half of the free memory of the operator's device)
the build is abandoned, the partial graphs freed, and the run goes on with a fresh graph per
product. So the peak stays within the budget plus one batch's graph. For data that is one batch,
a kept graph is the very graph a fresh product builds and frees: keeping it costs no extra peak.
At the end of the call the operator is left as it was found (``keep_graphs`` restored, graphs
the call built released).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: the kept graphs may use at most this fraction of the device's free memory
GRAPH_MEMORY_FRACTION = 0.5
#: the budget when the free memory cannot be read
FALLBACK_BUDGET = 2 << 30


class ValueSnapshot:
    """An exact copy of some tensors' values, to tell later whether any of them changed.

    Version counters (``t._version``) move on in-place operations through autograd, but not on
    edits through ``.data`` (``p.data -= lr * p.grad``, a hand-written SGD step) nor on
    ``p.data = other``: a kept graph validated by versions alone would give stale products
    after such a step. Comparing values catches every change. It costs one copy of the
    tensors (the parameters: small beside the kept graphs they validate) and one comparison
    pass over them per product, with a single host sync per device.

    >>> import torch
    >>> w = torch.ones(3, requires_grad=True)
    >>> snap = ValueSnapshot([w])
    >>> w.data -= 1  # does not move w._version
    >>> snap.matches([w])
    False
    """

    def __init__(self, tensors) -> None:
        with torch.no_grad():
            self.copies = [t.detach().clone() for t in tensors]

    def matches(self, tensors) -> bool:
        """Whether ``tensors`` hold exactly the values (shapes, dtypes, devices) copied."""
        tensors = list(tensors)
        if len(tensors) != len(self.copies):
            return False
        flags: dict[torch.device, list[torch.Tensor]] = {}
        with torch.no_grad():
            for t, c in zip(tensors, self.copies):
                if t.shape != c.shape or t.dtype != c.dtype or t.device != c.device:
                    return False
                if t.device.type == "cpu":
                    if not torch.equal(t, c):  # no host sync to save on CPU: stop at the first
                        return False
                else:  # one sync per device, not one per tensor (it stalls a GPU's queue)
                    flags.setdefault(t.device, []).append(torch.ne(t, c).any())
            return not any(bool(torch.stack(f).any()) for f in flags.values())


class _GraphsTooLarge(Exception):
    """Raised by the pack hook to abandon a graph build that passed the memory budget."""


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: ``cudaMemGetInfo`` on CUDA, ``MemAvailable`` on Linux CPUs."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return FALLBACK_BUDGET * 2


def supports_kept_graphs(op: Any) -> bool:
    """The operator can keep its gradient graphs (a ``HessianOperator``)."""
    return isinstance(getattr(op, "keep_graphs", None), bool) and callable(
        getattr(op, "release_graphs", None)
    )


class _SavedBytes:
    """Pack/unpack hooks that count the bytes of the distinct storages autograd saves."""

    def __init__(self, budget: float, exclude: set[int]) -> None:
        self.budget = budget
        self.seen = set(exclude)
        self.total = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self.seen:
            self.seen.add(key)
            self.total += storage.nbytes()
            if self.total > self.budget:
                raise _GraphsTooLarge
        # not ``t`` itself: a saved output holds its own grad_fn, and that node would then hold
        # the output through this hook: a reference cycle inside autograd's C++ graph, which
        # Python's collector cannot see, so each watched graph leaked after its release
        return t.detach()

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t


class GraphKeeper:
    """Turns an operator's kept gradient graphs on for one block of products, within a budget.

    Made by :meth:`~jupyter_curvature.operators.CurvatureOperator.kept_graphs`; while it is
    open, the operator's products go through :meth:`run`.

    Args:
        op: the operator.
        keep: ``None`` keep them when they fit (the default), ``True`` keep them whatever they
            cost, ``False`` never (a fresh graph per product).
        budget: bytes the kept graphs may use (``None``: half the free memory of the
            operator's device, read at the first product).

    Attributes:
        kept: whether products currently go through kept graphs.
        graph_bytes: bytes autograd saved for the graphs (measured when watched), or ``None``.
        gave_up: the graphs passed the budget and the run fell back to fresh graphs.
    """

    def __init__(self, op: Any, keep: bool | None, budget: float | None = None) -> None:
        if keep is not None and not isinstance(keep, bool):
            raise TypeError(f"keep_graphs must be True, False or None (automatic), got {keep!r}")
        supported = supports_kept_graphs(op)
        if keep is True and not supported:
            raise ValueError(
                f"keep_graphs=True needs an operator that can keep gradient graphs "
                f"(HessianOperator); {type(op).__name__} cannot: pass keep_graphs=None or False"
            )
        self.op = op
        self.keep = keep
        self.supported = supported
        self.original = bool(op.keep_graphs) if supported else False
        self.graph_bytes: int | None = None
        self.gave_up = False
        self.watch = False
        self.kept = self.original
        if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
            raise ValueError(f"budget must be a positive number of bytes or None, got {budget!r}")
        self.fixed_budget = budget
        self.budget: float | None = None  # bytes, read once per call

    def open(self) -> None:
        """Set the operator up for the call (see the class docstring)."""
        if not self.supported:
            return
        self.original = bool(self.op.keep_graphs)
        self.kept, self.watch, self.budget = self.original, False, self.fixed_budget
        if self.keep is not None:
            self.kept = self.keep
        elif not self.original:
            self.kept = self.watch = True
        self.op.keep_graphs = self.kept

    def _budget(self) -> float:
        device = torch.device(getattr(self.op, "device", "cpu"))
        try:
            free = free_memory(device)
        except (RuntimeError, ValueError):
            return float(FALLBACK_BUDGET)
        return GRAPH_MEMORY_FRACTION * free

    def run(
        self, matmat: Callable[[torch.Tensor], torch.Tensor], block: torch.Tensor
    ) -> torch.Tensor:
        """``matmat(block)``; the first products of a watched run count the graph memory."""
        if not self.watch:
            return matmat(block)
        if self.budget is None:
            self.budget = self._budget()
        params = getattr(self.op, "params", [])
        counter = _SavedBytes(self.budget, {p.untyped_storage().data_ptr() for p in params})
        try:
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                out = matmat(block)
        except _GraphsTooLarge:
            self.op.release_graphs()
            self.op.keep_graphs = self.kept = False
            self.watch, self.gave_up = False, True
            self.graph_bytes = counter.total
            return matmat(block)
        if counter.total:  # a (re)build happened in this product: its size is now known
            self.graph_bytes = counter.total
        return out

    def close(self) -> None:
        """Leave the operator as it was found; free the graphs this block made it keep."""
        if not self.supported:
            return
        if self.kept and not self.original:
            self.op.release_graphs()
        self.op.keep_graphs = self.original
