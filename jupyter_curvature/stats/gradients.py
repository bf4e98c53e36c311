"""Loss and gradient statistics over mini-batches, or per sample with ``torch.func``.

The original package's ``loss_stats`` (MLRG Deep Curvature, ``curvature/utils.py``): loss
mean and variance, the squared norm of the mean gradient and the gradient variance (the
trace of the covariance of mini-batch gradients), here with batches weighted by their size
(an uneven last batch counts for its samples) and a streaming, cancellation-free merge of
the moments. Per-sample statistics (the original's ``--stats_batch 1``) use
``torch.func.vmap(torch.func.grad(...))`` over ``functional_call``: one vectorised pass per
chunk of samples instead of a Python loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from ..core.batches import BatchLayout, check_per_sample_split
from ..core.distributed.primitives import all_reduce_sum, is_distributed
from ..core.inputs import model_outputs
from ..core.losses import check_equal_sample_weights
from ..core.model_state import check_batchnorm_policy, model_device_dtype, model_mode
from ..core.params import ParamSpec, select_parameters
from ._common import (
    WeightedMoments,
    accumulation_dtype,
    batch_loss,
    batch_weight,
    check_batch_size,
    known_num_samples,
    loss_normaliser,
    rebatch,
)
from .results import GradientStatistics

#: per-sample gradients held at once: about this many numbers (chunk = this // num_params)
_PER_SAMPLE_BUDGET = 2**24


def single_batch_error(num_samples: int, batch_size: int, what: str) -> ValueError:
    return ValueError(
        f"the data holds {num_samples} sample{'s' if num_samples != 1 else ''}, which make a "
        f"single batch at batch_size={batch_size}: the {what} across mini-batches needs at "
        "least two batches (with one batch its product is the full-data one, and there is no "
        f"spread to measure); choose a batch_size below {num_samples}"
        + (" or per_sample=True" if what.startswith("gradient") and num_samples > 1 else "")
    )


def _split_params(
    model: nn.Module, params: ParamSpec
) -> tuple[list[str], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Names of the chosen parameters, their detached values, and everything else held fixed."""
    chosen = select_parameters(model, params)
    names = [n for n, _ in chosen]
    values = {n: p.detach() for n, p in chosen}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in values}
    fixed.update(dict(model.named_buffers()))
    return names, values, fixed


