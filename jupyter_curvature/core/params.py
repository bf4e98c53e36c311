"""Choosing parameters, and moving between flat vectors and per-parameter tensors."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

ParamSpec = None | str | nn.Module | Iterable[str | nn.Module | torch.Tensor]


def _matches(name: str, pattern: str) -> bool:
    """Glob (``features.0.*``) or regular expression (``re:^features\\.0\\.``) match."""
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern) or name == pattern or name.startswith(pattern + ".")


def select_parameters(model: nn.Module, params: ParamSpec = None) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs of ``model`` that ``params`` chooses, in model order.

    Args:
        model: the network.
        params: ``None`` for every trainable parameter (``requires_grad``); a name pattern
            (glob such as ``"features.0.*"``, a module prefix such as ``"classifier"``, or
            ``"re:<regex>"``); a submodule of ``model``; or a sequence mixing these with
            parameter tensors. Explicitly chosen parameters are used even when frozen.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``params`` has an unknown type.
        ValueError: nothing matches, or the model has no trainable parameter.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = list(model.named_parameters())
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
        if not chosen:
            raise ValueError(
                "model has no trainable parameters (none has requires_grad=True); "
                "unfreeze some, or pass params= to choose them explicitly"
            )
        return chosen
    specs = [params] if isinstance(params, (str, nn.Module, torch.Tensor)) else list(params)
    wanted_ids: set[int] = set()
    for spec in specs:
        if isinstance(spec, str):
            ids = {id(p) for n, p in named if _matches(n, spec)}
        elif isinstance(spec, nn.Module):
            ids = {id(p) for p in spec.parameters()}
        elif isinstance(spec, torch.Tensor):
            ids = {id(spec)}
        else:
            raise TypeError(
                "params entries must be name patterns, submodules or parameter tensors, "
                f"got {type(spec).__name__}"
            )
        if not ids & {id(p) for _, p in named}:
            known = ", ".join(n for n, _ in named[:12]) + (", ..." if len(named) > 12 else "")
            raise ValueError(
                f"params={spec!r} matches no parameter of the model; its parameters are: {known}"
            )
        wanted_ids |= ids
    return [(n, p) for n, p in named if id(p) in wanted_ids]


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector (parameter order)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector ``(n,)`` or block ``(n, k)`` into views shaped like ``like``.

    A block gives tensors of shape ``(*p.shape, k)``.
    """
    tail = vector.shape[1:]
    out, start = [], 0
    for t in like:
        stop = start + t.numel()
        out.append(vector[start:stop].reshape(*t.shape, *tail))
        start = stop
    return out
