"""How often a certified top-k is the wrong set, and what the guard costs, on training Hessians.

A SmallCNN (8x8 digits) trains with SGD (lr 0.01); every 3 steps the top-3 of the Hessian on
256 fixed samples is computed from several start vectors (``tol=1e-3``) and compared with a
tight reference (``tol=1e-10``). ``--guard-steps`` sets how many times ARPACK's ``ncv`` the
stopping rule asks for the guard pair (``jupyter_curvature.spectral.eigenpairs.GUARD_STEPS``;
1 was the rule before, 2 is the default now). Product counts do not depend on the machine's
speed, so this needs no interleaving.

    python benchmarks/bench_misconvergence.py --guard-steps 1 --seeds 6 --epochs 3
    python benchmarks/bench_misconvergence.py --guard-steps 2 --seeds 6 --epochs 3
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jupyter_curvature.data import get_dataset  # noqa: E402
from jupyter_curvature.models import SmallCNN  # noqa: E402
from jupyter_curvature.operators import HessianOperator  # noqa: E402
from jupyter_curvature.spectral import eigenpairs  # noqa: E402
from jupyter_curvature.training import LambdaCallback, Trainer  # noqa: E402

RULE = importlib.import_module("jupyter_curvature.spectral.eigenpairs")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guard-steps", type=int, default=RULE.GUARD_STEPS)
    parser.add_argument("--seeds", type=int, default=6, help="start vectors per check")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    RULE.GUARD_STEPS = args.guard_steps
    train_set = get_dataset("digits", split="train")
    x, y = train_set.tensors
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:256]
    batch = (x[idx], y[idx])
    torch.manual_seed(0)
    model = SmallCNN()
    runs = []

    def check(trainer, logs):
        if logs["step"] % 3:
            return
        op = HessianOperator(trainer.model, torch.nn.functional.cross_entropy, batch)
        exact = eigenpairs(op, k=3, tol=1e-10, seed=99, max_iters=400, warn=False).eigenvalues
        for seed in range(args.seeds):
            r = eigenpairs(op, k=3, tol=1e-3, seed=seed, warn=False)
            wrong = not torch.allclose(r.eigenvalues, exact, rtol=2e-3)
            runs.append((r.num_matvecs, wrong))

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    Trainer(model, opt, train_set, epochs=args.epochs,
            callbacks=[LambdaCallback(on_step_end=check)]).fit()  # fmt: skip
    a = np.array(runs)
    print(f"guard asked for up to {args.guard_steps} x ncv: {len(a)} runs, products mean "
          f"{a[:, 0].mean():.1f} max {a[:, 0].max()}, wrong sets {int(a[:, 1].sum())}")  # fmt: skip


if __name__ == "__main__":
    main()
