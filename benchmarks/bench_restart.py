"""Thick restarts: products and restarts of a clustered smallest-eigenvalue problem.

The reliability issue's example: ``eigenpairs(H, k=5, which="SA", tol=1e-8)`` on the Hessian of
a tanh MLP 64-32-10 (2,410 parameters) trained 300 Adam steps (lr 1e-2) on the 1500 built-in
digits, float64. Its smallest eigenvalues are clustered (-1.2e-3, -5.9e-4, -5.7e-4, -5.5e-4,
-5.5e-4 against a spectral norm of 0.19), so Lanczos needs about 200 products, more than the
default basis of 100 vectors: the run must restart. Rows: the default basis within the default
budget (300 products), the default basis with a budget of 3000, and bases of 400 and ``n``
(no restart). Error: the largest distance to the dense eigenvalues (``eigvalsh`` of the
operator's dense matrix), over the spectral norm. Products change with the machine only
through rounding.

Usage: ``python benchmarks/bench_restart.py [--seeds 3] [--hidden 32] [--threads 1]``
"""

from __future__ import annotations

import argparse
import warnings

import torch
from bench_spectral import problem

from jupyter_curvature.operators import HessianOperator
from jupyter_curvature.spectral import eigenpairs

warnings.filterwarnings("ignore")


def trained_hessian(hidden: int) -> HessianOperator:
    model, loss_fn, x, y = problem("cpu", torch.float64, hidden=(hidden,), steps=300, lr=1e-2)
    return HessianOperator(model, loss_fn, (x, y))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    H = trained_hessian(args.hidden)
    n = H.shape[0]
    exact = torch.linalg.eigvalsh(H.to_dense())
    norm = float(exact.abs().max())
    print(f"n = {n}, 5 smallest: {[f'{v:.4e}' for v in exact[:5].tolist()]}, norm {norm:.4f}\n")
    print("| seed | max_basis | max_iters | converged | products | restarts | error / norm |")
    print("|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        for max_basis, max_iters in ((None, None), (None, 3000), (400, None), (n, None)):
            r = eigenpairs(
                H, k=5, which="SA", tol=1e-8, seed=seed, max_basis=max_basis, max_iters=max_iters
            )
            err = float((r.eigenvalues - exact[:5]).abs().max()) / norm
            print(
                f"| {seed} | {max_basis or 'default'} | {max_iters or 'default'} | {r.converged} "
                f"| {r.num_matvecs} | {r.restarts} | {err:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
