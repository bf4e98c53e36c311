"""Shared helpers for the benchmarks: medians of repeats, peak memory in a fresh process, tables,
and the peers' adapters (PyHessian, hessian-eigenthings, scipy) with product counters."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable

import torch


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident memory of this process now, in MiB (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def extra_peak_rss_mib(fn: Callable[[], object], interval: float = 0.002) -> float:
    """Peak resident memory added while ``fn()`` runs, sampled by a background thread."""
    import threading

    base = current_rss_mib()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, current_rss_mib())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak, current_rss_mib()) - base


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- peer adapters
class Capped(Exception):
    """A peer's run was stopped at the time cap (:func:`time_cap`): its time is a lower bound."""


_CAP = {"deadline": None}


def count_product() -> None:
    """Called by every peer counter before each product: raise :class:`Capped` past the cap."""
    deadline = _CAP["deadline"]
    if deadline is not None and time.perf_counter() > deadline:
        raise Capped


class time_cap:  # noqa: N801 (a context manager used like a function)
    """``with time_cap(seconds):`` peers' products stop (:class:`Capped`) after ``seconds``.

    For an "at most r x" bar a peer that has not reached the wanted accuracy after ``ours / r``
    seconds has met the bar's condition already; its ladder need not run for hours to say so.
    ``None``: no cap."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds

    def __enter__(self):
        if self.seconds is not None:
            _CAP["deadline"] = time.perf_counter() + self.seconds
        return self

    def __exit__(self, *exc) -> None:
        _CAP["deadline"] = None


# One adapter per peer, shared by bench_spectral.py and bench_scale.py: each counts the
# products it makes, so every table reports products next to wall time.


def he_operator_factory(model, loss_fn, batches):
    """hessian-eigenthings' Hessian on ``batches`` (a list of ``(x, y)``), with a product
    counter ``._count``; ``None`` when the package is missing."""
    try:
        import hessian_eigenthings as he
    except ImportError:
        return None

    def he_operator():
        o = he.HessianOperator(model, batches, he.supervised_loss(loss_fn))
        o._count = 0
        inner = o.matvec

        def mv(vec):
            count_product()
            o._count += 1
            return inner(vec)

        o.matvec = mv
        return o

    return he_operator


def pyhessian_top(model, loss_fn, batches, device: str):
    """``run(seed, tol=1e-3, max_iter=100) -> (eigenvalues, products)``: PyHessian's
    ``eigenvalues(top_n=5)`` (deflated power iteration) on ``batches``; ``None`` when missing.

    One batch goes in as ``data=`` (PyHessian keeps its gradient graph, as ours does), several
    as ``dataloader=`` (it then rebuilds the graph per product, batch by batch)."""
    try:
        import importlib

        import pyhessian
    except ImportError:
        return None
    ph = importlib.import_module("pyhessian.hessian")  # the module, not the class
    counter = {"n": 0}
    if not hasattr(ph, "_jc_counted"):
        hvp = ph.hessian_vector_product

        def counting(gradsH, params, v):
            count_product()
            ph._jc_counter["n"] += 1
            return hvp(gradsH, params, v)

        ph.hessian_vector_product = counting
        ph._jc_counted = True
    ph._jc_counter = counter
    cuda = str(device).startswith("cuda")

    def make():
        if len(batches) == 1:
            return pyhessian.hessian(model, loss_fn, data=batches[0], cuda=cuda)
        return pyhessian.hessian(model, loss_fn, dataloader=batches, cuda=cuda)

    def run(seed, tol=1e-3, max_iter=100, top_n=5):
        counter["n"] = 0
        torch.manual_seed(seed)  # its start vectors come from torch's global generator
        vals, _ = make().eigenvalues(maxIter=max_iter, tol=tol, top_n=top_n)
        return vals, counter["n"]

    run.make = make
    return run


def counted_scipy(scipy_op):
    """A scipy ``LinearOperator`` wrapping ``scipy_op`` that counts its products (``.count``)."""
    from scipy.sparse.linalg import LinearOperator

    class Counted(LinearOperator):
        def __init__(self):
            super().__init__(scipy_op.dtype, scipy_op.shape)
            self.count = 0

        def _matvec(self, x):
            count_product()
            self.count += 1
            return scipy_op @ x

        def _matmat(self, X):
            count_product()
            self.count += X.shape[1]
            return scipy_op @ X

    return Counted()
