"""Lightning benchmark: the share of a PyTorch Lightning run spent in the curvature callback.

A ResNet-20 (CIFAR layout, 0.27M parameters) trains with Lightning on CIFAR-shaped data
(batch 128; random images with a fixed linear labelling, so nothing is downloaded), with
:class:`jupyter_curvature.integrations.lightning.CurvatureCallback` checking every 50
optimiser steps, against the same run without the callback. Reported per setting:

* the callback's share of the run: the tracker's own seconds over the run's wall time;
* the wall-time ratio of the run with the callback to the run without;
* the checks made (and skipped by the budget) and the products per check.

Settings: the tracker's default check (top-3 certified, SLQ 30 x 2 on 256 samples) with no
budget; a lean check (top-1 certified on 64 samples, SLQ 10 x 1); and the default check
under the default 15% budget and under a 10% one.

Why the issue's bar (at most 10% with a check every 50 steps) is out of reach for a certified
check: a Hessian product on the 256-sample curvature set costs about 2.5 gradients of 256
samples, about 5 training steps of batch 128; 10% of 50 steps is 5 steps, one product, and a
certified top-1 alone needs at least 3 (``2k + 1``). Measured on an H200 (torch 2.11, TF32
off, 150 steps): default check 85% of the run, lean check 46%.

Run: ``python benchmarks/bench_lightning.py [--quick]`` (``--device cuda`` on a GPU). The rounds interleave the plain and
the checked runs (the machine is shared and noisy); the ratios matter, not the seconds.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table  # noqa: E402

from jupyter_curvature.models import create  # noqa: E402

SETTINGS = {
    "default check, no budget": {"max_overhead": None},
    "lean check (top-1, 64 samples, SLQ 10x1), no budget": {
        "max_overhead": None, "top_k": 1, "num_samples": 64, "num_iters": 10, "num_probes": 1,
    },
    "default check, budget 15% (default)": {},
    "default check, budget 10%": {"max_overhead": 0.10},
}  # fmt: skip


def cifar_like(n: int, seed: int = 0) -> TensorDataset:
    """``n`` random 3x32x32 images labelled by a fixed random linear map (learnable)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    w = torch.randn(3 * 32 * 32, 10, generator=g)
    return TensorDataset(x, (x.flatten(1) @ w).argmax(1))


def run(steps: int, callback_settings: dict | None, seed: int, device: str) -> dict:
    import lightning.pytorch as pl

    from jupyter_curvature.integrations.lightning import CurvatureCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = create("resnet20", num_classes=10)
            self.loss_fn = nn.CrossEntropyLoss()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return self.loss_fn(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    torch.manual_seed(seed)
    module = Module()
    train = DataLoader(cifar_like(128 * 25, seed), batch_size=128, shuffle=True)
    callbacks = []
    if callback_settings is not None:
        held_out = tuple(t.to(device) for t in cifar_like(256, seed + 1).tensors)
        callbacks.append(CurvatureCallback(held_out, every=50, **callback_settings))
    trainer = pl.Trainer(max_steps=steps, callbacks=callbacks, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False,
                         accelerator="gpu" if device.startswith("cuda") else "cpu",
                         devices=1)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, train)
    wall = time.perf_counter() - start
    out = {"wall": wall}
    if callbacks:
        tracker = callbacks[0].tracker
        records = tracker.history
        out.update(
            spent=tracker.spent,
            computed=tracker.computed,
            skipped=tracker.skipped,
            products=statistics.mean(r.get("matvecs", 0) for r in records) if records else 0,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 steps, 1 round")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    steps = args.steps or (200 if args.quick else 500)
    rounds = args.rounds or (1 if args.quick else 3)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads, {steps} "
          f"steps, {rounds} round(s)\n")  # fmt: skip
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    plain: list[float] = []
    for r in range(rounds):
        for name, settings in SETTINGS.items():
            plain.append(run(steps, None, r, args.device)["wall"])  # beside each checked run
            results[name].append({**run(steps, settings, r, args.device), "plain": plain[-1]})
    rows = []
    for name, rs in results.items():
        share = statistics.median(x["spent"] / x["wall"] for x in rs)
        ratio = statistics.median(x["wall"] / x["plain"] for x in rs)
        rows.append([name, f"{share:.1%}", f"{ratio:.2f}", f"{rs[-1]['computed']}",
                     f"{rs[-1]['skipped']}", f"{rs[-1]['products']:.0f}"])  # fmt: skip
    print("### Curvature checks every 50 steps in a Lightning run (ResNet-20, batch 128)\n")
    print(markdown_table(["setting", "callback share of the run", "wall / plain run",
                          "checks made", "skipped by budget", "products per check"], rows))  # fmt: skip
    print(f"\nplain run: median {statistics.median(plain):.1f} s for {steps} steps")


if __name__ == "__main__":
    main()
