"""The explorer's exact 21-point line through the landscape engine alone, on any device.

What a slider move costs when the 1D line is computed exactly over all the demo's data
(``small_cnn`` on the built-in digits: 1500 training and 297 test images in batches of 128),
without Jupyter, so it also runs where ipywidgets is not installed (a GPU machine). The floor
is 21 plain forward passes over the same data in ``inference_mode``; the line is
``landscape_1d`` with 21 points along one filter-normalised random direction, train and test
metrics, not progressive. Median of ``--repeats``.

    python benchmarks/bench_line_engine.py --threads 1
    python benchmarks/bench_line_engine.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import markdown_table  # noqa: E402

from jupyter_curvature import landscape, models, tasks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = models.create("small_cnn").eval()
    setup = tasks.resolve_setup(model, "digits", device=args.device)
    model = setup.model.eval()
    dev = args.device
    train = [(x.to(dev), y.to(dev)) for x, y in setup.data]
    test = [(x.to(dev), y.to(dev)) for x, y in setup.test_data]
    batches = train + test
    directions = landscape.random_directions(model, 1, seed=0)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def floor() -> None:
        with torch.inference_mode():
            for _ in range(21):
                for x, y in batches:
                    setup.loss_fn(model(x), y)

    def line() -> None:
        landscape.landscape_1d(
            model,
            setup.loss_fn,
            train,
            directions,
            test_data=test,
            num_points=21,
            progressive=False,
        )

    times = {"floor": [], "line": []}
    for fn in (floor, line):  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in (("floor", floor), ("line", line)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    f, ln = statistics.median(times["floor"]), statistics.median(times["line"])
    where = args.device if args.device == "cpu" else torch.cuda.get_device_name(args.device)
    print(f"small_cnn on the built-in digits ({sum(len(y) for _, y in batches)} images), {where}\n")
    print(
        markdown_table(
            ["what", "ms", "vs floor"],
            [
                ["21 plain forward passes (floor)", f"{f * 1e3:.1f}", "1.00x"],
                [
                    "exact 21-point line, train + test (landscape_1d)",
                    f"{ln * 1e3:.1f}",
                    f"{ln / f:.2f}x",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
