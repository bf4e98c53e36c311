"""Put a model in an explicit, side-effect-free state for curvature products, then restore it.

Two BatchNorm policies:

* ``"eval"`` (default, as PyHessian): the whole model in ``eval()`` mode; BatchNorm uses its
  running statistics and dropout is off.
* ``"train"`` (as the original package's ``bn_train_mode=True``): dropout off, BatchNorm
  normalises with the statistics of each batch. Its running buffers are *not* updated:
  ``track_running_stats`` is switched off for the duration, which also keeps the products
  deterministic and free of side effects.

In both, the chosen parameters require gradients and all others do not (so autograd does no
work for them). On exit every module's ``training`` flag, every BatchNorm's
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
    if batchnorm not in BATCHNORM_POLICIES:
        raise ValueError(
            f"batchnorm must be 'eval' (running statistics, the default) or 'train' (batch "
            f"statistics, running buffers left untouched), got {batchnorm!r}"
        )
    return batchnorm


@contextmanager
def curvature_mode(
    model: nn.Module, chosen: Sequence[torch.Tensor], batchnorm: str = "eval"
) -> Iterator[None]:
    """Within the block the model is ready for curvature products; afterwards it is as it was."""
    with model_lock(model), _prepared(model, chosen, batchnorm):
        yield


@contextmanager
def _prepared(model: nn.Module, chosen: Sequence[torch.Tensor], batchnorm: str) -> Iterator[None]:
    training_flags = [(m, m.training) for m in model.modules()]
    tracking_flags = [
        (m, m.track_running_stats) for m in model.modules() if isinstance(m, _BatchNorm)
    ]
    chosen_ids = {id(p) for p in chosen}
    model_params = list(model.parameters())
    model_ids = {id(p) for p in model_params}
    outside = [p for p in chosen if id(p) not in model_ids]
    grad_flags = [(p, p.requires_grad) for p in [*model_params, *outside]]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        model.eval()
        if batchnorm == "train":
            for module, _ in tracking_flags:
                module.train()
                module.track_running_stats = False
        for p, _ in grad_flags:
            p.requires_grad_(id(p) in chosen_ids)
        yield
    finally:
        for module, flag in training_flags:
            module.training = flag
        for module, flag in tracking_flags:
            module.track_running_stats = flag
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            for buffer, saved in buffers:
                if not torch.equal(buffer, saved):
                    buffer.copy_(saved)
