"""Blocks of parameters: a model's embeddings, attention, MLP, norms, head, or CNN stages.

A *block* is a named, disjoint group of parameters; per-block curvature is the curvature
restricted to one block, the diagonal block ``H_jj`` of the Hessian (or GGN) in the
parameter order of :func:`~jupyter_curvature.core.params.select_parameters`.

:func:`resolve_blocks` turns what a user writes into ``{block name: [parameter names]}``:

* ``"auto"``: the structure of the model (:func:`auto_blocks`). A transformer (a
  ``ModuleList``/``Sequential`` of layers that hold an attention module: Hugging Face GPT-2's
  ``transformer.h``, torch's ``nn.TransformerEncoder.layers``, BERT's ``encoder.layer``) gives,
  for each layer ``L``, the blocks ``L.attn`` (the attention module, its projections included),
  ``L.mlp`` (the rest of the layer) and ``L.norm`` (its normalisation layers); outside the
  layers every parameter-holding module is its own block (embeddings ``transformer.wte`` and
  ``transformer.wpe``, the final norm ``transformer.ln_f``, the head). Any other model (a
  CNN) gives one block per top-level child that holds parameters (ResNet's ``conv1``, ``bn1``,
  ``layer1`` ... ``layer4``, ``fc``), descending through wrappers with a single child.
* a dict ``{name: spec}``, each spec what ``params=`` takes (a glob, a module prefix,
  ``re:<regex>``, a submodule, or a list of these);
* a list of module names (or patterns), each its own block, named by itself.

A parameter tied to two modules (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) is
one parameter and belongs to the first module that holds it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .params import ParamSpec, _matches, select_parameters

__all__ = ["auto_blocks", "module_names", "resolve_blocks"]

_ATTENTION_WORDS = ("attn", "attention")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)) or type(
        module
    ).__name__.endswith(("Norm", "Norm1d", "Norm2d"))


def _is_attention(name: str, module: nn.Module) -> bool:
    leaf = name.rsplit(".", 1)[-1].lower()
    return (
        isinstance(module, nn.MultiheadAttention)
        or "Attention" in type(module).__name__
        or any(word in leaf for word in _ATTENTION_WORDS)
    )


def _layer_stacks(model: nn.Module) -> list[str]:
    """Names of the ``ModuleList``/``Sequential`` containers whose items hold attention."""
    stacks: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(s + ".") for s in stacks):
            continue
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 0:
            if all(
                any(_is_attention(n, m) for n, m in item.named_modules() if n)
                for item in module.children()
            ):
                stacks.append(name)
    return stacks


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def auto_blocks(model: nn.Module, params: ParamSpec = None) -> dict[str, list[str]]:
    """The model's blocks by its structure (see the module docstring), in parameter order."""
    named = select_parameters(model, params)
    modules = dict(model.named_modules())
    stacks = _layer_stacks(model)
    blocks: dict[str, list[str]] = {}
    if stacks:
        for name, _ in named:
            blocks.setdefault(_transformer_block(name, stacks, modules), []).append(name)
        return blocks
    prefix = _single_child_prefix(model, [n for n, _ in named])
    for name, _ in named:
        rest = name[len(prefix) :]
        head = rest.split(".", 1)[0] if "." in rest else rest
        blocks.setdefault(prefix + head, []).append(name)
    return blocks


def _transformer_block(name: str, stacks: list[str], modules: dict[str, nn.Module]) -> str:
    owner = _owner(name)
    for stack in stacks:
        if name.startswith(stack + "."):
            index = name[len(stack) + 1 :].split(".", 1)[0]
            layer = f"{stack}.{index}"
            if _is_norm(modules[owner]):
                return f"{layer}.norm"
            path = owner[len(layer) :].strip(".").split(".") if owner != layer else []
            for depth in range(1, len(path) + 1):
                sub = f"{layer}." + ".".join(path[:depth])
                if _is_attention(sub, modules[sub]):
                    return f"{layer}.attn"
            return f"{layer}.mlp"
    return owner or name  # outside the layers: the module that holds it (or a root parameter)


def _single_child_prefix(model: nn.Module, names: list[str]) -> str:
    """``"net."`` when every parameter lies under one child (a wrapper), recursively."""
    prefix = ""
    while True:
        heads = {n[len(prefix) :].split(".", 1)[0] for n in names}
        if len(heads) != 1 or any("." not in n[len(prefix) :] for n in names):
            return prefix
        prefix += heads.pop() + "."


def module_names(model: nn.Module) -> list[str]:
    """The names of the modules that hold (directly or below) a parameter, in model order."""
    out: dict[str, None] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            out.setdefault(".".join(parts[:i]), None)
    return list(out)


def _no_match(model: nn.Module, what: str, spec: Any) -> ValueError:
    names = module_names(model)
    text = spec if isinstance(spec, str) else repr(spec)
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
    if not close:  # a suffix typed without its parents ("h.0.attn" for "transformer.h.0.attn")
        close = [n for n in names if n.endswith("." + text)][:3]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
    shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
    return ValueError(
        f"blocks: {what} {text!r} matches no parameter of the model{hint} The modules that hold "
        f"parameters are: {shown}"
    )


def resolve_blocks(
    model: nn.Module, blocks: Any = "auto", params: ParamSpec = None
) -> dict[str, list[str]]:
    """``{block name: [parameter names]}``: disjoint, non-empty, in model order.

    Args:
        model: the network.
        blocks: ``"auto"``, a dict ``{name: params spec}`` or a list of module names or
            patterns (see the module docstring).
        params: only these parameters (as ``params=`` elsewhere); blocks are cut to them.

    Raises:
        ValueError: a block that matches no parameter (the message lists the model's module
            names and the closest ones), a parameter in two blocks, an empty list.
        TypeError: ``blocks`` of another type.
    """
    allowed = [n for n, _ in select_parameters(model, params)]
    if isinstance(blocks, str):
        if blocks != "auto":
            raise ValueError(
                f"blocks must be 'auto', a dict {{name: parameter pattern(s)}} or a list of "
                f"module names, got the string {blocks!r}; for one block pass [{blocks!r}]"
            )
        return auto_blocks(model, params)
    if isinstance(blocks, Mapping):
        items = list(blocks.items())
    elif isinstance(blocks, Sequence):
        items = [(b, b) for b in blocks]
        for b, _ in items:
            if not isinstance(b, str):
                raise TypeError(
                    f"a list of blocks holds module names (strings), got {type(b).__name__}; "
                    "pass a dict {name: module or parameters} for other specs"
                )
    else:
        raise TypeError(
            "blocks must be 'auto', a dict {name: parameter pattern(s)} or a list of module "
            f"names, got {type(blocks).__name__}"
        )
    if not items:
        raise ValueError("blocks is empty: name at least one block, or pass blocks='auto'")
    chosen: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    allowed_set = set(allowed)
    for name, spec in items:
        if isinstance(spec, str):
            names = [n for n in allowed if _matches(n, spec)]
        else:
            try:
                names = [n for n, _ in select_parameters(model, spec) if n in allowed_set]
            except ValueError:
                names = []
        if not names:
            raise _no_match(model, f"block {name!r}:" if name != spec else "block", spec)
        for n in names:
            if n in owner:
                raise ValueError(
                    f"blocks {owner[n]!r} and {name!r} both hold parameter {n!r}; blocks must "
                    "be disjoint (a block-diagonal matrix has one block per parameter)"
                )
            owner[n] = str(name)
        chosen[str(name)] = names
    return chosen
