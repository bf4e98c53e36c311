"""How often a certified top-k skips eigenvalues on synthetic spectra, and what it costs.

``eigenpairs(A, k=5, tol=1e-3, seed=s)`` on ``A = Q diag(lambda) Q^T`` (``Q`` a random
orthogonal matrix) for seeds ``0 .. --seeds - 1``, against ``torch.linalg.eigvalsh`` in
float64. A *miss* is a run reported converged whose ``i``-th eigenvalue is more than
``tol * scale`` from the true ``i``-th (the pairs are then still eigenpairs to ``tol``: the
set skipped one). Families:

* ``audit``: 78 eigenvalues uniform in ``[0, 20]`` and two negatives (n = 80): a dense end;
  ``SA`` uses the mirror image (the audit's ``repro_misconv*.py``);
* ``outliers``: 6 positive outliers in ``[5, 50]``, 5 negative in ``[-20, -5]``, a clamped
  normal bulk of 114 (n = 125): the shape of a trained network's Hessian;
* ``uniform``: 150 eigenvalues uniform in ``[-1, 1]``;
* ``clustered``: outliers 1, 0.5, 0.3, a bulk in ``[-5.9e-4, 1e-2]`` and 8 negatives near
  ``-1e-3`` (n = 303): negative curvature at ``tol`` of the norm.

``--guard-steps`` sets ``jupyter_curvature.spectral.eigenpairs.GUARD_STEPS``. Product counts
do not depend on the machine's speed.

    OMP_NUM_THREADS=1 python benchmarks/bench_dense_end.py --family audit --seeds 200
    OMP_NUM_THREADS=1 python benchmarks/bench_dense_end.py --family audit --seeds 200 --guard-steps 3
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jupyter_curvature.spectral import eigenpairs  # noqa: E402

RULE = importlib.import_module("jupyter_curvature.spectral.eigenpairs")
F64 = torch.float64


def rotated(eigenvalues: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = eigenvalues.numel()
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    return (Q * eigenvalues) @ Q.T


def audit(seed: int, which: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    sign = 1.0 if which == "LA" else -1.0
    ev = torch.cat(
        [torch.tensor([-1.0, -0.9], dtype=F64), torch.rand(78, generator=gen, dtype=F64) * 20]
    )
    return rotated(sign * ev, gen)


def outliers(seed: int, which: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + seed)
    bulk = torch.randn(114, generator=gen, dtype=F64).clamp(-3, 3)
    top = 5 + 45 * torch.rand(6, generator=gen, dtype=F64)
    bottom = -(5 + 15 * torch.rand(5, generator=gen, dtype=F64))
    return rotated(torch.cat([top, bottom, bulk]), gen)


def uniform(seed: int, which: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3000 + seed)
    return rotated(torch.rand(150, generator=gen, dtype=F64) * 2 - 1, gen)


def clustered(seed: int, which: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2000 + seed)
    negative = -1e-3 * (1 + 0.01 * torch.arange(8, dtype=F64))
    bulk = torch.linspace(-0.59e-3, 1e-2, 292, dtype=F64)
    return rotated(torch.cat([negative, bulk, torch.tensor([1.0, 0.5, 0.3], dtype=F64)]), gen)


FAMILIES = {"audit": audit, "outliers": outliers, "uniform": uniform, "clustered": clustered}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="audit")
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--guard-steps", type=int, default=RULE.GUARD_STEPS)
    args = parser.parse_args(argv)
    RULE.GUARD_STEPS = args.guard_steps
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    for which in ("LA", "SA"):
        misses = unconverged = products = 0
        worst = 0.0
        for seed in range(args.seeds):
            A = FAMILIES[args.family](seed, which)
            r = eigenpairs(A, k=5, which=which, tol=1e-3, seed=seed)
            exact = torch.linalg.eigvalsh(A)
            exact = exact.flip(0)[:5] if which == "LA" else exact[:5]
            error = float((r.eigenvalues - exact).abs().max()) / (r.tol * r.scale)
            products += r.num_matvecs
            unconverged += not r.converged
            if r.converged and error > 1:
                misses += 1
                worst = max(worst, error)
        print(
            f"{args.family} {which} guard_steps={args.guard_steps}: {misses}/{args.seeds} certified "
            f"sets skipped an eigenvalue (worst error {worst:.1f} tol*scale), {unconverged} "
            f"unconverged, {products / args.seeds:.1f} products on average"
        )


if __name__ == "__main__":
    main()
