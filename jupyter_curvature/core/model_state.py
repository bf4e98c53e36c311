"""Put a model in an explicit, side-effect-free state for curvature and statistics; restore it.

Two BatchNorm policies, the same for the curvature operators and for the statistics
(:func:`model_mode`; :func:`check_batchnorm_policy`):

* ``"eval"`` (default, as PyHessian, Yao et al., "PyHessian: neural networks through the
  lens of the Hessian", IEEE BigData 2020): the whole model in ``eval()`` mode; BatchNorm uses its
  running statistics and dropout is off.
* ``"train"`` (as the original package's ``bn_train_mode=True``): dropout off, BatchNorm
  normalises with the statistics of each batch. Its running buffers are *not* updated:
  ``track_running_stats`` is switched off for the duration, which also keeps the products
  deterministic and free of side effects.

For curvature products (:func:`curvature_mode`) the chosen parameters also require gradients
and all others do not (so autograd does no work for them). On exit every module's ``training`` flag, every BatchNorm's
``track_running_stats``, every parameter's ``requires_grad`` and every buffer's values are
exactly as before; ``.grad`` is never touched because products use ``torch.autograd.grad``.

The state is the model's, not the operator's, so the block holds the model's one re-entrant
lock (:func:`model_lock`), shared by every operator on that model: two threads never see each
other's temporary state, and a snapshot never records another thread's temporary state as the
one to restore.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BATCHNORM_POLICIES = ("eval", "train")

# weak keys: a lock goes with its model, and the model itself stays picklable and copyable
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The one re-entrant lock of ``model``, the same object for every operator built on it."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def check_batchnorm_policy(batchnorm: str) -> str:
    """``"eval"`` or ``"train"`` (an Enum member's value too); anything else is an error."""
    value = getattr(batchnorm, "value", batchnorm)
    if value not in BATCHNORM_POLICIES:
        raise ValueError(
            f"batchnorm must be 'eval' (running statistics, the default) or 'train' (batch "
            f"statistics, running buffers left untouched), got {batchnorm!r}"
        )
    return value


def batchnorm_modules(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm modules (every ``_BatchNorm``: 1d, 2d, 3d, sync, lazy)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first floating parameter (or buffer)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


@contextmanager
def model_mode(model: nn.Module, batchnorm: str = "eval") -> Iterator[nn.Module]:
    """Dropout off; BatchNorm on running (``"eval"``) or batch (``"train"``) statistics.

    Under ``"train"`` the BatchNorm modules normalise with each batch's statistics and do
    not update their running buffers (``track_running_stats`` is off for the duration). On
    exit every module's ``training`` flag, every BatchNorm's ``track_running_stats`` and
    every buffer's values are as before. Parameters' ``requires_grad`` are not touched
    (:func:`curvature_mode` sets them too).
    """
    batchnorm = check_batchnorm_policy(batchnorm)
    training_flags = [(m, m.training) for m in model.modules()]
    tracking_flags = [(m, m.track_running_stats) for m in batchnorm_modules(model)]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        model.eval()
        if batchnorm == "train":
            for module, _ in tracking_flags:
                module.train()
                module.track_running_stats = False
        yield model
    finally:
        for module, flag in training_flags:
            module.training = flag
        for module, flag in tracking_flags:
            module.track_running_stats = flag
        with torch.no_grad():
            for buffer, saved in buffers:
                if not torch.equal(buffer, saved):
                    buffer.copy_(saved)


@contextmanager
def curvature_mode(
    model: nn.Module, chosen: Sequence[torch.Tensor], batchnorm: str = "eval"
) -> Iterator[None]:
    """Within the block the model is ready for curvature products; afterwards it is as it was.

    :func:`model_mode` under the model's lock, with gradients required by exactly the
    ``chosen`` parameters.
    """
    with model_lock(model), model_mode(model, batchnorm), _requiring_grad(model, chosen):
        yield


@contextmanager
def _requiring_grad(model: nn.Module, chosen: Sequence[torch.Tensor]) -> Iterator[None]:
    """``requires_grad`` on the ``chosen`` tensors only (model parameters or not), restored."""
    chosen_ids = {id(p) for p in chosen}
    model_params = list(model.parameters())
    model_ids = {id(p) for p in model_params}
    outside = [p for p in chosen if id(p) not in model_ids]
    grad_flags = [(p, p.requires_grad) for p in [*model_params, *outside]]
    try:
        for p, _ in grad_flags:
            p.requires_grad_(id(p) in chosen_ids)
        yield
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
