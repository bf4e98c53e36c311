"""The report task (``jupyter-curvature demo``, the README's main job): train a small CNN on
the built-in digits and report its curvature.

Offline and CPU-friendly (a few minutes on two cores). It writes to ``out``:

* ``train/``: checkpoints, ``history.json``, ``training.png`` (loss and accuracy curves);
* ``hessian_density.{npz,png}``, ``ggn_density.{npz,png}``, ``*_spectrum.json``: SLQ spectral
  densities and certified top eigenpairs of the Hessian and the Gauss-Newton matrix;
* ``stats.json``: gradient, curvature and weight statistics and the per-layer table;
* ``landscape_1d.{npz,png}``, ``landscape_2d.{npz,png}``: the loss along the top eigenvectors;
* ``report.md`` / ``report.json``: the summary printed at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.files import atomic_write_text
from ..core.progress import Cancelled
from .landscape import landscape
from .names import resolve_setup
from .outputs import is_writer, output_folder, save_json
from .spectrum import spectrum
from .stats import statistics
from .train import train

__all__ = ["Report", "report", "stop_if_interrupted"]


@dataclass
class Report:
    """What :func:`report` returns: the summary (``to_dict()``) and the results behind it."""

    summary: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the summary as Markdown (default: the digits report's)
    render: Callable[[dict[str, Any]], str] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The summary (JSON-ready)."""
        return dict(self.summary)

    def __getitem__(self, key: str) -> Any:
        return self.summary[key]

    def markdown(self) -> str:
        """The summary as Markdown (``report.md``)."""
        return (self.render or _markdown)(self.summary)

    def plot(self) -> Any:
        """The Hessian spectral density (the other figures: ``results[...]``'s ``plot()``)."""
        return self.results["hessian"].plot()

    def save(self, out: str | Path) -> Path:
        """``report.md`` and ``report.json`` in ``out`` (NaN as ``null``)."""
        out = output_folder(out)
        if is_writer():
            atomic_write_text(out / "report.md", self.markdown())
        save_json(out / "report.json", self.to_dict())
        return out


def report(
    out: str | Path = "curvature-demo", *, epochs: int = 8, quick: bool = False, seed: int = 0
) -> Report:
    """Run the demo: train, spectra, statistics, landscape; print and save the report.

    ``quick``: at most 3 epochs, 30 Lanczos steps x 2 probes and 11 landscape points (else
    80 x 4 and 21).

    Raises:
        Cancelled: training was interrupted (Ctrl-C); what it finished is kept in
            ``out/train`` and nothing else runs.
    """
    out = output_folder(out)
    start = time.perf_counter()
    if quick:
        epochs = min(epochs, 3)
    num_iters, num_probes, num_points = (30, 2, 11) if quick else (80, 4, 21)
    print(f"[1/4] training small_cnn on the built-in digits for {epochs} epochs ...", flush=True)
    trained = train("small_cnn", "digits", out=out / "train", epochs=epochs, seed=seed,
                    progress=True)  # fmt: skip
    stop_if_interrupted(trained, out / "train", "the spectra, statistics and landscape")
    setup = resolve_setup(trained.model, "digits", seed=seed)
    print(
        f"[2/4] Hessian and GGN spectra (SLQ: {num_iters} steps x {num_probes} probes; "
        "top-5 certified) ...",
        flush=True,
    )
    common = dict(num_iters=num_iters, num_probes=num_probes, top_k=5, seed=seed, out=out,
                  warn=True)  # fmt: skip
    hessian = spectrum(setup.model, setup.data, curvature="hessian", **common)
    ggn = spectrum(setup.model, setup.data, curvature="ggn", **common)

    print("[3/4] gradient, curvature and weight statistics ...", flush=True)
    stats = statistics(setup.model, setup.data, test_data=setup.test_data,
                       num_probes=4 if quick else 8, curvature=["hessian", "ggn"], seed=seed,
                       out=out)  # fmt: skip

    print("[4/4] loss landscape along the top two Hessian eigenvectors ...", flush=True)
    land = landscape(setup.model, setup.data, test_data=setup.test_data, directions="top:2",
                     num_points=num_points, eigen=hessian.eigen, seed=seed, out=out)  # fmt: skip

    summary = _summary(trained, hessian, ggn, stats, land, time.perf_counter() - start)
    result = Report(summary, {"train": trained, "hessian": hessian, "ggn": ggn, "stats": stats,
                              "landscape": land})  # fmt: skip
    print("\n" + result.markdown())
    result.save(out)
    if is_writer():
        print(f"results, figures and the report are in {Path(out).resolve()}")
    return result


def stop_if_interrupted(trained: Any, folder: Path, skipped: str) -> None:
    """Raise :class:`Cancelled` when a report's training did not finish (Ctrl-C): what it
    finished is kept in ``folder``, and the report must not go on as if nothing happened."""
    if trained.status != "completed":
        raise Cancelled(
            "training",
            f"training {trained.status} at step {trained.trainer.step}; its checkpoints and "
            f"history are kept in {folder}; {skipped} were not computed",
        )


def _summary(trained, hessian, ggn, stats, land, seconds: float) -> dict:
    last = trained.trainer.history.to_dict()["epochs"][-1]
    return {
        "model": "small_cnn",
        "data": "digits (scikit-learn, 1500 train / 297 test)",
        "parameters": hessian.num_params,
        "train_accuracy": last.get("train_accuracy"),
        "test_accuracy": last.get("test_accuracy"),
        "train_loss": last.get("train_loss"),
        "test_loss": last.get("test_loss"),
        "hessian": hessian.to_dict(),
        "ggn": ggn.to_dict(),
        "gradient": stats.gradients.to_dict(),
        "hessian_statistics": stats.curvature.to_dict(),
        "weights": stats.norms.to_dict(),
        "landscape_max_train_loss": float(land.line.metric("train_loss").max()),
        "seconds": seconds,
    }


def _num(value: Any) -> float:
    return float("nan") if value is None else value


def _markdown(r: dict) -> str:
    h, g = r["hessian"], r["ggn"]
    hs, gs = h["stats"], g["stats"]

    def top(values):
        return ", ".join(f"{v:.4g}" for v in values)

    def stat(d: dict, key: str) -> str:
        value = d.get(key)
        return f"{_num(value):.4g}" if value is None or math.isfinite(value) else f"{value}"

    return "\n".join(
        [
            "# Curvature report: small_cnn on the built-in digits",
            "",
            f"- parameters: {r['parameters']:,}",
            f"- train accuracy {_num(r['train_accuracy']):.3f}, test accuracy "
            f"{_num(r['test_accuracy']):.3f} "
            f"(loss {_num(r['train_loss']):.4f} / {_num(r['test_loss']):.4f})",
            "",
            "| | Hessian | GGN |",
            "|---|---|---|",
            f"| top-5 eigenvalues (certified) | {top(h['top_eigenvalues'])} | {top(g['top_eigenvalues'])} |",
            f"| all converged (residual <= 1e-3 x scale) | {h['top_converged']} | {g['top_converged']} |",
            f"| smallest Ritz value | {stat(hs, 'smallest')} | {stat(gs, 'smallest')} |",
            f"| trace estimate (SLQ) | {stat(hs, 'trace')} | {stat(gs, 'trace')} |",
            f"| negative mass | {stat(hs, 'negative_mass')} | {stat(gs, 'negative_mass')} |",
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
