"""The block diagonal ``diag(A_11, ..., A_bb)`` of a curvature operator.

For disjoint index sets ``I_1 .. I_b`` (blocks of parameters), :class:`BlockDiagonalOperator`
multiplies by the matrix whose block ``(I_j, I_j)`` is ``A[I_j, I_j]`` and which is zero
elsewhere (and on indices in no block). It is symmetric when ``A`` is, and composes like any
operator (``2 * D``, ``D + G``, ``D.deflated(...)``).

Its eigenpairs are those of the blocks (an eigenvector lies in one block), so one Lanczos
vector per block can travel in one column: column ``x = [x_1; ...; x_b]`` gives
``D x = [A_11 x_1; ...; A_bb x_b]``, every block's product at once. This is how
:func:`~jupyter_curvature.spectral.block_spectra` runs the Lanczos processes of all blocks in
lockstep, one product of ``D`` per step.

Cost of one column:

* a :class:`~jupyter_curvature.operators.HessianOperator` whose blocks are whole parameters
  shares one forward and one gradient graph per batch among all blocks; block ``j`` then costs
  one backward from the gradients of block ``j`` to its parameters (Pearlmutter's
  ``H_jj v_j = d (g_j^T v_j) / d w_j``), through the part of the graph between them only
  (the layers above block ``j``, for a chain);
* any other operator: one product of ``A`` per block with the column cut to that block, all
  ``b k`` of them in one call of ``A`` (one pass over the data), each row block kept from its
  own column.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..core.blocks import resolve_blocks
from .base import CompositeOperator, CurvatureOperator

__all__ = ["BlockDiagonalOperator", "vectorised_block_backward"]


def _indices(spec: Any, n: int, name: str) -> torch.Tensor:
    idx = torch.as_tensor(spec, dtype=torch.long).reshape(-1)
    if idx.numel() == 0:
        raise ValueError(f"block {name!r} is empty")
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise ValueError(f"block {name!r} has indices outside [0, {n}) of the operator")
    if idx.unique().numel() != idx.numel():
        raise ValueError(f"block {name!r} repeats an index")
    return idx


class BlockDiagonalOperator(CompositeOperator):
    """``diag(A_11, ..., A_bb)``: the diagonal blocks of ``A`` (see the module docstring).

    Args:
        op: the operator ``A``.
        blocks: for an operator of a model (``HessianOperator``, ``GGNOperator``, ...): what
            :func:`~jupyter_curvature.core.blocks.resolve_blocks` takes (``"auto"``, a dict
            ``{name: parameter pattern(s)}``, a list of module names), restricted to the
            operator's parameters. For any operator: a dict ``{name: indices}`` or a list of
            index sequences, or a list of ints (the sizes of consecutive blocks).

    Attributes:
        names: the block names, in order.
        indices: one ``LongTensor`` of positions in the flat vector per block.
        groups: for a model's operator, the parameter indices of each block (``None`` when a
            block cuts a parameter or the operator has no parameters).

    Raises:
        ValueError: overlapping or empty blocks, indices out of range.
    """

    def __init__(self, op: CurvatureOperator, blocks: Any = "auto") -> None:
        super().__init__([op])
        n = op.shape[0]
        names_of_params = getattr(op, "param_names", None)
        self.groups: list[list[int]] | None = None
        if names_of_params is not None and (
            isinstance(blocks, str)
            or (isinstance(blocks, Mapping) and not _all_indices(blocks.values()))
            or (isinstance(blocks, Sequence) and blocks and isinstance(blocks[0], str))
        ):
            resolved = resolve_blocks(op.model, blocks, params=list(names_of_params))
            position = {name: i for i, name in enumerate(names_of_params)}
            offsets = [0]
            for p in op.params:
                offsets.append(offsets[-1] + p.numel())
            self.names = list(resolved)
            self.groups = [[position[p] for p in params] for params in resolved.values()]
            self.indices = [
                torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in group])
                for group in self.groups
            ]
        else:
            if isinstance(blocks, Mapping):
                items = list(blocks.items())
            elif (
                isinstance(blocks, Sequence)
                and blocks
                and all(isinstance(b, int) and not isinstance(b, bool) for b in blocks)
            ):
                if sum(blocks) != n or min(blocks) < 1:
                    raise ValueError(
                        f"block sizes {list(blocks)} must be positive and add up to the "
                        f"operator's dimension {n}"
                    )
                starts = [sum(blocks[:i]) for i in range(len(blocks))]
                items = [
                    (f"block{i}", range(s, s + b)) for i, (s, b) in enumerate(zip(starts, blocks))
                ]
            elif isinstance(blocks, Sequence) and blocks:
                items = [(f"block{i}", b) for i, b in enumerate(blocks)]
            else:
                raise TypeError(
                    "blocks must be a dict {name: indices}, a list of index lists or a list of "
                    f"block sizes for this operator (it has no parameters), got {blocks!r}"
                )
            self.names = [str(k) for k, _ in items]
            self.indices = [_indices(v, n, str(k)) for k, v in items]
            seen = torch.zeros(n, dtype=torch.bool)
            for name, idx in zip(self.names, self.indices):
                if seen[idx].any():
                    raise ValueError(
                        f"block {name!r} overlaps an earlier block; blocks must be disjoint"
                    )
                seen[idx] = True
        self.indices = [idx.to(op.device) for idx in self.indices]
        self.sizes = [int(idx.numel()) for idx in self.indices]

    @property
    def num_blocks(self) -> int:
        return len(self.indices)

    def block_rows(self, x: torch.Tensor, j: int) -> torch.Tensor:
        """The rows of block ``j`` of ``x`` (``(n,)`` or ``(n, k)``)."""
        return x[self.indices[j]]

    def pack(self, pieces: Sequence[torch.Tensor]) -> torch.Tensor:
        """One ``(n, k)`` block from the ``(n_j, k)`` pieces of the blocks (zero elsewhere)."""
        k = pieces[0].shape[1]
        out = torch.zeros(self.shape[0], k, dtype=pieces[0].dtype, device=pieces[0].device)
        for idx, piece in zip(self.indices, pieces):
            out[idx] = piece
        return out

    @property
    def spreads(self) -> bool:
        """Whether a product spreads its ``k`` columns over ``b k`` (one set per block)."""
        return not (self.groups is not None and groups_products(self.parts[0]))

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        (op,) = self.parts
        if not self.spreads:
            return op._product(block, functools.partial(op._matmat, groups=self.groups))
        k, b = block.shape[1], self.num_blocks
        spread = torch.zeros(block.shape[0], b * k, dtype=block.dtype, device=block.device)
        for j, idx in enumerate(self.indices):
            spread[idx, j * k : (j + 1) * k] = block[idx]
        product = op._product(spread)
        out = torch.zeros_like(block, dtype=product.dtype)  # float32 for a half-precision model
        for j, idx in enumerate(self.indices):
            out[idx] = product[idx, j * k : (j + 1) * k]
        return out

    def __repr__(self) -> str:
        return f"BlockDiagonalOperator({self.parts[0]!r}, blocks={self.names})"


def groups_products(op: Any) -> bool:
    """Whether ``op`` (an operator or its class) takes the blocks' products in one pass
    through its parameter groups (the Hessian's backward per group); otherwise the product
    of ``b`` blocks spreads its ``k`` columns over ``b k`` columns of one ordinary product."""
    return hasattr(op, "_batch_hvp")


def _all_indices(values: Any) -> bool:
    """A dict of index lists/tensors (not parameter patterns)."""
    return all(
        isinstance(v, torch.Tensor)
        or isinstance(v, range)
        or (
            isinstance(v, Sequence)
            and not isinstance(v, str)
            and all(isinstance(i, int) for i in v)
        )
        for v in values
    )


def vectorised_block_backward(params, grads, columns, groups, keep):
    """``diag(H_gg) V`` for all groups in ONE vectorised backward (a ``HessianOperator``
    with ``vectorize=True``), from one batch's gradient graph ``grads`` (``None`` where a
    gradient is constant) and the per-parameter ``columns`` ``(*p.shape, k)``.

    The batch of ``b k`` cotangents holds column ``i`` of group ``g`` on the gradients of
    ``g`` (zeros elsewhere); each result keeps the rows of its own group. The arithmetic is
    ``b k`` full columns, in one traversal of the graph (for small layers the traversal,
    not the arithmetic, is the cost). ``None`` when an operation has no batching rule.
    """
    k, b = columns[0].shape[-1], len(groups)
    owner = {i: g for g, group in enumerate(groups) for i in group}
    live = [i for i, g in enumerate(grads) if g is not None]
    if not live:
        return [torch.zeros_like(c) for c in columns]
    cotangents = []
    for i in live:
        c = columns[i].new_zeros(b * k, *params[i].shape)
        if i in owner:
            c[owner[i] * k : (owner[i] + 1) * k] = columns[i].movedim(-1, 0)
        cotangents.append(c)
    try:
        hv = torch.autograd.grad(
            [grads[i] for i in live],
            params,
            grad_outputs=cotangents,
            retain_graph=keep,
            allow_unused=True,
            is_grads_batched=True,
        )
    except RuntimeError:
        return None
    out = []
    for i, (h, c) in enumerate(zip(hv, columns)):
        if h is None or i not in owner:
            out.append(torch.zeros_like(c))
        else:
            out.append(h[owner[i] * k : (owner[i] + 1) * k].movedim(0, -1))
    return out
