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
import sys
from pathlib import Path

import torch

from jupyter_curvature.optim import KFAC

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_optim import DIGITS, digits_accuracy  # noqa: E402  (the test's own run)

OPTIMIZERS = {name: factory for name, (factory, _) in DIGITS.items()}
# K-FAC with its inverses refreshed within the short run (96 steps < inverse_interval)
OPTIMIZERS["kfac_tinv10"] = lambda m: KFAC(m, lr=0.05, factor_interval=1, inverse_interval=10)


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
        accs = [digits_accuracy(OPTIMIZERS[name], args.epochs, seed) for seed in range(args.seeds)]
        print(
            f"{name:12s} {kernels:8s} min {min(accs):.4f} max {max(accs):.4f} "
            f"mean {statistics.mean(accs):.4f} sd {statistics.stdev(accs):.4f}  "
            + " ".join(f"{a:.4f}" for a in accs),
            flush=True,
        )


if __name__ == "__main__":
    main()
