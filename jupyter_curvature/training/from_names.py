"""From names to a :class:`~jupyter_curvature.training.Trainer`: :func:`named_trainer`.

It resolves a zoo model, a named dataset and an optimiser by name
(:func:`jupyter_curvature.models.create`, :func:`jupyter_curvature.data.get_dataset`,
:func:`jupyter_curvature.optim.create_optimizer`) and builds the trainer; the train task
(:func:`jupyter_curvature.train`, the CLI's ``train``) runs it. :func:`train` is the
deprecated one-call form of an earlier release.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .callbacks import CurvatureCallback, ProgressBar
from .options import CheckpointOptions, DataOptions
from .trainer import Trainer

__all__ = ["DEFAULT_LR", "named_trainer", "train"]

#: the default learning rate of each optimiser name
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3, "swats": 1e-3, "kfac": 0.05}


def named_trainer(
    model: str | nn.Module = "small_cnn",
    data: str = "digits",
    *,
    optimizer: str | torch.optim.Optimizer = "sgd",
    lr: float | None = None,
    optimizer_kwargs: dict[str, Any] | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 128,
    schedule: Any = "linear",
    data_root: str | Path | None = None,
    val_size: int = 0,
    num_samples: int | None = None,
    augment: bool | None = None,
    data_kwargs: dict[str, Any] | None = None,
    evaluate: bool = True,
    num_classes: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    spectrum_every: int | None = None,
    curvature: dict[str, Any] | None = None,
    callbacks: Iterable[Any] = (),
    progress: bool = False,
) -> Trainer:
    """A :class:`Trainer` of a zoo model on a named dataset, ready to ``fit()``.

    Builds the model (:func:`jupyter_curvature.models.create`), the data
    (:func:`jupyter_curvature.data.get_dataset`: the training split, and for evaluation the
    validation split when ``val_size`` is set, else the test split), the optimiser
    (:func:`jupyter_curvature.optim.create_optimizer`; ``sgd`` with momentum 0.9).

    Args:
        model: a registry name or a module.
        data: a dataset name (``"digits"``, ``"cifar10"``, ...).
        optimizer: ``sgd``, ``adam``, ``adamw``, ``kfac``, ``swats`` or an optimiser object.
        lr: learning rate (default per optimiser: :data:`DEFAULT_LR`).
        optimizer_kwargs: more optimiser settings (``weight_decay``, ``damping``, ...).
        epochs, steps: the plan (default 10 epochs).
        schedule: ``"linear"`` (default, the original's), ``"constant"``, a scheduler or a
            function ``optimizer -> scheduler``.
        data_root, val_size, num_samples, augment: dataset options (``get_dataset``'s
            ``root``, ``val_size``, ``num_samples`` drawn by ``seed``, ``augment``).
        data_kwargs: more dataset options for both splits (``rgb32=True``, ``download=True``).
        evaluate: evaluate on the test (or validation) split every epoch.
        num_classes: default from the dataset.
        model_kwargs: more model settings (``in_channels`` defaults to the data's).
        checkpoint_dir: folder for the checkpoints.
        checkpoint_every: keep an epoch checkpoint every so many epochs.
        spectrum_every: add a :class:`CurvatureCallback` with this period (settings from
            ``curvature``).
        callbacks: more callbacks; ``progress=True`` adds a tqdm bar.

    Under ``torchrun`` (a process group initialised, e.g. by
    :func:`jupyter_curvature.distributed.init_distributed`) every rank builds it with the
    same arguments and the :class:`Trainer` trains under ``DistributedDataParallel``:
    ``batch_size`` is the global batch, split across the ranks.
    """

    from ..data import dataset_info, get_dataset
    from ..models import create, model_info
    from ..optim import create_optimizer

    if epochs is None and steps is None:
        epochs = 10
    info = dataset_info(data)
    name = None
    if isinstance(model, str):
        mi = model_info(model)
        name = mi.name
        kwargs = dict(model_kwargs or {})
        rgb32 = bool((data_kwargs or {}).get("rgb32"))
        channels = 3 if rgb32 else info.input_shape[0]
        size = 32 if rgb32 else info.input_shape[1]
        if (
            mi.input_shape[0] != channels
            and "in_channels" not in kwargs
            and mi.name not in ("mlp",)
        ):
            kwargs["in_channels"] = channels
        if mi.name == "mlp":
            kwargs.setdefault("in_features", channels * size * size)
        if mi.name == "small_cnn":
            kwargs.setdefault("image_size", size)
        model = create(mi.name, num_classes=num_classes or info.num_classes, **kwargs)
    if device is not None:
        model.to(device)
    data_kw: dict[str, Any] = {"root": data_root, **(data_kwargs or {})}
    if augment is not None:
        data_kw["augment"] = augment
    train_set = get_dataset(info.name, split="train", val_size=val_size,
                            num_samples=num_samples, seed=seed, **data_kw)  # fmt: skip
    test_set = None
    if evaluate:
        extra = {k: v for k, v in data_kw.items() if k != "augment"}
        test_set = get_dataset(
            info.name, split="val" if val_size else "test", val_size=val_size, **extra
        )
    if isinstance(optimizer, str):
        key = optimizer.lower()
        opt = create_optimizer(key, model, lr=DEFAULT_LR.get(key, 1e-3) if lr is None else lr,
                               **(optimizer_kwargs or {}))  # fmt: skip
    else:
        opt = optimizer
    cbs = list(callbacks)
    if spectrum_every:
        cbs.append(CurvatureCallback(every=spectrum_every, seed=seed, **(curvature or {})))
    if progress:
        cbs.append(ProgressBar())
    return Trainer(
        model, opt, train_set, test_set, epochs=epochs, steps=steps, schedule=schedule,
        callbacks=cbs, seed=seed, model_name=name,
        data_options=DataOptions(batch_size=batch_size, num_workers=num_workers),
        checkpoint=CheckpointOptions(dir=checkpoint_dir, every=checkpoint_every),
    )  # fmt: skip


def train(
    model: str | nn.Module = "small_cnn",
    data: str = "digits",
    *,
    root: str | Path | None = None,
    subset: int | None = None,
    out_dir: str | Path | None = None,
    test: bool = True,
    resume: bool | str | Path | None = None,
    **kwargs: Any,
) -> Trainer:
    """Deprecated: use :func:`jupyter_curvature.train` (the train task; its result's
    ``.trainer`` is this Trainer), or :func:`named_trainer` and ``fit()``.

    Builds :func:`named_trainer` (``root``, ``subset``, ``out_dir``, ``test`` are its
    ``data_root``, ``num_samples``, ``checkpoint_dir``, ``evaluate``), fits it, saves
    ``history.json`` in ``out_dir`` (rank 0) and returns the trainer.
    """
    warnings.warn(
        "jupyter_curvature.training.train is deprecated; use jupyter_curvature.train(model, "
        "data, ...) (it returns a TrainResult whose .trainer is the Trainer; keywords "
        "data_root=, num_samples=, out=)",
        FutureWarning,
        stacklevel=2,
    )
    trainer = named_trainer(model, data, data_root=root, num_samples=subset,
                            checkpoint_dir=out_dir, evaluate=test, **kwargs)  # fmt: skip
    trainer.fit(resume=resume)
    if out_dir is not None and trainer.rank == 0:
        trainer.history.save(Path(out_dir) / "history.json")
    return trainer
