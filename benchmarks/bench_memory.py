"""Memory kept across repeated spectral calls in one process (a leak shows as steady growth).

After ``--warmup`` calls, runs ``--calls`` more of each routine on one ``HessianOperator`` and
reports, after ``gc.collect()``, the growth of the live tensors (count and bytes of their
distinct storages, found through the garbage collector, so independent of the allocator) and
of the resident memory (which also counts allocator caching, hence noisier). Products alone
are the control. Model: the spectral benchmark's tanh MLP on the built-in digits (``--quick``:
hidden layer of 32 on 300 digits).

Usage: ``python benchmarks/bench_memory.py [--calls 150] [--quick]``
"""

from __future__ import annotations

import argparse
import gc
import warnings

import torch
from _common import current_rss_mib
from bench_spectral import problem

from jupyter_curvature.operators import HessianOperator
from jupyter_curvature.spectral import eigenpairs, spectral_density

warnings.filterwarnings("ignore")


def live_tensors() -> tuple[int, int]:
    """``(count, bytes)`` of the tensors the garbage collector can reach (distinct storages)."""
    gc.collect()
    tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return len(tensors), sum(storages.values())


def growth(fn, calls: int, warmup: int) -> tuple[int, float, float]:
    """Live tensors, their MiB and the resident MiB added by ``calls`` calls of ``fn``."""
    for _ in range(warmup):
        fn()
    count0, bytes0 = live_tensors()
    rss0 = current_rss_mib()
    for _ in range(calls):
        fn()
    count1, bytes1 = live_tensors()
    return count1 - count0, (bytes1 - bytes0) / 2**20, current_rss_mib() - rss0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hidden, limit = ((32,), 300) if args.quick else ((256, 128), None)
    model, loss_fn, x, y = problem("cpu", torch.float32, hidden=hidden, limit=limit)
    H = HessianOperator(model, loss_fn, (x, y))
    v = torch.ones(H.shape[0])
    routines = {
        "eigenpairs(k=3)": lambda: eigenpairs(H, k=3, seed=0),
        "spectral_density(30 steps)": lambda: spectral_density(H, num_iters=30, seed=0),
        "H @ v (control)": lambda: H @ v,
    }
    print(f"n = {H.shape[0]}, {args.calls} calls each after {args.warmup}; growth after gc:")
    print(f"{'':28s} {'tensors':>8s} {'tensor MiB':>11s} {'RSS MiB':>8s}")
    for name, fn in routines.items():
        count, mib, rss = growth(fn, args.calls, args.warmup)
        print(f"{name:28s} {count:8d} {mib:11.2f} {rss:8.1f}")


if __name__ == "__main__":
    main()
