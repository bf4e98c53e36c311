"""Token-level losses, and the weight of a batch in the mean over the data.

The engine's risk is the loss over *all* the data as if it were one batch
(``docs/operators.md``). For a loss that is a mean over samples, a batch of ``B_b``
samples enters with weight ``B_b / N``. A language model's loss is a mean over the
*tokens that count*: the causal-LM shift drops the first label of every sequence, and
positions labelled ``ignore_index`` (padding, prompts) count for nothing. Its risk over
batches ``b`` with ``T_b`` counted tokens (``T`` in all) is

    L = (1/T) sum_b sum_{t counted in b} l_t = sum_b (T_b / T) L_b,

so batch ``b`` must enter with weight ``T_b / T``, not ``B_b / N``: a mean of per-batch
means would weight a token of a short batch more than one of a long batch.

Cross-entropy and NLL over class indices are such a loss too: torch's mean divides by the
summed class weights of the labels that are not ``ignore_index`` (:func:`class_index_weights`).

The protocol (duck-typed, so that a loss of your own joins in): a loss with a method
``num_terms(targets) -> int``, the number of terms its ``"mean"`` divides by, is weighted by
it (:func:`mean_weight`); any other loss by the number of samples. A loss that also has
``terms(outputs, targets) -> (M,)`` (the per-term losses, zero for the terms that do not
count) gets the empirical Fisher over its terms (each counted token one observation).
:class:`TokenCrossEntropy` implements both.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class TokenCrossEntropy(nn.Module):
    """Token-level cross-entropy of a sequence model, as Hugging Face's causal-LM loss.

    For logits ``z`` of shape ``(B, L, V)`` and labels ``y`` of shape ``(B, L)``, with the
    shift (``shift=True``, causal language modelling: position ``t`` predicts the label at
    ``t + 1``)::

        l_{b,t} = -log softmax(z_{b,t})[y_{b,t+1}],   t = 0 .. L-2,
        L = (1/T) sum_{(b,t): y_{b,t+1} != ignore_index} l_{b,t},

    ``T`` the number of labels that are not ``ignore_index``. Without the shift every
    position predicts its own label (token classification, masked LM), and ``(B, V)``
    logits with ``(B,)`` labels are plain classification with ``ignore_index``. Hugging Face
    collators label padding ``-100``, and the engine's :func:`~jupyter_curvature.core.batches.
    labels_layout` labels every position with ``attention_mask == 0`` so.

    Over several batches the engine weights each by its :meth:`num_terms` (see the module
    docstring), so curvature, statistics and landscapes are of the mean over every counted
    token of the data. A batch without counted tokens has loss 0 and weight 0.

    The GGN's output Hessian is registered (:mod:`~jupyter_curvature.operators.loss_hessians`):
    per counted position the softmax Hessian ``diag(p) - p p^T`` (divided by ``T`` for the
    mean), zero at every other position.

    Args:
        shift: the causal-LM shift (``True``: GPT-style models; ``False``: labels aligned
            with the logits).
        ignore_index: the label of positions that do not count (Hugging Face: -100).
        reduction: ``"mean"`` (over the counted tokens) or ``"sum"``.

    Example:
        >>> import torch
        >>> loss = TokenCrossEntropy()
        >>> logits = torch.zeros(1, 3, 5, dtype=torch.float64)  # uniform over 5 tokens
        >>> labels = torch.tensor([[4, 2, -100]])  # position 0 predicts 2, position 1 nothing
        >>> loss.num_terms(labels), round(float(loss(logits, labels)), 6)
        (1, 1.609438)
    """

    def __init__(self, shift: bool = True, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(
                f"reduction must be 'mean' (over the counted tokens) or 'sum', got {reduction!r}"
            )
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
        self.shift = bool(shift)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"shift={self.shift}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"

    def _labels(self, labels: Any) -> torch.Tensor:
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
            raise TypeError(
                "data: TokenCrossEntropy needs integer labels (token ids, -100 where nothing "
                f"counts), got {type(labels).__name__}"
                + (f" of dtype {labels.dtype}" if isinstance(labels, torch.Tensor) else "")
            )
        if self.shift:
            if labels.ndim != 2:
                raise ValueError(
                    f"data: TokenCrossEntropy(shift=True) needs (batch, length) labels, got shape "
                    f"{tuple(labels.shape)}; use shift=False for labels aligned with the logits"
                )
            return labels[:, 1:]
        return labels

    def aligned(self, logits: torch.Tensor, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and labels that pair up, flattened: ``(M, V)`` and ``(M,)``."""
        y = self._labels(labels)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"TokenCrossEntropy needs a logits tensor, got {type(logits).__name__}")
        z = logits[:, :-1] if self.shift else logits
        if tuple(z.shape[:-1]) != tuple(y.shape):
            raise ValueError(
                f"data: logits of shape {tuple(logits.shape)} and labels of shape "
                f"{tuple(labels.shape)} do not pair up: TokenCrossEntropy needs logits "
                "(batch, length, vocab) and labels (batch, length)"
                + (" (the shift drops the last logit and the first label)" if self.shift else "")
            )
        return z.reshape(-1, z.shape[-1]), y.reshape(-1)

    def counted(self, labels: Any) -> torch.Tensor:
        """A boolean mask of the labels that count, after the shift."""
        return self._labels(labels) != self.ignore_index

    def num_terms(self, labels: Any) -> int:
        """The number of counted tokens: what the mean divides by, and the batch's weight."""
        return int(self.counted(labels).sum())

    def terms(self, logits: torch.Tensor, labels: Any) -> torch.Tensor:
        """The per-token losses ``(M,)``, 0 where the label is ``ignore_index``."""
        z, y = self.aligned(logits, labels)
        return F.cross_entropy(z, y, ignore_index=self.ignore_index, reduction="none")

    def forward(self, logits: torch.Tensor, labels: Any) -> torch.Tensor:
        z, y = self.aligned(logits, labels)
        total = F.cross_entropy(z, y, ignore_index=self.ignore_index, reduction="sum")
        if self.reduction == "sum":
            return total
        count = (y != self.ignore_index).sum()
        return total / count.clamp_min(1).to(total.dtype)

    def output_mask(self, logits: torch.Tensor, labels: Any) -> torch.Tensor:
        """1 at the positions of ``logits.shape[:-1]`` whose prediction counts, else 0."""
        keep = self.counted(labels).to(logits.dtype)
        if self.shift:  # the last position predicts nothing
            keep = F.pad(keep, (0, 1))
        return keep

    def correct(self, logits: torch.Tensor, labels: Any) -> torch.Tensor:
        """The number of counted tokens whose most likely token is the label (top-1 hits)."""
        z, y = self.aligned(logits, labels)
        return ((z.argmax(-1) == y) & (y != self.ignore_index)).sum()


def class_index_weights(loss_fn: Any, targets: Any) -> torch.Tensor | None:
    """The weights of the terms of a cross-entropy or NLL mean over class-index targets.

    ``nn.CrossEntropyLoss`` and ``nn.NLLLoss`` (and ``F.cross_entropy``, ``F.nll_loss``) with
    ``reduction="mean"`` divide the weighted sum of the per-position losses by the sum of
    the weights, not by the number of samples::

        L_b = sum_i w_{y_i} l_i / sum_i w_{y_i},   w_{y_i} = 0 where y_i = ignore_index,

    ``w`` the class weights (1 without ``weight=``), ``i`` over the batch's positions. The
    mean over all data is then ``sum_b W_b L_b / sum_b W_b`` with ``W_b = sum_i w_{y_i}``: a
    batch enters with its summed weight, not its size (with one batch the two agree, with
    several they differ as soon as a batch has an ignored label or weighted classes).

    Returns ``w_{y_i}`` shaped like ``targets``, or ``None`` for any other loss, for a
    subclass that overrides ``forward`` (its denominator is its own), and for class
    probabilities (whose mean divides by the number of positions, weights or not).
    """
    if not _is_class_index_loss(loss_fn):
        return None
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point():
        return None
    counted = targets != getattr(loss_fn, "ignore_index", -100)
    class_weight = getattr(loss_fn, "weight", None)
    if class_weight is None:
        return counted.to(torch.int64)
    # an ignored (or out-of-range) label indexes class 0 here: its weight is masked, and the
    # loss itself names a label out of range
    valid = counted & (targets >= 0) & (targets < class_weight.numel())
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    return class_weight.to(targets.device)[safe] * counted


def _is_class_index_loss(loss_fn: Any) -> bool:
    if loss_fn is F.cross_entropy or loss_fn is F.nll_loss:
        return True
    return any(
        isinstance(loss_fn, cls) and type(loss_fn).forward is cls.forward
        for cls in (nn.CrossEntropyLoss, nn.NLLLoss)
    )


def counted_labels(loss_fn: Any, targets: torch.Tensor) -> torch.Tensor:
    """Which class-index labels count: ``targets != ignore_index`` for cross-entropy, NLL
    and :class:`TokenCrossEntropy`, every label for any other loss."""
    if _is_class_index_loss(loss_fn) or isinstance(loss_fn, TokenCrossEntropy):
        return targets != getattr(loss_fn, "ignore_index", -100)
    return torch.ones_like(targets, dtype=torch.bool)


def class_dim(loss_fn: Any, outputs: Any, targets: Any) -> int | None:
    """The class dimension of ``outputs`` for top-1 accuracy against class-index ``targets``,
    or ``None`` when they are no classification (not tensors, float targets, or a causal-LM
    loss, whose labels pair with shifted logits: it counts its own hits, ``correct``).

    Cross-entropy and NLL take classes on dimension 1 (``(B, C, d1, ...)`` with targets
    ``(B, d1, ...)``); any other loss with integer targets is taken to have them last
    (``(B, ..., C)`` with targets ``(B, ...)``). Deciding by the loss, not by the shapes
    alone, matters when the two layouts have the same shapes (``(B, C, T)`` with ``T = C``).
    """
    if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
        return None
    if targets.is_floating_point() or outputs.ndim < 2:
        return None
    if getattr(loss_fn, "shift", False):  # a causal-LM loss: labels pair with shifted logits
        return None
    if _is_class_index_loss(loss_fn):
        fits = tuple(targets.shape) == (outputs.shape[0], *outputs.shape[2:])
        return 1 if fits else None
    return outputs.ndim - 1 if tuple(targets.shape) == tuple(outputs.shape[:-1]) else None


def mean_weight(loss_fn: Any, batch: Any) -> int | float:
    """The weight of ``batch`` in the mean over the data: what the loss's ``"mean"`` divides
    by, so that batches combine into the loss over all data as one batch.

    ``loss_fn.num_terms(targets)`` for a loss that says how many terms its mean has
    (:class:`TokenCrossEntropy`); the summed class weights of the counted labels for
    cross-entropy and NLL over class indices (:func:`class_index_weights`: an int without
    ``weight=``); else the number of samples ``batch.size``.
    """
    num_terms = getattr(loss_fn, "num_terms", None)
    if callable(num_terms):
        return int(num_terms(batch.targets))
    weights = class_index_weights(loss_fn, batch.targets)
    if weights is None:
        return batch.size
    total = weights.sum()
    return float(total) if total.is_floating_point() else int(total)


def check_equal_sample_weights(loss_fn: Any, targets: Any, where: str) -> None:
    """Per-sample gradients are of each sample's own mean loss, which is the sample's share of
    the data's mean only when every sample weighs the same in it: a cross-entropy whose
    samples have ignored labels or classes of other weights does not (ValueError)."""
    weights = class_index_weights(loss_fn, targets)
    if weights is None:
        return
    per_sample = weights.reshape(weights.shape[0], -1).sum(1)
    if bool((per_sample != per_sample[0]).any()) or not bool(per_sample[0] > 0):
        raise ValueError(
            f"{where} with {type(loss_fn).__name__} whose samples weigh differently in its mean "
            "(labels equal to ignore_index, or class weights): a sample's own mean loss is not "
            "its share of the data's; for ignored labels use jc.TokenCrossEntropy(shift=False) "
            "(one term per counted label), else mini-batch statistics or the Hessian/GGN"
        )


def no_counted_terms_error(loss_fn: Any) -> ValueError:
    """The error for data in which no term of ``loss_fn``'s mean counts (every label is
    ``ignore_index``): its mean over the data is 0 / 0."""
    return ValueError(
        f"data: no label counts for {type(loss_fn).__name__}'s mean (every label is its "
        "ignore_index, or every class weight is 0), so the mean loss over the data is 0/0; "
        "check the labels, or use reduction='sum'"
    )


def has_terms(loss_fn: Any) -> bool:
    """Whether ``loss_fn`` gives per-term losses (``terms``) and their count (``num_terms``)."""
    return callable(getattr(loss_fn, "terms", None)) and callable(
        getattr(loss_fn, "num_terms", None)
    )
