"""The text report task (``jupyter-curvature demo --task text``): train a small GPT on the
standard library's own sources and report the curvature of the whole model and of each block.

Offline: the text ships with Python (:func:`jupyter_curvature.data.text_dataset`) and the
model is a GPT-2 built from a ``transformers`` config with random weights
(:func:`jupyter_curvature.integrations.tiny_gpt`; ``pip install "jupyter_curvature[hf]"``).
It writes to ``out``:

* ``train/``: ``history.json``, ``training.png``;
* ``hessian_density.{npz,png}``, ``hessian_spectrum.json``: the whole model's SLQ density and
  certified top eigenvalues;
* ``blocks.json``, ``blocks.png``: per block (embeddings, each layer's attention, MLP and norms,
  the final norm) the top eigenvalue with its residual, the trace and the density
  (:func:`jupyter_curvature.spectral.block_spectra`);
* ``report.md`` / ``report.json``: the summary printed at the end.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..spectral import block_spectra
from .names import InputError
from .outputs import is_writer, output_folder, save_figure
from .report import Report, stop_if_interrupted
from .spectrum import spectrum
from .train import train

__all__ = ["text_report"]

#: the model of the report: 4 blocks of width 64 (about 0.2M parameters)
MODEL = {"n_layer": 4, "n_embd": 64, "n_head": 4, "block_size": 64}


def text_report(
    out: str | Path = "curvature-text", *, steps: int = 300, quick: bool = False, seed: int = 0
) -> Report:
    """Train the small GPT on the text and report its curvature; print and save the report.

    ``quick``: at most 60 steps, 20 Lanczos steps x 1 probe (else 40 x 2).

    Raises:
        Cancelled: training was interrupted (Ctrl-C); what it finished is kept in
            ``out/train`` and nothing else runs.
    """
    from ..data import text_dataset

    try:
        from ..integrations import tiny_gpt

        model = tiny_gpt(seed=seed, **MODEL)
    except ImportError as exc:
        raise InputError(str(exc)) from None
    out = output_folder(out)
    start = time.perf_counter()
    if quick:
        steps = min(steps, 60)
    num_iters, num_probes = (20, 1) if quick else (40, 2)
    block = MODEL["block_size"]
    train_set = text_dataset(block_size=block)
    test_set = text_dataset("test", block_size=block)
    loader = DataLoader(train_set, batch_size=32, shuffle=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"[1/3] training a {MODEL['n_layer']}-block GPT ({params:,} parameters) on the standard "
          f"library's sources for {steps} steps ...", flush=True)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    trained = train(model, loader, optimizer=optimizer, steps=steps, test_data=_batches(test_set),
                    eval_every=max(1, steps // 3), seed=seed, out=out / "train",
                    progress=True)  # fmt: skip
    stop_if_interrupted(trained, out / "train", "the spectra")
    curvature_set = _batches(text_dataset("test", block_size=block, num_samples=64, seed=seed), 32)
    print(f"[2/3] Hessian spectrum of the whole model (SLQ: {num_iters} steps x {num_probes} "
          "probes; top-3 certified) ...", flush=True)  # fmt: skip
    hessian = spectrum(model, curvature_set, num_iters=num_iters, num_probes=num_probes,
                       top_k=3, seed=seed, out=out, warn=True)  # fmt: skip
    print(f"[3/3] Hessian spectra block by block (lockstep Lanczos: {num_iters} steps x "
          f"{num_probes} probes) ...", flush=True)  # fmt: skip
    blocks = block_spectra(model, nn.CrossEntropyLoss(), curvature_set, num_iters=num_iters,
                           num_probes=num_probes, seed=seed)  # fmt: skip
    if is_writer():
        blocks.save(out / "blocks.json")
        save_figure(blocks.plot(), out / "blocks.png")
    summary = _summary(trained, hessian, blocks, params, time.perf_counter() - start)
    result = Report(summary, {"train": trained, "hessian": hessian, "blocks": blocks},
                    render=_markdown)  # fmt: skip
    print("\n" + result.markdown())
    result.save(out)
    if is_writer():
        print(f"results, figures and the report are in {Path(out).resolve()}")
    return result


def _batches(dataset: Any, size: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A dataset of tensors as a list of batches read in order."""
    x, y = dataset.tensors
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _summary(
    trained: Any, hessian: Any, blocks: Any, params: int, seconds: float
) -> dict[str, Any]:
    test_losses = trained.history.test_loss
    test_loss = test_losses[-1] if test_losses else None
    return {
        "model": f"GPT-2 ({MODEL['n_layer']} blocks, width {MODEL['n_embd']}), random init",
        "data": "the standard library's sources, next character (97 tokens)",
        "parameters": params,
        "train_loss": trained.history.loss[-1] if trained.history.loss else None,
        "test_loss": test_loss,
        "test_bits_per_character": None if test_loss is None else test_loss / math.log(2),
        "hessian": hessian.to_dict(),
        "blocks": blocks.rows(),
        "seconds": seconds,
    }


def _markdown(r: dict[str, Any]) -> str:
    h = r["hessian"]

    def num(value: Any) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"

    return "\n".join(
        [
            "# Curvature report: a small GPT on the standard library's sources",
            "",
            f"- model: {r['model']}, {r['parameters']:,} parameters",
            f"- data: {r['data']}",
            f"- train loss {num(r['train_loss'])}, test loss {num(r['test_loss'])} "
            f"({num(r['test_bits_per_character'])} bits per character)",
            "",
            "| | whole-model Hessian |",
            "|---|---|",
            f"| top-3 eigenvalues (certified: {h['top_converged']}) | "
            f"{', '.join(f'{v:.4g}' for v in h['top_eigenvalues'])} |",
            f"| trace estimate (SLQ) | {num(h['stats'].get('trace'))} |",
            f"| negative mass | {num(h['stats'].get('negative_mass'))} |",
            f"| operator products | {h['num_matvecs']} |",
            "",
            "| block | parameters | top eigenvalue (certified) | trace |",
            "|---|---|---|---|",
            *(
                f"| {b['block']} | {b['size']:,} | {num(b['top_eigenvalue'])}"
                f" ({'yes' if b['converged'] else 'no'}) | {num(b['trace'])} |"
                for b in r["blocks"]
            ),
            "",
            f"- total time {r['seconds']:.0f} s",
        ]
    )
