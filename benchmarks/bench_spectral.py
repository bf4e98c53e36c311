"""Benchmark: top-5 Hessian eigenvalues and an SLQ spectral density, side by side with peers.

Same model (tanh MLP 64-256-128-10, 50,826 parameters), same data (the 1500 built-in digits
as one batch), same Hessian, float32 on the same device, in one run:

* top-5 eigenvalues to relative accuracy 1e-3: ``jupyter_curvature.eigenpairs`` vs scipy's
  ARPACK ``eigsh`` (through ``op.to_scipy()``, ``tol=1e-3``), PyHessian's deflated power
  iteration (``pyhessian``, ``maxIter=100, tol=1e-3``) and hessian-eigenthings' ``lanczos``
  (``tol=1e-3``); accuracy against a tight float64 reference (``eigenpairs`` at ``tol=1e-10``);
* spectral density, 80 steps x 4 probes: ``spectral_density`` vs hessian-eigenthings'
  ``spectral_density(num_runs=4, lanczos_steps=80)`` and curvlinops'
  ``lanczos_approximate_spectrum(ncv=80, num_repeats=4)``; PyHessian's ``density`` is run and
  its failure on current torch (``torch.eig`` was removed) is reported, not skipped;
* physical limits in the same run: one gradient and one Hessian-vector product over the data.

Times are medians of ``--repeats`` runs (the top-5 section: one run per start vector,
``--seeds``, with the mean number of products); the machine is shared and noisy: read the
ratios. Every method runs in the same process with the same torch threads (``--threads``).
Ours uses its defaults: a kept gradient graph (the data is one batch, so keeping it costs no
extra peak memory) and GPyTorch's Lanczos with its basis contractions as GEMVs; a
``keep_graphs=False`` row shows the fresh-graph product. PyHessian keeps its graph too; ARPACK
gets the same kept-graph operator as ours.
Peers are optional (``pip install jupyter_curvature[bench]``); a missing or failing peer is
reported in the table with the reason.

Usage: ``python benchmarks/bench_spectral.py [--quick] [--device cuda] [--repeats 3] [--seeds 3]
[--threads 2] [--only eigen|density] [--profile]`` (``--profile``: where the time of one
density run goes, op by op, with the host-device waits)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import he_operator_factory, pyhessian_top  # noqa: E402

from jupyter_curvature.data.builtin import digits_dataset
from jupyter_curvature.models.small import MLP
from jupyter_curvature.operators import HessianOperator
from jupyter_curvature.spectral import eigenpairs, spectral_density

warnings.filterwarnings("ignore")


def problem(device: str, dtype: torch.dtype, hidden=(256, 128), limit=None, steps=60, lr=1e-3):
    torch.manual_seed(0)
    model = MLP(hidden=hidden).to(device=device, dtype=dtype)
    data = digits_dataset("train", flatten=True, dtype=dtype, limit=limit)
    x, y = data.tensors[0].to(device), data.tensors[1].to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):  # by default briefly trained: outliers separated from the bulk
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model, nn.CrossEntropyLoss(), x, y


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def peer(name, fn, repeats):
    try:
        return timed(fn, repeats)
    except Exception as exc:  # a peer that does not run on current torch is reported, not hidden
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:110]
        print(f"  [{name}] failed: {msg}")
        if "--trace" in __import__("sys").argv:
            traceback.print_exc()
        return None, msg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small model, 1 repeat")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trace", action="store_true", help="print peer tracebacks")
    ap.add_argument("--only", choices=["eigen", "density"], help="run one section")
    ap.add_argument("--seeds", type=int, default=3, help="start vectors for the top-5 section")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads for every method")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="profile one 80 x 4 density run of ours (torch.profiler) instead of the benchmark",
    )
    args = ap.parse_args()
    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 1 if args.quick else args.repeats
    hidden, limit = ((64,), 500) if args.quick else ((256, 128), None)
    if dev.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model, loss_fn, x, y = problem(dev, torch.float32, hidden, limit)
    op = HessianOperator(model, loss_fn, (x, y))
    n = op.shape[0]
    print(
        f"# Spectral benchmark: MLP {hidden}, n = {n:,} parameters, {len(y)} samples, "
        f"float32, {dev}, torch {torch.__version__}, median of {reps}\n"
    )

    # ---------------------------------------------------------------- physical limits
    def gradient():
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        model.zero_grad(set_to_none=True)

    v = torch.randn(n, 1, device=dev)
    t_grad, _ = timed(gradient, max(reps, 5))
    t_hvp, _ = timed(lambda: op @ v, max(reps, 5))
    v4 = torch.randn(n, 4, device=dev)
    t_hvp4, _ = timed(lambda: op @ v4, max(reps, 5))
    kept = HessianOperator(model, loss_fn, (x, y), keep_graphs=True)
    kept @ v  # builds the graph
    t_kept, _ = timed(lambda: kept @ v, max(reps, 5))
    t_kept4, _ = timed(lambda: kept @ v4, max(reps, 5))
    kept.release_graphs()
    limits = {"hvp": t_hvp, "hvp4": t_hvp4, "kept": t_kept, "kept4": t_kept4}
    print(
        f"gradient {t_grad * 1e3:.2f} ms; HVP {t_hvp * 1e3:.2f} ms ({t_hvp / t_grad:.2f}x gradient); "
        f"block of 4 HVPs {t_hvp4 * 1e3:.2f} ms ({t_hvp4 / t_hvp:.2f}x one HVP); "
        f"through a kept graph: HVP {t_kept * 1e3:.2f} ms ({t_kept / t_grad:.2f}x gradient), "
        f"block of 4 {t_kept4 * 1e3:.2f} ms\n"
    )

    if args.profile:
        profile_density(op, dev)
        return
    if args.only != "density":
        top5(args, model, loss_fn, x, y, op, dev, reps, hidden)
    if args.only != "eigen":
        density(model, loss_fn, x, y, op, dev, reps, limits)


def top5(args, model, loss_fn, x, y, op, dev, reps, hidden):
    # ---------------------------------------------------------------- reference
    m64 = MLP(hidden=hidden).to(device=dev, dtype=torch.float64)
    m64.load_state_dict({k: w.double() for k, w in model.state_dict().items()})
    ref = eigenpairs(HessianOperator(m64, loss_fn, (x.double(), y)), k=5, tol=1e-10).eigenvalues
    lam = float(ref.abs().max())
    seeds = list(range(args.seeds))

    def err(vals) -> float:
        vals = torch.as_tensor(
            sorted([float(a) for a in vals], reverse=True)[:5], dtype=torch.float64
        )
        return float((vals - ref.cpu()).abs().max() / lam)

    def over_seeds(name, run):
        """``run(seed) -> (eigenvalues, products, note)`` once per seed: mean products,
        median wall time, worst error; or the failure, reported."""
        times, products, errors, note = [], [], [], ""
        for seed in seeds:
            t, out = peer(name, lambda s=seed: run(s), 1)
            if t is None:
                return (name, None, None, None, out)
            vals, mv, note = out
            times.append(t)
            products.append(mv)
            errors.append(err(vals))
        return (
            name,
            statistics.mean(products),
            statistics.median(times),
            max(errors),
            f"{note}; products per seed {products}",
        )

    rows = []

    # ours: kept gradient graph (the default when it fits), and a fresh graph per product
    def ours(keep):
        def run(seed):
            r = eigenpairs(op, k=5, tol=1e-3, seed=seed, keep_graphs=keep)
            overhead = 1 - r.product_seconds / r.seconds
            note = (
                f"certified: max rel. residual {float(r.relative_residuals.max()):.1e}; "
                f"Lanczos + tridiagonal {overhead:.1%} of the time"
            )
            return r.eigenvalues, r.num_matvecs, note

        return run

    rows.append(over_seeds("jupyter_curvature.eigenpairs (kept graph, default)", ours(None)))
    rows.append(over_seeds("jupyter_curvature.eigenpairs keep_graphs=False", ours(False)))

    # ARPACK on the same operator with the same (kept-graph) product
    from scipy.sparse.linalg import eigsh

    def arpack(seed):
        sop = HessianOperator(model, loss_fn, (x, y), keep_graphs=True)
        v0 = torch.randn(sop.shape[0], generator=torch.Generator().manual_seed(seed)).numpy()
        vals = eigsh(sop.to_scipy(), k=5, which="LA", tol=1e-3, v0=v0)[0]
        return vals, sop.num_matvecs, "kept-graph operator as ours; no residuals returned"

    rows.append(over_seeds("scipy ARPACK eigsh (tol 1e-3)", arpack))

    # PyHessian
    ph_run = pyhessian_top(model, loss_fn, [(x, y)], dev)
    if ph_run is not None:

        def pyh(seed):
            vals, count = ph_run(seed)
            return vals, count, "deflated power iteration (its graph kept, as ours)"

        rows.append(over_seeds("PyHessian eigenvalues(top_n=5)", pyh))
    else:
        rows.append(("PyHessian", None, None, None, "not installed (pip install pyhessian)"))

    # hessian-eigenthings
    he_op = he_operator_factory(model, loss_fn, [(x, y)])
    if he_op is not None:
        import hessian_eigenthings as he

        def he_top(seed):
            o = he_op()
            res = he.lanczos(o, k=5, which="LA", tol=1e-3, seed=seed)
            return res.eigenvalues, o._count, "default Lanczos"

        rows.append(over_seeds("hessian-eigenthings lanczos (tol 1e-3)", he_top))
    else:
        rows.append(("hessian-eigenthings", None, None, None, "not installed"))

    _, mv_ours, t_ours, _, _ = rows[0]
    print(f"## Top-5 Hessian eigenvalues, relative accuracy 1e-3 (seeds {seeds})\n")
    print(
        "| method | products (mean) | wall time (s, median) | time / ours | products / ours "
        "| max error / lambda_max | note |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, mv, t, e, note in rows:
        if t is None:
            print(f"| {name} | - | - | - | - | - | {note} |")
            continue
        print(
            f"| {name} | {mv:.1f} | {t:.3f} | {t / t_ours:.2f} | {mv / mv_ours:.2f} | {e:.1e} "
            f"| {note} |"
        )
    print(f"\nreference top-5 (float64, tol 1e-10): {[f'{float(a):.6g}' for a in ref]}\n")


def profile_density(op, dev: str) -> None:
    """Where the time of our 80 x 4 density goes: the operator's products against the
    Lanczos work (GPyTorch's loop, its basis contractions, our bookkeeping), op by op, and
    how often the host waits for the device (each wait ends the overlap of Python and GPU)."""
    from torch.profiler import ProfilerActivity, profile

    spectral_density(op, num_iters=10, num_probes=4)  # warm-up
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if dev.startswith("cuda") else []
    )
    with profile(activities=activities) as prof:
        s = spectral_density(op, num_iters=80, num_probes=4)
    print(
        f"density 80 x 4: {s.seconds:.3f} s, products {s.product_seconds:.3f} s, Lanczos and "
        f"bookkeeping {s.seconds - s.product_seconds:.3f} s "
        f"({1 - s.product_seconds / s.seconds:.1%})\n"
    )
    key = "self_cuda_time_total" if dev.startswith("cuda") else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=20))
    syncs = [e for e in prof.key_averages() if "Synchronize" in e.key or "Memcpy" in e.key]
    for e in syncs:
        print(f"{e.key}: {e.count} calls, {e.cpu_time_total / 1e3:.1f} ms on the host")


def density(model, loss_fn, x, y, op, dev, reps, limits):
    # ---------------------------------------------------------------- density
    he_op = he_operator_factory(model, loss_fn, [(x, y)])
    drows = []

    def ours(keep):
        return lambda: spectral_density(op, num_iters=80, num_probes=4, keep_graphs=keep)

    t_d, s = timed(ours(None), reps)
    drows.append(
        (
            "jupyter_curvature.spectral_density (4 probes, one block, kept graph: the default)",
            t_d,
            f"{s.num_matvecs} products {s.product_seconds:.2f} s; Lanczos + tridiagonal "
            f"{s.seconds - s.product_seconds:.2f} s = {1 - s.product_seconds / s.seconds:.1%}",
        )
    )
    t_f, sf = timed(ours(False), reps)
    drows.append(
        (
            "jupyter_curvature.spectral_density keep_graphs=False",
            t_f,
            f"fresh graph per block: products {sf.product_seconds:.2f} s; Lanczos + tridiagonal "
            f"{1 - sf.product_seconds / sf.seconds:.1%}",
        )
    )
    t_1, _ = timed(lambda: [spectral_density(op, 80, 1, seed=i) for i in range(4)], reps)
    drows.append(("4 separate single-probe runs (ours, kept graph)", t_1, "what the block saves"))
    if he_op is not None:
        import hessian_eigenthings as he

        t, out = peer(
            "hessian-eigenthings density",
            lambda: he.spectral_density(he_op(), num_runs=4, lanczos_steps=80, seed=0),
            reps,
        )
        drows.append(("hessian-eigenthings spectral_density", t, "" if t else out))
    try:
        from curvlinops import HessianLinearOperator
        from curvlinops.papyan2020traces.spectrum import lanczos_approximate_spectrum

        def cl():
            H = HessianLinearOperator(
                model, loss_fn, list(model.parameters()), [(x, y)], check_deterministic=False
            )
            return lanczos_approximate_spectrum(H, ncv=80, num_repeats=4)

        t, out = peer("curvlinops", cl, reps)
        drows.append(("curvlinops lanczos_approximate_spectrum", t, "" if t else out))
    except ImportError as exc:
        drows.append(("curvlinops", None, f"not importable: {exc}"))
    try:
        import pyhessian

        t, out = peer(
            "pyhessian density",
            lambda: pyhessian.hessian(
                model, loss_fn, data=(x, y), cuda=dev.startswith("cuda")
            ).density(iter=80, n_v=4),
            1,
        )
        drows.append(
            (
                "PyHessian density(iter=80, n_v=4)",
                t,
                "" if t else f"fails on torch {torch.__version__}: {out}",
            )
        )
    except ImportError:
        drows.append(("PyHessian density", None, "not installed"))

    print("## Spectral density, 80 Lanczos steps x 4 probes\n")
    print(
        f"physical floor: 320 fresh HVPs = {320 * limits['hvp']:.2f} s; 80 fresh blocks of 4 = "
        f"{80 * limits['hvp4']:.2f} s; 80 blocks of 4 through a kept graph = "
        f"{80 * limits['kept4']:.2f} s\n"
    )
    print("| method | wall time (s) | time / ours | note |")
    print("|---|---|---|---|")
    for name, t, note in drows:
        if t is None:
            print(f"| {name} | - | - | {note} |")
        else:
            print(f"| {name} | {t:.3f} | {t / t_d:.2f} | {note} |")
    print(
        f"\nours: {s.stats.num_outliers} outliers {[f'{v:.4g}' for v in s.stats.outliers]}, "
        f"trace ~ {s.stats.trace:.4g} +- {s.stats.trace_stderr:.2g}, negative mass {s.stats.negative_mass:.3g}"
    )


if __name__ == "__main__":
    main()
