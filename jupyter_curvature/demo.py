"""The README's main job: train a small CNN on the built-in digits and report its curvature.

Offline and CPU-friendly (a few minutes on two cores). It writes to ``--out``:

* ``train/``: checkpoints, ``history.json``, ``training.png`` (loss and accuracy curves);
* ``hessian_density.{npz,png}``, ``ggn_density.{npz,png}``, ``*_spectrum.json``: SLQ spectral
  densities and certified top eigenpairs of the Hessian and the Gauss-Newton matrix;
* ``stats.json``: gradient, curvature and weight statistics and the per-layer table;
* ``landscape_1d.{npz,png}``, ``landscape_2d.{npz,png}``: the loss along the top eigenvectors;
* ``report.md`` / ``report.json``: the summary printed at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from . import jobs
from .core.files import atomic_write_text


def run_demo(
    out: Path | str = "curvature-demo", *, epochs: int = 8, quick: bool = False, seed: int = 0
) -> dict:
    """Run the demo and return the report (also printed and saved)."""
    out = Path(out)
    start = time.perf_counter()
    if quick:
        epochs = min(epochs, 3)
    iters, probes, points = (30, 2, 11) if quick else (80, 4, 21)
    print(f"[1/4] training small_cnn on the built-in digits for {epochs} epochs ...", flush=True)
    trained = jobs.train_job(
        "small_cnn", "digits", out / "train", epochs=epochs, seed=seed, progress=True
    )
    trainer = trained["trainer"]
    setup = jobs.build_setup("small_cnn", "digits", network=trainer.model, seed=seed)

    print(
        f"[2/4] Hessian and GGN spectra (SLQ: {iters} steps x {probes} probes; top-5 certified) ...",
        flush=True,
    )
    hessian = jobs.spectrum_job(
        setup, out, curvature="hessian", iters=iters, probes=probes, seed=seed
    )
    ggn = jobs.spectrum_job(setup, out, curvature="ggn", iters=iters, probes=probes, seed=seed)

    print("[3/4] gradient, curvature and weight statistics ...", flush=True)
    stats = jobs.stats_job(setup, out, probes=4 if quick else 8, layers=True, seed=seed)

    print("[4/4] loss landscape along the top two Hessian eigenvectors ...", flush=True)
    landscape = jobs.landscape_job(
        setup, out, directions="top:2", points=points, eig=hessian["eigenpairs"], seed=seed
    )

    report = _report(trainer, hessian, ggn, stats, landscape, time.perf_counter() - start)
    text = _markdown(report)
    print("\n" + text)
    if jobs._is_writer():
        atomic_write_text(out / "report.md", text)
        atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=jobs._jsonable))
        print(f"results, figures and the report are in {out.resolve()}")
    return report


def _report(trainer, hessian, ggn, stats, landscape, seconds: float) -> dict:
    last = trainer.history.to_dict()["epochs"][-1]
    line = landscape["line"]
    return {
        "model": "small_cnn",
        "data": "digits (scikit-learn, 1500 train / 297 test)",
        "parameters": hessian["summary"]["num_parameters"],
        "train_accuracy": last.get("train_accuracy"),
        "test_accuracy": last.get("test_accuracy"),
        "train_loss": last.get("train_loss"),
        "test_loss": last.get("test_loss"),
        "hessian": hessian["summary"],
        "ggn": ggn["summary"],
        "gradient": stats["gradient"].to_dict(),
        "hessian_statistics": stats["hessian"].to_dict(),
        "weights": stats["weights"].to_dict(),
        "landscape_max_train_loss": float(line.metric("train_loss").max()),
        "seconds": seconds,
    }


def _markdown(r: dict) -> str:
    h, g = r["hessian"], r["ggn"]
    hs, gs = h["stats"], g["stats"]

    def top(values):
        return ", ".join(f"{v:.4g}" for v in values)

    return "\n".join(
        [
            "# Curvature report: small_cnn on the built-in digits",
            "",
            f"- parameters: {r['parameters']:,}",
            f"- train accuracy {r['train_accuracy']:.3f}, test accuracy {r['test_accuracy']:.3f} "
            f"(loss {r['train_loss']:.4f} / {r['test_loss']:.4f})",
            "",
            "| | Hessian | GGN |",
            "|---|---|---|",
            f"| top-5 eigenvalues (certified) | {top(h['top_eigenvalues'])} | {top(g['top_eigenvalues'])} |",
            f"| all converged (residual <= 1e-3 x scale) | {h['top_converged']} | {g['top_converged']} |",
            f"| smallest Ritz value | {hs.get('smallest', float('nan')):.4g} | {gs.get('smallest', float('nan')):.4g} |",
            f"| trace estimate (SLQ) | {hs.get('trace', float('nan')):.4g} | {gs.get('trace', float('nan')):.4g} |",
            f"| negative mass | {hs.get('negative_mass', float('nan')):.4g} | {gs.get('negative_mass', float('nan')):.4g} |",
            f"| operator products | {h['num_matvecs']} | {g['num_matvecs']} |",
            "",
            f"- gradient: {_pick(r['gradient'], 'grad_mean_norm_sq', 'mean_norm_sq')}",
            f"- weights: {_pick(r['weights'], 'l2', 'total_l2')}",
            f"- landscape: train loss rises to {r['landscape_max_train_loss']:.4g} at the edge of the "
            "top-eigenvector line",
            f"- total time {r['seconds']:.0f} s",
        ]
    )


def _pick(record: dict, *keys: str) -> str:
    for key in keys:
        if key in record:
            return f"{key} = {record[key]}"
    return ", ".join(
        f"{k} = {v}" for k, v in list(record.items())[:3] if not isinstance(v, (list, dict))
    )
