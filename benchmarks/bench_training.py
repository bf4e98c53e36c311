"""Training benchmark: live-spectra overhead, K-FAC's step cost, epochs to a stated accuracy.

All on the small CNN (``SmallCNN``, 8x8 digits, batch 128), in one run, as ratios:

1. **Live spectra**: wall time of training with a default ``CurvatureCallback`` (Hessian
   SLQ, 20 Lanczos steps, 1 probe, 256 samples, every 50 steps, overhead budget 15%)
   over the same training without it. Target: at most 1.20.
2. **Step cost**: median time of one training step (forward, backward, update; K-FAC
   with its defaults TCov=10, TInv=100, so the factor and inverse updates are amortised
   as in training) for SGD, Adam, SWATS and K-FAC, as a ratio to SGD's.
3. **Epochs to accuracy**: epochs each optimiser needs to reach 95% test accuracy on the
   digits (the learning rates of the optimiser tests), at most 30.

Run: ``python benchmarks/bench_training.py`` (``--quick`` for fewer repeats). The machine
is shared and noisy: medians of several repeats; the ratios matter, not the seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table  # noqa: E402

from jupyter_curvature.data import get_dataset  # noqa: E402
from jupyter_curvature.models import SmallCNN  # noqa: E402
from jupyter_curvature.optim import KFAC, SWATS  # noqa: E402
from jupyter_curvature.training import CurvatureCallback, Trainer  # noqa: E402

TARGET = 0.95
OPTIMISERS = {
    "SGD (lr 0.1, momentum 0.9)": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
    "Adam (lr 1e-2)": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
    "SWATS (lr 1e-2)": lambda m: SWATS(m.parameters(), lr=1e-2),
    "K-FAC (lr 0.05)": lambda m: KFAC(m, lr=0.05),
}


def data():
    return get_dataset("digits"), get_dataset("digits", split="test")


def overhead(epochs: int, repeats: int) -> tuple[float, float, float, int, int]:
    train_set, test_set = data()
    plain, live, counts = [], [], []
    for r in range(repeats):
        for mode in ("plain", "live"):
            torch.manual_seed(r)
            model = SmallCNN()
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            cbs = [CurvatureCallback()] if mode == "live" else []
            trainer = Trainer(model, opt, train_set, test_set, epochs=epochs, callbacks=cbs)
            start = time.perf_counter()
            trainer.fit()
            (live if mode == "live" else plain).append(time.perf_counter() - start)
            if cbs:
                counts.append((cbs[0].computed, cbs[0].skipped))
    p, lv = statistics.median(plain), statistics.median(live)
    computed, skipped = counts[len(counts) // 2]
    return p, lv, lv / p, computed, skipped


def step_costs(steps: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Median ms/step and median ratio to SGD. The optimisers take turns step by step, so
    each ratio compares steps made under the same machine load."""
    x, y = get_dataset("digits").tensors
    times: dict[str, list[float]] = {name: [] for name in OPTIMISERS}
    ratios: dict[str, list[float]] = {name: [] for name in OPTIMISERS}
    for r in range(repeats):
        g = torch.Generator().manual_seed(r)
        batches = [torch.randint(0, len(x), (128,), generator=g) for _ in range(steps)]
        runs = {}
        for name, factory in OPTIMISERS.items():
            torch.manual_seed(r)
            model = SmallCNN()
            runs[name] = (model, factory(model))

        def one(idx, model, opt):
            opt.zero_grad(set_to_none=True)
            outputs = model(x[idx])
            if hasattr(opt, "wants_fisher") and opt.wants_fisher():
                opt.fisher_backward(outputs)
            torch.nn.functional.cross_entropy(outputs, y[idx]).backward()
            opt.step()

        this = dict.fromkeys(OPTIMISERS, 0.0)
        for k, idx in enumerate(batches):
            for name, (model, opt) in runs.items():
                start = time.perf_counter()
                one(idx, model, opt)
                if k:  # the first step (K-FAC's first factors and inverses) is a warm-up
                    this[name] += time.perf_counter() - start
        base = this[next(iter(OPTIMISERS))]
        for name, t in this.items():
            times[name].append(t / (steps - 1))
            ratios[name].append(t / base)
    return {n: (statistics.median(times[n]), statistics.median(ratios[n])) for n in OPTIMISERS}


def epochs_to_accuracy(max_epochs: int) -> dict[str, tuple[int | None, float]]:
    train_set, test_set = data()
    out = {}
    for name, factory in OPTIMISERS.items():
        torch.manual_seed(0)
        model = SmallCNN()
        reached: list[int] = []

        def check(trainer, logs, reached=reached):
            if logs.get("test_accuracy", 0) >= TARGET and not reached:
                reached.append(logs["epoch"])
                trainer.stop()

        from jupyter_curvature.training import LambdaCallback

        trainer = Trainer(model, factory(model), train_set, test_set, epochs=max_epochs,
                          callbacks=[LambdaCallback(on_epoch_end=check)])  # fmt: skip
        trainer.fit()
        out[name] = (reached[0] if reached else None, trainer.history.epochs[-1]["test_accuracy"])
    return out


def report_overhead(epochs: int, repeats: int) -> None:
    p, lv, ratio, computed, skipped = overhead(epochs, repeats)
    print("### Live spectra on the small CNN (default CurvatureCallback)\n")
    print(markdown_table(
        ["epochs", "steps", "plain (s)", "with spectra (s)", "ratio", "spectra computed", "skipped by budget"],
        [[epochs, epochs * 12, f"{p:.2f}", f"{lv:.2f}", f"{ratio:.3f}", computed, skipped]],
    ))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and epochs")
    parser.add_argument("--part", choices=["all", "overhead", "steps", "epochs"], default="all")
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    epochs = 10 if args.quick else 30
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, repeats {repeats}\n")

    if args.part in ("all", "overhead"):
        report_overhead(epochs, repeats)
    if args.part in ("all", "steps"):
        costs = step_costs(60 if args.quick else 200, repeats)
        print("\n### Step cost (forward + backward + update, batch 128)\n")
        print(markdown_table(
            ["optimiser", "ms / step", "ratio to SGD (median of paired repeats)"],
            [[k, f"{t * 1e3:.2f}", f"{ratio:.2f}"] for k, (t, ratio) in costs.items()],
        ))  # fmt: skip
    if args.part not in ("all", "epochs"):
        return
    reached = epochs_to_accuracy(30)
    print(f"\n### Epochs to {TARGET:.0%} test accuracy on the digits (at most 30)\n")
    print(markdown_table(
        ["optimiser", "epochs", "final test accuracy"],
        [[k, v[0] if v[0] is not None else "> 30", f"{v[1]:.3f}"] for k, v in reached.items()],
    ))  # fmt: skip


if __name__ == "__main__":
    main()
