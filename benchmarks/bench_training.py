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

4. **Warm starts** (``--part warm``): the products of the certified top-3 (tol 1e-3 and
   1e-6) at each check of a training run, warm-started from the last check's eigenvectors
   (:func:`jupyter_curvature.spectral.warm_eigenpairs`) against a cold start, on the same
   operator: the README's run (K-FAC, lr 0.05, a check every epoch) and a slower drift (SGD,
   lr 0.01, a check every 3 steps). Target: at least 2x fewer products.
5. **The README's** ``%%curv_train`` **example under the default budget** (``--part readme``):
   ``tasks.train("small_cnn", "digits", optimizer="kfac", lr=0.05, epochs=5,
   spectrum_every=12, max_overhead=0.15)`` (the engine path of the magic, without the
   dashboard), with and without warm starts: the share of the wall time in curvature, the
   checks per epoch, whether each top-3 was certified, and the SLQ steps the budget chose.
   Target: at most 20% in curvature, at least one check per epoch.

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


def warm_products(optimizer: str, lr: float, every: int, epochs: int, tols=(1e-3, 1e-6)):
    """Products of the certified top-3 per check, cold and warm, on the same operators."""
    from jupyter_curvature.operators import HessianOperator
    from jupyter_curvature.spectral import eigenpairs, warm_eigenpairs
    from jupyter_curvature.training import LambdaCallback

    train_set, _ = data()
    x, y = train_set.tensors
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:256]
    batch = (x[idx], y[idx])
    torch.manual_seed(0)
    model = SmallCNN()
    opt = KFAC(model, lr=lr) if optimizer == "kfac" else torch.optim.SGD(model.parameters(), lr=lr)
    last: dict[float, torch.Tensor | None] = dict.fromkeys(tols)
    counts: dict[float, list[tuple[int, int]]] = {t: [] for t in tols}

    def check(trainer, logs):
        if logs["step"] % every:
            return
        op = HessianOperator(trainer.model, torch.nn.functional.cross_entropy, batch)
        for tol in tols:
            cold = eigenpairs(op, k=3, tol=tol, warn=False)
            if last[tol] is not None:
                warm = warm_eigenpairs(op, k=3, start=last[tol], tol=tol, warn=False)
                assert warm.converged and cold.converged
                counts[tol].append((cold.num_matvecs, warm.num_matvecs))
                last[tol] = warm.eigenvectors
            else:
                last[tol] = cold.eigenvectors

    Trainer(
        model, opt, train_set, epochs=epochs, callbacks=[LambdaCallback(on_step_end=check)]
    ).fit()
    return counts


def report_warm(quick: bool) -> None:
    print("\n### Certified top-3 per check: products, cold start against warm start\n")
    rows = []
    for label, optimizer, lr, every, epochs in (
        ("README run (K-FAC, lr 0.05), every 12 steps", "kfac", 0.05, 12, 5),
        ("SGD lr 0.01, every 3 steps", "sgd", 0.01, 3, 2 if quick else 5),
    ):
        for tol, pairs in warm_products(optimizer, lr, every, epochs).items():
            cold = sum(c for c, _ in pairs)
            warm = sum(w for _, w in pairs)
            rows.append([label, f"{tol:g}", len(pairs), f"{cold / len(pairs):.1f}",
                         f"{warm / len(pairs):.1f}", f"{cold / warm:.2f}"])  # fmt: skip
    print(markdown_table(
        ["run", "tol", "checks", "cold products / check", "warm products / check", "cold / warm"],
        rows,
    ))  # fmt: skip


def readme_budget(warm_start: bool, max_overhead: float | None = 0.15) -> dict:
    """The README's %%curv_train line on the engine path, default budget (0.15)."""
    from jupyter_curvature import tasks
    from jupyter_curvature.training import CurvatureCallback

    start = time.perf_counter()
    run = tasks.train("small_cnn", "digits", optimizer="kfac", lr=0.05, epochs=5,
                      spectrum_every=12, max_overhead=max_overhead, warm_start=warm_start)  # fmt: skip
    wall = time.perf_counter() - start
    cb = next(c for c in run.trainer.callbacks if isinstance(c, CurvatureCallback))
    records = run.trainer.history.curvature
    epochs = {r["epoch"] for r in records}
    return {
        "wall": wall,
        "curvature": cb.spent,
        "checks": cb.computed,
        "skipped": cb.skipped,
        "epochs with a check": len(epochs),
        "certified": all(r.get("converged") for r in records) if records else "n/a",
        "num_iters": [r["num_iters"] for r in records],
        "eigen products": [r.get("eigen_matvecs") for r in records],
    }


def report_readme(repeats: int) -> None:
    print("\n### The README's %%curv_train example (a check every 12 steps = every epoch)\n")
    settings = [(True, 0.15), (False, 0.15), (True, None), (False, None)]
    runs: dict[tuple, list[dict]] = {key: [] for key in settings}
    readme_budget(True)  # warm-up: imports, dataset files
    for _ in range(repeats):
        for key in settings:
            runs[key].append(readme_budget(*key))
    rows = []
    for (warm, budget), results in runs.items():
        share = [r["curvature"] / r["wall"] for r in results]
        mid = results[sorted(range(len(share)), key=share.__getitem__)[len(share) // 2]]
        rows.append([
            "warm" if warm else "cold", "none" if budget is None else budget, f"{mid['wall']:.2f}", f"{mid['curvature']:.2f}",
            f"{statistics.median(share):.1%}", f"{mid['checks']} ({mid['skipped']} skipped)",
            f"{mid['epochs with a check']} of 5", mid["certified"],
            " ".join(map(str, mid["num_iters"])), " ".join(map(str, mid["eigen products"])),
        ])  # fmt: skip
    print(markdown_table(
        ["start", "max_overhead", "wall (s)", "curvature (s)", "share (median)", "checks", "epochs with a check",
         "top-3 certified", "SLQ steps chosen", "top-3 products"],
        rows,
    ))  # fmt: skip


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
    parser.add_argument(
        "--part", choices=["all", "overhead", "steps", "epochs", "warm", "readme"], default="all"
    )
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    epochs = 10 if args.quick else 30
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, repeats {repeats}\n")

    if args.part in ("all", "overhead"):
        report_overhead(epochs, repeats)
    if args.part in ("all", "warm"):
        report_warm(args.quick)
    if args.part in ("all", "readme"):
        report_readme(repeats)
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
