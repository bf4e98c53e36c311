"""Names or objects -> model, data, loss, optimiser and device: the resolution every front end
(the magics, the CLI, plain Python) shares.

Each ``resolve_*`` takes either a ready object (an ``nn.Module``, a DataLoader, an optimiser,
a callable loss) or a name. A name is looked up first in ``namespace`` (the magics pass the
notebook's user namespace; dotted paths such as ``run.model`` work), then in the registries
(:func:`jupyter_curvature.models.available`, :func:`jupyter_curvature.data.available_datasets`).
An unknown name raises :class:`InputError`, a one-line ``ValueError`` that says what to do
(the closest known name, or which cell to run first).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..operators.loss_hessians import output_hessian_for, register_output_hessian

__all__ = [
    "DATASETS",
    "LOSSES",
    "OPTIMIZERS",
    "InputError",
    "exact_products_on_gpu",
    "lookup",
    "resolve_data",
    "resolve_device",
    "resolve_loss",
    "resolve_model",
    "resolve_optimizer",
    "resolve_setup",
    "resolve_test_data",
    "Setup",
    "first_samples",
]


class InputError(ValueError):
    """Bad input from the user (a name, a type, an option); the message is one line."""


MISSING: Any = object()


def _suggest(name: str, known: list[str]) -> str:
    """``"; did you mean small_cnn?"`` (difflib's closest match), else the known names."""
    close = difflib.get_close_matches(name.lower(), [k.lower() for k in known], n=1, cutoff=0.6)
    if close:
        match = next(k for k in known if k.lower() == close[0])
        return f"; did you mean {match}?"
    return f"; known: {', '.join(known)}"


def lookup(name: str, namespace: Mapping[str, Any] | None) -> Any:
    """The value of ``name`` (a variable or a dotted attribute path ``run.model``), or ``MISSING``.

    Raises:
        InputError: the head variable exists but the attribute path does not.
    """
    if namespace is None or not name:
        return MISSING
    head, *rest = name.split(".")
    if head not in namespace:
        return MISSING
    value = namespace[head]
    for attr in rest:
        if not hasattr(value, attr):
            raise InputError(
                f"{head!r} has no attribute path {name!r} ({type(value).__name__} has no {attr!r})"
            )
        value = getattr(value, attr)
    return value


def _type_name(value: Any) -> str:
    """``"an int"``, ``"a torch.Tensor"``: the article and the type of ``value``."""
    t = type(value)
    name = t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def _not_found(option: str, spec: str, what: str, known: list[str], namespace: Any) -> InputError:
    head = spec.split(".")[0]
    hint = _suggest(spec, known)
    if namespace is not None and "." in spec and head not in namespace:
        hint = f"; no variable {head!r} yet: run the cell that defines it first"
        if spec == f"{head}.model":  # the result of %%curv_train --out NAME
            hint = (
                f"; no variable {head!r} yet: run the cell that defines it first (for "
                f"{spec}: run %%curv_train ... --out {head} first; its result's .model is the "
                "trained model)"
            )
    elif namespace is not None and hint.startswith("; known"):
        hint = f"; define a variable {spec!r} first (run its cell), or use a {what}: " + hint[8:]
    return InputError(f"{option} {spec!r} is neither a variable nor a {what}{hint}")


# --------------------------------------------------------------------------- device
def exact_products_on_gpu() -> None:
    """Curvature products must not use TF32: cuDNN convolutions default to it (1e-3 error)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def resolve_device(
    spec: str | torch.device | None, *, flag: str = "--device"
) -> torch.device | None:
    """The device of ``spec``: ``None`` (leave the model where it is), ``"auto"`` (CUDA when
    present, else the CPU) or a name (``cpu``, ``cuda``, ``cuda:1``, ``mps``) that must exist.
    ``flag``: the setting the messages name (``--basis-device`` for the Lanczos basis).

    Raises:
        InputError: not a device name, or the device is not present.
    """
    if spec is None:
        return None
    if isinstance(spec, str) and spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(
            f"{flag} {spec!r} is not a device name (use auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"{flag} {spec}: no CUDA GPU is available on this machine; use {flag} cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"{flag} {spec}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{flag} {spec}: MPS is not available on this machine; use {flag} cpu")
    return device


# --------------------------------------------------------------------------- model
def _model_kwargs(name: str, data: str | None) -> dict[str, Any]:
    """Small built-in models adapt to the input shape of ``data``; zoo models are CIFAR-shaped."""
    if data is None:
        return {}
    from ..data import dataset_info

    channels, size, _ = dataset_info(data).input_shape
    if name == "small_cnn":
        return {"in_channels": channels, "image_size": size}
    if name == "mlp":
        return {"in_features": channels * size * size}
    return {}


def resolve_model(
    spec: Any,
    namespace: Mapping[str, Any] | None = None,
    *,
    num_classes: int | None = None,
    data: str | None = None,
    option: str = "--model",
) -> nn.Module:
    """A model from an ``nn.Module``, a variable holding one, or a registry name (``"mlp"``).

    A registry model gets ``num_classes`` (default: that of the dataset ``data``, else 10)
    and, for ``small_cnn`` and ``mlp``, the input shape of ``data``.

    Raises:
        InputError: the variable is not a module, or the name is neither a variable nor a
            registered model (the message suggests the closest registered name).
    """
    if isinstance(spec, nn.Module):
        return spec
    if not isinstance(spec, str):
        raise InputError(f"{option} must be a name, got {_type_name(spec)}")
    value = lookup(spec, namespace)
    if value is not MISSING:
        if not isinstance(value, nn.Module):
            raise InputError(f"{option} {spec!r} is {_type_name(value)}, not a torch.nn.Module")
        return value
    from .. import models

    try:
        info = models.model_info(spec)
    except (KeyError, ValueError):
        raise _not_found(option, spec, "registered model", models.available(), namespace) from None
    if data is not None and num_classes is None:
        from ..data import dataset_info

        num_classes = dataset_info(data).num_classes
    kwargs = _model_kwargs(info.name, data)
    return models.create(
        info.name, num_classes=10 if num_classes is None else num_classes, **kwargs
    )


# --------------------------------------------------------------------------- data
def _digits(split: str, batch_size: int, shuffle: bool, seed: int) -> Any:
    from ..data import digits_loader

    return digits_loader(split, batch_size=batch_size, shuffle=shuffle, seed=seed)


#: built-in dataset names of the magics -> loader factory ``f(split, batch_size, shuffle, seed)``
DATASETS: dict[str, Callable[..., Any]] = {"digits": _digits}


def _check_batches(value: Any, name: str, option: str) -> Any:
    from torch.utils.data import DataLoader, Dataset

    if isinstance(value, DataLoader):
        return value
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, torch.Tensor) for v in value)
    ):
        return value  # one (inputs, targets) batch
    if isinstance(value, Dataset):
        raise InputError(
            f"{option} {name!r} is {_type_name(value)} (a Dataset); wrap it in a "
            "torch.utils.data.DataLoader"
        )
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(b, (list, tuple)) and len(b) == 2 for b in value)
    ):
        return value  # a list of (inputs, targets) batches
    raise InputError(
        f"{option} {name!r} is {_type_name(value)}, not a DataLoader, a list of "
        "(inputs, targets) batches or one (inputs, targets) tuple of tensors"
    )


def resolve_data(
    spec: Any,
    namespace: Mapping[str, Any] | None = None,
    *,
    split: str = "train",
    batch_size: int = 128,
    shuffle: bool = False,
    seed: int = 0,
    data_root: str | None = None,
    download: bool = False,
    num_samples: int | None = None,
    option: str = "--data",
) -> Any:
    """Data from an object or variable (a DataLoader, a list of batches, one batch) or a name.

    ``"digits"`` gives the training split, ``"digits:test"`` the test split; the other
    registry datasets (``cifar10``, ...) are read from ``data_root`` by
    :func:`jupyter_curvature.data.get_loader` (``num_samples``: that many samples drawn by the
    seed 0, without augmentation).

    Raises:
        InputError: an unusable variable, or an unknown name (with the closest known one).
    """
    if not isinstance(spec, str):
        return _check_batches(spec, "<value>", option)
    value = lookup(spec, namespace)
    if value is not MISSING:
        return _check_batches(value, spec, option)
    name, _, part = spec.partition(":")
    part = part or split
    if part not in ("train", "test", "all"):
        raise InputError(f"{option} {spec!r}: the split must be train, test or all")
    from .. import data as data_mod

    if name.lower() in DATASETS and num_samples is None and data_root is None:
        return DATASETS[name.lower()](part, batch_size, shuffle, seed)
    try:
        data_mod.dataset_info(name)
    except (KeyError, ValueError):
        known = sorted(set(DATASETS) | set(data_mod.available_datasets()))
        raise _not_found(option, spec, "known dataset", known, namespace) from None
    return data_mod.get_loader(
        name, split=part, augment=False, num_samples=num_samples, shuffle=shuffle,
        root=data_root, batch_size=batch_size, download=download,
    )  # fmt: skip


def resolve_test_data(
    spec: Any, train_spec: Any, namespace: Mapping[str, Any] | None, batch_size: int = 256
) -> Any:
    """The test data: ``spec`` if given, else the test split of a named training set, else None."""
    if spec is not None:
        return resolve_data(
            spec, namespace, split="test", batch_size=batch_size, option="--test-data"
        )
    if isinstance(train_spec, str) and lookup(train_spec, namespace) is MISSING:
        name = train_spec.partition(":")[0].lower()
        if name in DATASETS:
            return DATASETS[name]("test", batch_size, False, 0)
    return None


# --------------------------------------------------------------------------- loss
class OneHotMSELoss(nn.MSELoss):
    """Mean squared error to the one-hot vectors of class-label targets (``--loss-fn mse``).

    Integer targets with one dimension fewer than the outputs are class labels (the class
    dimension is 1, as for :class:`torch.nn.CrossEntropyLoss`); float targets of the outputs'
    shape are used as they are. A subclass of ``nn.MSELoss``, so the GGN uses its closed-form
    output Hessian (registered for it below: it overrides ``forward``).
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not target.is_floating_point() and target.dim() == input.dim() - 1:
            target = nn.functional.one_hot(target, input.shape[1]).movedim(-1, 1)
        return super().forward(input, target.to(input.dtype))


@register_output_hessian(OneHotMSELoss)
def _one_hot_mse_output_hessian(loss_fn: object, reduction: str) -> Callable:
    # the one-hot targets change the residual, not the output Hessian (2 I, over the number
    # of output entries for "mean"): MSELoss's, registered for this subclass of its own
    return output_hessian_for(nn.MSELoss(reduction=reduction))


def _nll_of_log_softmax() -> nn.Module:
    """``--loss-fn nll``: the negative log-likelihood of ``log_softmax(outputs)``, which is
    cross-entropy (the built-in models output logits; on log-probabilities ``log_softmax``
    changes nothing, so a model ending in ``log_softmax`` gets its own NLL too)."""
    return nn.CrossEntropyLoss()


#: loss names -> criterion factories (class-label targets, as the built-in datasets give)
LOSSES: dict[str, Callable[[], nn.Module]] = {
    "cross_entropy": nn.CrossEntropyLoss,
    "mse": OneHotMSELoss,
    "nll": _nll_of_log_softmax,
}


def resolve_loss(spec: Any = None, namespace: Mapping[str, Any] | None = None) -> Callable:
    """A criterion: ``None`` (cross-entropy), a name from :data:`LOSSES`, or a callable (variable)."""
    if spec is None:
        return nn.CrossEntropyLoss()
    if callable(spec) and not isinstance(spec, str):
        return spec
    value = lookup(spec, namespace)
    if value is not MISSING:
        if not callable(value):
            raise InputError(
                f"--loss-fn {spec!r} is {_type_name(value)}, not a callable loss function"
            )
        return value
    key = spec.lower().replace("-", "_")
    if key in LOSSES:
        return LOSSES[key]()
    raise _not_found("--loss-fn", spec, "known loss", list(LOSSES), namespace)


# --------------------------------------------------------------------------- optimiser
#: optimiser names accepted by --optimizer
OPTIMIZERS = ("sgd", "adam", "adamw", "kfac", "swats")


def _is_optimizer(value: Any) -> bool:
    return isinstance(value, torch.optim.Optimizer) or (
        hasattr(value, "step") and hasattr(value, "zero_grad") and hasattr(value, "param_groups")
    )


#: the optimisers that take --momentum
MOMENTUM_OPTIMIZERS = ("sgd", "kfac")


def _given_optimizer(
    optimizer: Any, what: str, model: nn.Module, lr: Any, momentum: Any, weight_decay: Any
) -> Any:
    """An optimiser object, checked: it holds its own settings, so a setting given beside it
    would be silently ignored (refused), and it must update ``model``'s parameters."""
    given = [flag for flag, value in (("--lr", lr), ("--momentum", momentum),
                                      ("--weight-decay", weight_decay)) if value]  # fmt: skip
    if given:
        raise InputError(
            f"{what} is an optimiser object with its own settings; {', '.join(given)} would be "
            "ignored: leave them out (set them on the optimiser), or name the optimiser (sgd, adam)"
        )
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not held & {id(p) for p in model.parameters()}:
        raise InputError(
            f"{what} holds none of the model's parameters (was it built on another model, or "
            "before the model was rebuilt?): build it on this model's parameters"
        )
    return optimizer


def resolve_optimizer(
    spec: Any,
    model: nn.Module,
    namespace: Mapping[str, Any] | None = None,
    *,
    lr: float | None = None,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    **options: Any,
) -> torch.optim.Optimizer:
    """An optimiser: an object, a variable holding one, or a name (:data:`OPTIMIZERS`).

    Defaults for names: ``sgd`` lr 0.1, ``adam``/``adamw`` lr 1e-3 (Kingma & Ba 2015),
    ``kfac`` and ``swats`` the defaults of :mod:`jupyter_curvature.optim`.
    """
    for flag, number in (("--momentum", momentum), ("--weight-decay", weight_decay)):
        if number is not None and not number >= 0:  # torch's own error would name no flag
            raise InputError(f"{flag} must be >= 0, got {number}")
    if momentum is not None and momentum >= 1:  # torch accepts it; the steps then diverge
        raise InputError(f"--momentum must be below 1 (a decay factor), got {momentum}")
    if _is_optimizer(spec):
        return _given_optimizer(spec, "the optimizer", model, lr, momentum, weight_decay)
    if spec is None:
        spec = "sgd"
    if not isinstance(spec, str):
        raise InputError(f"--optimizer must be a name, got {_type_name(spec)}")
    value = lookup(spec, namespace)
    if value is not MISSING:
        if not _is_optimizer(value):
            raise InputError(
                f"--optimizer {spec!r} is {_type_name(value)}, not a torch.optim.Optimizer"
            )
        return _given_optimizer(value, f"--optimizer {spec!r}", model, lr, momentum, weight_decay)
    key = spec.lower()
    if momentum and key not in MOMENTUM_OPTIMIZERS:
        raise InputError(
            f"--momentum is for {' and '.join(MOMENTUM_OPTIMIZERS)}; --optimizer {key} has "
            "none (adam's betas are its own): leave --momentum out or use --optimizer sgd"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if key == "sgd":
        return torch.optim.SGD(
            params, lr=0.1 if lr is None else lr, momentum=momentum, weight_decay=weight_decay
        )
    if key in ("adam", "adamw"):
        cls = torch.optim.Adam if key == "adam" else torch.optim.AdamW
        return cls(params, lr=1e-3 if lr is None else lr, weight_decay=weight_decay)
    if key in ("kfac", "swats"):
        from ..optim import create_optimizer

        kwargs = dict(options)
        if weight_decay:
            kwargs["weight_decay"] = weight_decay
        if momentum and key == "kfac":
            kwargs["momentum"] = momentum
        try:
            return create_optimizer(key, model, lr=1e-3 if lr is None else lr, **kwargs)
        except (TypeError, ValueError) as exc:
            raise InputError(f"--optimizer {key}: {exc}") from None
    raise _not_found("--optimizer", spec, "known optimiser", list(OPTIMIZERS), namespace)


# --------------------------------------------------------------------------- all together
@dataclass
class Setup:
    """A model, its loss, its data and the device, ready for a task."""

    model: nn.Module
    loss_fn: Callable
    data: Any
    test_data: Any
    device: torch.device | None


def first_samples(data: Any, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_samples`` samples of ``data`` (a DataLoader, batches or one batch) as
    one batch. A shuffling DataLoader's generator is restored afterwards, so taking them does
    not change the order in which training then sees the data."""
    gen = getattr(data, "generator", None)
    state = gen.get_state() if isinstance(gen, torch.Generator) else None
    is_batch = (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(v, torch.Tensor) for v in data)
    )
    xs, ys, count = [], [], 0
    try:
        for x, y in [data] if is_batch else data:
            xs.append(x)
            ys.append(y)
            count += len(x)
            if count >= num_samples:
                break
    finally:
        if state is not None:
            gen.set_state(state)
    return torch.cat(xs)[:num_samples], torch.cat(ys)[:num_samples]


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint into ``model`` with the Trainer's reader
    (:func:`~jupyter_curvature.training.load_model_weights`: ``weights_only``, so a pickle
    payload is refused, never run; names and shapes checked first).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint of weights, or not of this architecture.
    """
    from ..training import load_model_weights

    load_model_weights(model, path, map_location="cpu")


def resolve_setup(
    model: Any = "small_cnn",
    data: Any = "digits",
    *,
    namespace: Mapping[str, Any] | None = None,
    test_data: Any = None,
    loss_fn: Any = None,
    batch_size: int = 128,
    num_samples: int | None = None,
    data_root: str | None = None,
    download: bool = False,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
) -> Setup:
    """Model, loss and data from names or objects, on ``device``: what every task starts from.

    A named model is built after ``torch.manual_seed(seed)`` (so its initial weights are
    reproducible) with the input shape and classes of a named ``data``; ``checkpoint``
    weights are loaded into it. ``num_samples`` keeps, of a named dataset, that many samples
    drawn by the seed 0 (:func:`jupyter_curvature.data.get_loader`), and of data given as an
    object (or variable) its first ``num_samples`` samples as one batch. A named dataset
    also gives the test data (its test split) unless ``test_data`` is given.

    Raises:
        InputError: unknown names or unusable objects (one line, with what to do).
        ValueError: a checkpoint of another architecture.
    """
    dev = resolve_device(device)
    if dev is not None and dev.type == "cuda":
        exact_products_on_gpu()
    data_name = data.partition(":")[0] if isinstance(data, str) else None
    if data_name is not None and lookup(data_name.split(".")[0], namespace) is not MISSING:
        data_name = None  # a variable, not a registry name
    if isinstance(model, str) and lookup(model, namespace) is MISSING:
        torch.manual_seed(seed)
    if data_name is not None:
        from ..data import dataset_info

        try:
            dataset_info(data_name)
        except (KeyError, ValueError):
            resolve_data(data, namespace)  # raises the InputError that says what to do
    net = resolve_model(model, namespace, data=data_name)
    if checkpoint:
        load_weights(net, checkpoint)
    if dtype is not None:
        net = net.to(dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    if dev is not None:
        net = net.to(dev)
    named = data_name is not None
    train = resolve_data(
        data, namespace, batch_size=batch_size, data_root=data_root, download=download,
        num_samples=num_samples if named else None, seed=seed,
    )  # fmt: skip
    if num_samples and not named:
        train = first_samples(train, num_samples)
    if test_data is not None or not named:
        test = resolve_test_data(test_data, data, namespace, batch_size=batch_size)
    else:
        test = resolve_data(
            data, namespace, split="test", batch_size=batch_size, data_root=data_root,
            download=download, option="--data",
        )  # fmt: skip
    return Setup(net, resolve_loss(loss_fn, namespace), train, test, dev)