def gradient_statistics(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    batch_size: int = 128,
    per_sample: bool = False,
    *,
    params: ParamSpec = None,
    batchnorm: str = "eval",
    chunk_size: int | None = None,
    batch_layout: BatchLayout | None = None,
) -> GradientStatistics:
    """Loss mean/variance, squared norm of the mean gradient, gradient variance and SNR.

    With batches ``i`` of ``b_i`` samples (``N`` in all, weights ``w_i = b_i / N``), batch
    mean losses ``l_i`` and gradients ``g_i = grad l_i``::

        loss_mean         = sum_i w_i l_i                  (the full-data mean loss)
        loss_var          = sum_i w_i (l_i - loss_mean)^2
        grad_mean_norm_sq = ||g||^2,  g = sum_i w_i g_i    (the full-data gradient)
        grad_var          = sum_i w_i ||g_i - g||^2        (trace of the covariance)
        snr               = grad_mean_norm_sq / grad_var

    With equal batches these are the original's formulas exactly (population variances).
    For a token loss (:class:`~jupyter_curvature.core.losses.TokenCrossEntropy`) ``b_i`` is
    the number of counted tokens of batch ``i`` and ``N`` of the data, so ``loss_mean`` and
    ``g`` are those of the mean over every counted token.

    Args:
        model: the network.
        loss_fn: ``loss_fn(outputs, targets)`` with ``reduction="mean"`` or ``"sum"`` (a sum
            is divided by the batch size: the statistics are of mean losses).
        data: a DataLoader, a re-iterable of ``(inputs, targets)`` batches, or one batch
            (Hugging Face dict batches too, see the operators). Samples are read in order and
            regrouped into batches of ``batch_size``.
        batch_size: the mini-batch size of the statistics (ignored when ``per_sample``).
        per_sample: statistics of single samples (``batch_size`` 1), computed with
            ``torch.func.vmap`` over ``torch.func.grad`` in chunks of ``chunk_size`` samples.
        params: the parameters differentiated (``None``: all trainable ones; or a name
            pattern, module prefix, submodule or list, as for the operators).
        batchnorm: ``"eval"`` (running statistics) or ``"train"`` (batch statistics, running
            buffers left untouched; not allowed with ``per_sample``). Dropout is off.
        chunk_size: samples per vectorised call when ``per_sample`` (default: as many as
            keep about 16M per-sample gradient entries in memory, at most 1024).
        batch_layout: how to split a batch that is not an ``(inputs, targets)`` pair.

    Raises:
        ValueError: ``batch_size`` below 1 or above the dataset size; a dataset that makes a
            single batch (no variance across batches exists); ``per_sample`` with
            ``batchnorm="train"``.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Linear(3, 2).double()
        >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
        >>> s = gradient_statistics(model, torch.nn.MSELoss(), (x, y), batch_size=4)
        >>> s.num_batches, s.batch_size
        (2, 4)
    """
    batchnorm = check_batchnorm_policy(batchnorm)
    reduction = loss_normaliser(loss_fn)
    if per_sample:
        if callable(getattr(loss_fn, "num_terms", None)):
            raise ValueError(
                f"per_sample=True with {type(loss_fn).__name__}, a loss over tokens: a "
                "sequence's share of the token mean depends on its counted tokens; use "
                "mini-batches (batch_size=...) instead"
            )
        if batchnorm == "train":
            raise ValueError(
                "per_sample=True with batchnorm='train' would normalise every sample by its own "
                "statistics (a batch of one, where BatchNorm is undefined); use batchnorm='eval'"
            )
        if chunk_size is not None:
            check_batch_size(chunk_size, "chunk_size")
        stats_batch = 1
    else:
        stats_batch = check_batch_size(batch_size)
    total = known_num_samples(data)
    sharded = is_distributed()  # each rank holds a shard: the checks are on the merged counts
    if total is not None and not sharded:
        if stats_batch > total:
            raise ValueError(
                f"batch_size={stats_batch} is larger than the dataset ({total} samples); "
                f"choose a batch_size between 1 and {total}"
            )
        if math.ceil(total / stats_batch) < 2:
            raise single_batch_error(total, stats_batch, "gradient variance")
    device, dtype = model_device_dtype(model)
    names, values, fixed = _split_params(model, params)
    num_params = sum(v.numel() for v in values.values())
    acc = accumulation_dtype(device)

    setup = _Setup(
        model, loss_fn, names, values, fixed, reduction, batch_layout, device, dtype, acc
    )
    with model_mode(model, batchnorm):
        sample_count = None  # the samples (per-sample moments: their weight)
        if per_sample:
            chunk = chunk_size or max(1, min(1024, _PER_SAMPLE_BUDGET // max(num_params, 1)))
            grads, losses = _per_sample_moments(setup, data, chunk)
        else:
            grads, losses, sample_count = _minibatch_moments(setup, data, stats_batch)
    if sharded:
        from ..core.distributed.reduce import all_reduce_moments

        grads = all_reduce_moments(grads, like=torch.zeros(num_params, dtype=acc, device=device))
        losses = all_reduce_moments(losses, like=torch.zeros((), dtype=acc, device=device))
        if sample_count is not None:
            _, sample_count = all_reduce_sum(torch.zeros(1, dtype=acc, device=device), sample_count)
    num_samples = int(round(losses.weight)) if sample_count is None else sample_count
    if losses.count < 2:
        raise single_batch_error(num_samples, stats_batch, "gradient variance")
    mean_sq = float((grads.mean * grads.mean).sum())
    grad_var = float(grads.variance)
    return GradientStatistics(
        loss_mean=float(losses.mean),
        loss_var=float(losses.variance),
        grad_mean_norm_sq=mean_sq,
        grad_var=grad_var,
        snr=mean_sq / grad_var if grad_var > 0 else math.inf,
        per_sample=bool(per_sample),
        batch_size=stats_batch,
        num_batches=losses.count,
        num_samples=num_samples,
        num_params=num_params,
        batchnorm=batchnorm,
    )


@dataclass
class _Setup:
    """What every pass needs: the model called functionally on the chosen parameters."""

    model: nn.Module
    loss_fn: Any
    names: list[str]
    values: dict[str, torch.Tensor]
    fixed: dict[str, torch.Tensor]
    reduction: str
    layout: BatchLayout | None
    device: torch.device
    dtype: torch.dtype
    acc: torch.dtype

    def batches(self, data: Any, size: int, strict: bool = True):
        return rebatch(
            data, size, layout=self.layout, device=self.device, dtype=self.dtype, strict=strict
        )


def _minibatch_moments(
    s: _Setup, data: Any, batch_size: int
) -> tuple[WeightedMoments, WeightedMoments, int | None]:
    """The moments over mini-batches (weighted by what each batch's mean divides by), and the
    number of samples."""
    grads, losses = WeightedMoments(), WeightedMoments()
    leaves = {n: v.clone().requires_grad_(True) for n, v in s.values.items()}
    samples = 0
    for batch in s.batches(data, batch_size):
        weight = batch_weight(s.loss_fn, batch)
        samples += batch.size
        if weight == 0:  # no token of this batch counts: no term of the mean
            continue
        raw = functional_call(s.model, (leaves, s.fixed), batch.args, batch.kwargs)
        outputs = model_outputs(raw, None)
        loss = batch_loss(s.loss_fn, outputs, batch.targets, weight, s.reduction)
        g = torch.autograd.grad(loss, [leaves[n] for n in s.names], allow_unused=True)
        flat = torch.cat(
            [
                (gi if gi is not None else torch.zeros_like(leaves[n])).reshape(-1).to(s.acc)
                for n, gi in zip(s.names, g, strict=True)
            ]
        )
        grads.add(flat, weight)
        losses.add(loss.detach().to(s.acc), weight)
    return grads, losses, samples


def _per_sample_moments(
    s: _Setup, data: Any, chunk: int
) -> tuple[WeightedMoments, WeightedMoments]:
    def unsqueeze(tree: Any) -> Any:
        return tree_map(lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t, tree)

    def per_sample_grad_for(arg_dims: tuple, kw_dims: dict):
        """``grad`` of one sample's loss: per-sample inputs (dim 0) made a batch of one."""

        def sample_loss(p: dict[str, torch.Tensor], args: tuple, kwargs: dict, target: Any):
            args = tuple(a if d is None else unsqueeze(a) for a, d in zip(args, arg_dims))
            kwargs = {k: v if kw_dims[k] is None else unsqueeze(v) for k, v in kwargs.items()}
            raw = functional_call(s.model, (p, s.fixed), args, kwargs)
            loss = batch_loss(
                s.loss_fn, model_outputs(raw, None), unsqueeze(target), 1, s.reduction
            )
            return loss, loss.detach()

        return grad(sample_loss, has_aux=True)

    grads, losses = WeightedMoments(), WeightedMoments()
    for number, batch in enumerate(s.batches(data, chunk, strict=False)):
        check_equal_sample_weights(s.loss_fn, batch.targets, "per_sample=True")
        if number == 0:  # a batch-sized input that is not per sample must be marked jc.shared
            check_per_sample_split(batch, lambda b: b.call(s.model))
        # only per-sample inputs are split (core/batches.py: Batch.per_sample_dims); inputs
        # marked jc.shared, or not batch-sized, reach every sample whole
        arg_dims, kw_dims = batch.per_sample_dims()
        per_sample_grad = per_sample_grad_for(arg_dims, kw_dims)
        g, loss = vmap(per_sample_grad, in_dims=(None, arg_dims, kw_dims, 0))(
            s.values, batch.args, batch.kwargs, batch.targets
        )
        c = batch.size
        # the chunk's mean and scatter, parameter by parameter, reading each per-sample
        # gradient once and without temporaries: the sums run in float64 on the fly, so
        # sum ||g||^2 - c ||mean||^2 loses only ~1e-16 (1 + SNR) relative (chunks then merge
        # by Chan's update, which has no cancellation)
        means, sumsq = [], torch.zeros((), dtype=s.acc, device=s.device)
        for n in s.names:
            gi = g[n].reshape(c, -1)
            means.append(gi.sum(0, dtype=s.acc) / c)
            sumsq = sumsq + torch.linalg.vector_norm(gi, dtype=s.acc) ** 2
        mean = torch.cat(means)
        scatter = (sumsq - c * (mean @ mean)).clamp_min(0.0)
        grads.add_group(c, mean, scatter, count=c)
        loss = loss.to(s.acc)
        lm = loss.mean()
        losses.add_group(c, lm, ((loss - lm) ** 2).sum(), count=c)
    return grads, losses
