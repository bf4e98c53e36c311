"""The spread of the digits test accuracy over seeds and CPU kernels, per optimiser.

``tests/test_optim.py::test_trains_the_small_cnn_on_digits`` asserts a test accuracy after 8
epochs of the small CNN on the built-in digits. The run amplifies rounding: another seed or
another set of ATen CPU kernels (default, AVX2, AVX-512 round differently) sends training
down another path. This script measures that spread, so the test's threshold can sit far
outside it. Run it once per kernel set:

    for k in default avx2; do ATEN_CPU_CAPABILITY=$k python benchmarks/digits_accuracy_spread.py; done

Options: ``--seeds 6 --epochs 8 --optimizers sgd,adam,swats,kfac,kfac_tinv10``.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from jupyter_curvature.data import get_dataset
from jupyter_curvature.models import SmallCNN
from jupyter_curvature.optim import KFAC, SWATS

OPTIMIZERS = {  # the test's settings, plus K-FAC with inverses refreshed within the run
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
    "swats": lambda m: SWATS(m.parameters(), lr=1e-2),
    "kfac": lambda m: KFAC(m, lr=0.05),
    "kfac_tinv10": lambda m: KFAC(m, lr=0.05, factor_interval=1, inverse_interval=10),
}


def accuracy(name: str, seed: int, epochs: int) -> float:
    """The test's training loop: batches of 128 in a seeded order, then test accuracy."""
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = OPTIMIZERS[name](model)
    x, y = get_dataset("digits").tensors
    xt, yt = get_dataset("digits", split="test").tensors
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            out = model(x[idx])
            if hasattr(opt, "wants_fisher") and opt.wants_fisher():
                opt.fisher_backward(out)
            nn.functional.cross_entropy(out, y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return (model(xt).argmax(1) == yt).double().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels = torch.backends.cpu.get_cpu_capability()
    for name in args.optimizers.split(","):
        accs = [accuracy(name, seed, args.epochs) for seed in range(args.seeds)]
        print(
            f"{name:12s} {kernels:8s} min {min(accs):.4f} max {max(accs):.4f} "
            f"mean {statistics.mean(accs):.4f} sd {statistics.stdev(accs):.4f}  "
            + " ".join(f"{a:.4f}" for a in accs),
            flush=True,
        )


if __name__ == "__main__":
    main()
