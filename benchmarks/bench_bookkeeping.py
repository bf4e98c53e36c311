"""Benchmark: the Lanczos bookkeeping alone, the work of a spectrum outside its products.

``eigenpairs(k=5)`` (certified, ``verify="stored"``) and ``spectral_density(80 x 4)`` on a
diagonal float32 operator of ``n`` parameters, whose products cost one multiply, so the wall
time minus the products' time is the reorthogonalisation, the recurrence and the thick
restarts: the fixed cost per step that decides a spectrum on little data. The default sizes
are ResNet-20's (269,722 parameters) and ViT-tiny's at 32 x 32 (5,362,762).

    python benchmarks/bench_bookkeeping.py                  # both sizes, 3 rounds, one thread
    python benchmarks/bench_bookkeeping.py --n 269722 --rounds 5 --only density  # 80 x 4

The density at n = 5.4M holds a 13.7 GB float64 basis; ``--only top-5`` skips it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from jupyter_curvature.spectral import eigenpairs, spectral_density


class Diagonal:
    """``diag(d)`` as an operator: a known spectrum, products at the cost of a multiply."""

    def __init__(self, d: torch.Tensor) -> None:
        self.d, self.shape, self.dtype, self.device = d, (len(d), len(d)), d.dtype, d.device

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        d = self.d.to(v.dtype)
        return d[:, None] * v if v.ndim == 2 else d * v


def spectrum(n: int) -> torch.Tensor:
    """Seven separated top eigenvalues over a bulk in [-100, 300] (ResNet-20-like)."""
    g = torch.Generator().manual_seed(0)
    top = torch.tensor([9500.0, 2300.0, 1450.0, 1400.0, 1340.0, 1300.0, 1250.0])
    return torch.cat([top, torch.rand(n - len(top), generator=g) * 400 - 100])


def per_step(run, op) -> tuple[float, int]:
    """Milliseconds per product outside the products, and the products."""
    t0 = time.perf_counter()
    r = run(op)
    wall = time.perf_counter() - t0
    return (wall - r.product_seconds) / r.num_matvecs * 1e3, r.num_matvecs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[269_722, 5_362_762])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=["top-5", "density"], help="run one of the two")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = {
        "top-5": lambda op: eigenpairs(op, k=5, seed=0),
        "density": lambda op: spectral_density(op, num_iters=80, num_probes=4),
    }
    runs = {k: v for k, v in runs.items() if args.only in (None, k)}
    print(f"# Lanczos bookkeeping, torch {torch.__version__}, {args.threads} thread(s)\n")
    print("| n | run | products | ms per step outside the products (median) | rounds |")
    print("|---|---|---|---|---|")
    for n in args.n:
        op = Diagonal(spectrum(n))
        for name, run in runs.items():
            rows = [per_step(run, op) for _ in range(args.rounds)]
            ms = statistics.median(r[0] for r in rows)
            spread = ", ".join(f"{r[0]:.1f}" for r in rows)
            print(f"| {n:,} | {name} | {rows[0][1]} | {ms:.1f} | {spread} |", flush=True)


if __name__ == "__main__":
    main()
