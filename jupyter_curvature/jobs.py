"""The command-line jobs (and the README's demo), as plain functions that return result records.

Each job builds a model and data from registry names (or takes them ready-made), runs the
engine, writes its results (JSON / ``.npz``) and figures (PNG) to an output folder, and returns
what it computed. Only rank 0 writes when run under ``torchrun``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .core.files import atomic_write, atomic_write_text


@dataclass
class Setup:
    """A model, its loss and its data, ready for the engine."""

    model: nn.Module
    loss_fn: nn.Module
    train: Any
    test: Any
    model_name: str
    data_name: str
    num_classes: int
    device: torch.device
    extras: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str | None) -> torch.device:
    """``"auto"``/``None``: CUDA when present, else the CPU; ``"cuda"`` without a GPU is an error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' was asked for but no CUDA GPU is available; use device='cpu'"
        )
    return resolved


def exact_products_on_gpu() -> None:
    """Curvature products must not use TF32: cuDNN convolutions default to it (1e-3 error)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def build_setup(
    model: str = "small_cnn",
    data: str = "digits",
    *,
    data_root: str | None = None,
    batch_size: int = 128,
    subsample: int | None = None,
    checkpoint: str | None = None,
    device: str | None = "auto",
    dtype: str = "float32",
    seed: int = 0,
    download: bool = False,
    network: nn.Module | None = None,
) -> Setup:
    """Model and data loaders by name (see ``models.available()`` and ``data.available_datasets()``).

    ``network`` replaces the registry model (for example a network just trained).
    """
    from . import data as data_mod
    from . import models as models_mod

    torch.manual_seed(seed)
    dev = resolve_device(device)
    if dev.type == "cuda":
        exact_products_on_gpu()
    info = data_mod.dataset_info(data)
    net = (
        network
        if network is not None
        else models_mod.create(model, num_classes=info.num_classes, **_model_kwargs(model, info))
    )
    if checkpoint:
        load_weights(net, checkpoint)
    net = net.to(device=dev, dtype=getattr(torch, dtype))
    loader_kw = dict(root=data_root, batch_size=batch_size, download=download)
    train = data_mod.get_loader(
        data, split="train", augment=False, subset=subsample, shuffle=False, **loader_kw
    )
    test = data_mod.get_loader(data, split="test", augment=False, **loader_kw)
    return Setup(net, nn.CrossEntropyLoss(), train, test, model, data, info.num_classes, dev)


def _model_kwargs(model: str, info: Any) -> dict[str, Any]:
    """Small built-in models adapt to the input shape; zoo models are CIFAR-shaped already."""
    from . import models as models_mod

    name = models_mod.model_info(model).name
    channels, size, _ = info.input_shape
    if name == "small_cnn":
        return {"in_channels": channels, "image_size": size}
    if name == "mlp":
        return {"in_features": channels * size * size}
    return {}


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint into ``model`` with the Trainer's reader
    (:func:`~jupyter_curvature.training.load_model_weights`: ``weights_only``, so a pickle
    payload is refused, never run; names and shapes checked first).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint of weights, or not of this architecture.
    """
    from .training import load_model_weights

    load_model_weights(model, path, map_location="cpu")


def _is_writer() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def output_folder(out: str | os.PathLike) -> Path:
    """``out`` as a folder, created now (on the writing rank) so that a bad ``out`` fails
    before any computation.

    Raises:
        NotADirectoryError: ``out`` is an existing file, or lies under one.
    """
    out = Path(out)
    if _is_writer():
        try:
            out.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise NotADirectoryError(
                f"out={out} is not a folder and cannot be made one ({exc.strerror}); "
                "pass a folder path (it is created if missing)"
            ) from exc
    return out


def _write_json(path: Path, payload: Any) -> None:
    if _is_writer():
        atomic_write_text(path, json.dumps(payload, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _save_figure(fig: Any, path: Path) -> None:
    if _is_writer():
        fmt = path.suffix.lstrip(".")
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=120, bbox_inches="tight"))
    import matplotlib.pyplot as plt

    plt.close(fig)


def _operator(setup: Setup, curvature: str, data: Any, params: str | None):
    from .operators import GGNOperator, HessianOperator

    op_class = {"hessian": HessianOperator, "ggn": GGNOperator}[curvature]
    return op_class(setup.model, setup.loss_fn, data, params=params)


def spectrum_job(
    setup: Setup,
    out: Path,
    *,
    curvature: str = "hessian",
    iters: int = 80,
    probes: int = 4,
    top: int = 5,
    params: str | None = None,
    seed: int = 0,
    tol: float = 1e-3,
) -> dict[str, Any]:
    """Spectral density (SLQ) and certified top eigenpairs of the Hessian or the GGN."""
    out = output_folder(out)
    import matplotlib.pyplot as plt

    from .plotting import plot_spectral_density
    from .spectral import eigenpairs, spectral_density

    op = _operator(setup, curvature, setup.train, params)
    start = time.perf_counter()
    density = spectral_density(op, num_iters=min(iters, op.shape[0]), num_probes=probes, seed=seed)
    top_pairs = eigenpairs(op, k=min(top, op.shape[0] - 1), which="LA", tol=tol, seed=seed)
    seconds = time.perf_counter() - start
    if _is_writer():
        density.save(out / f"{curvature}_density.npz")
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    plot_spectral_density(density, ax=ax, title=f"{curvature.upper()} spectral density")
    _save_figure(fig, out / f"{curvature}_density.png")
    summary = {
        "curvature": curvature,
        "num_parameters": op.shape[0],
        "stats": density.stats.to_dict(),
        "top_eigenvalues": top_pairs.eigenvalues.tolist(),
        "top_residuals": top_pairs.residuals.tolist(),
        "top_converged": bool(top_pairs.converged.all())
        if hasattr(top_pairs.converged, "all")
        else bool(top_pairs.converged),
        "num_matvecs": op.num_matvecs,
        "seconds": seconds,
    }
    _write_json(out / f"{curvature}_spectrum.json", summary)
    return {"density": density, "eigenpairs": top_pairs, "summary": summary}


def stats_job(
    setup: Setup,
    out: Path,
    *,
    batch_size: int = 128,
    probes: int = 8,
    per_sample: bool = False,
    layers: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluation, gradient and curvature statistics, weight norms and the per-layer table."""
    out = output_folder(out)
    from . import stats

    results: dict[str, Any] = {
        "train": stats.evaluate(setup.model, setup.loss_fn, setup.train),
        "test": stats.evaluate(setup.model, setup.loss_fn, setup.test),
        "gradient": stats.gradient_statistics(
            setup.model, setup.loss_fn, setup.train, batch_size=batch_size, per_sample=per_sample
        ),
        "hessian": stats.curvature_statistics(
            setup.model,
            setup.loss_fn,
            setup.train,
            "hessian",
            num_probes=probes,
            batch_size=batch_size,
            seed=seed,
        ),
        "ggn": stats.curvature_statistics(
            setup.model,
            setup.loss_fn,
            setup.train,
            "ggn",
            num_probes=probes,
            batch_size=batch_size,
            seed=seed,
        ),
        "weights": stats.weight_norms(setup.model),
    }
    if layers:
        results["layers"] = stats.layer_curvature(
            setup.model, setup.loss_fn, setup.train, seed=seed
        )
    _write_json(out / "stats.json", {k: v.to_dict() for k, v in results.items()})
    return results


def landscape_job(
    setup: Setup,
    out: Path,
    *,
    directions: str = "top:2",
    span: float = 1.0,
    points: int = 21,
    plane: bool = True,
    eig: Any = None,
    seed: int = 0,
    curvature: str = "hessian",
) -> dict[str, Any]:
    """Loss and accuracy along eigen-directions (or random ones): 1D lines and a 2D plane."""
    out = output_folder(out)
    from . import landscape

    kind, _, count = directions.partition(":")
    count_n = int(count or 2)
    if kind == "random":
        dirs = landscape.random_directions(setup.model, count_n, seed=seed)
    else:
        if eig is None:
            from .spectral import eigenpairs

            op = _operator(setup, curvature, setup.train, None)
            which = {"top": "LA", "bottom": "SA"}.get(kind, "LA")
            eig = eigenpairs(op, k=max(count_n, 2), which=which, seed=seed)
        dirs = landscape.eigen_directions(eig, list(range(count_n)), model=setup.model)
    line = landscape.landscape_1d(
        setup.model,
        setup.loss_fn,
        setup.train,
        dirs,
        test_data=setup.test,
        span=span,
        num_points=points,
    )
    results: dict[str, Any] = {"line": line}
    if _is_writer():
        line.save(out / "landscape_1d.npz")
    _save_figure(_figure_of(line.plot()), out / "landscape_1d.png")
    if plane and len(dirs) >= 2:
        surface = landscape.landscape_2d(
            setup.model, setup.loss_fn, setup.train, dirs, span=span, num_points=points
        )
        results["plane"] = surface
        if _is_writer():
            surface.save(out / "landscape_2d.npz")
        _save_figure(_figure_of(surface.plot()), out / "landscape_2d.png")
    return results


def _figure_of(plotted: Any):
    """The Figure behind whatever a ``plot()`` returned (a figure, an axes or an array of axes)."""
    import numpy as np

    if hasattr(plotted, "savefig"):
        return plotted
    if isinstance(plotted, np.ndarray):
        plotted = plotted.flat[0]
    if isinstance(plotted, (tuple, list)):
        plotted = plotted[0]
    return plotted.figure if hasattr(plotted, "figure") else plotted.get_figure()


def train_job(
    model: str,
    data: str,
    out: Path,
    *,
    optimizer: str = "sgd",
    lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    epochs: int = 10,
    schedule: str = "linear",
    spectrum_every: int = 0,
    resume: str | None = None,
    data_root: str | None = None,
    batch_size: int = 128,
    subsample: int | None = None,
    device: str | None = "auto",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a zoo network; checkpoints, ``history.json`` and ``training.png`` go to ``out``.

    The model's initial weights are drawn from ``seed``. Under ``torchrun`` (a process group
    initialised) the :class:`~jupyter_curvature.training.Trainer` trains under
    ``DistributedDataParallel``: ``batch_size`` is the global batch, split across the
    ranks, so the run takes the same steps as one process; only rank 0 writes.
    """
    out = output_folder(out)
    import matplotlib.pyplot as plt

    from .plotting import plot_training_history
    from .training import train

    torch.manual_seed(seed)
    optimizer_kwargs: dict[str, Any] = {}
    if weight_decay:
        optimizer_kwargs["weight_decay"] = weight_decay
    if optimizer.lower() == "sgd":
        optimizer_kwargs["momentum"] = momentum
    trainer = train(
        model,
        data,
        optimizer=optimizer,
        lr=lr,
        optimizer_kwargs=optimizer_kwargs,
        epochs=epochs,
        batch_size=batch_size,
        schedule=schedule,
        root=data_root,
        subset=subsample,
        out_dir=out,
        resume=resume,
        seed=seed,
        device=resolve_device(device),
        spectrum_every=spectrum_every or None,
        progress=progress,
    )
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    plot_training_history(trainer.history.to_dict()["epochs"], axes=axes)
    _save_figure(fig, out / "training.png")
    return {"trainer": trainer, "summary": trainer.history}
