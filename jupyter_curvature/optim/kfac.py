"""K-FAC: Kronecker-factored approximate curvature (Martens & Grosse 2015), with KFC for
convolutions (Grosse & Martens 2016) and KL clipping (Ba, Grosse & Martens 2017).

(About 800 lines, over the package's 700: one paper's preconditioner and the optimiser
that wraps it, read together against the paper's equations.)

For a layer with weights ``W`` (``out x in``, the bias appended as a last column) the
Fisher block is approximated by a Kronecker product :math:`F \\approx A \\otimes G`:

.. math::

    A = \\mathbb{E}\\big[\\textstyle\\sum_t \\bar a_t \\bar a_t^\\top\\big],\\qquad
    G = \\mathbb{E}\\big[\\tfrac{1}{|T|}\\textstyle\\sum_t g_t g_t^\\top\\big],

where :math:`\\bar a_t` is the layer input at location ``t`` (a patch of the input for a
convolution, ``unfold``; a 1 appended for the bias) and :math:`g_t` the derivative of the
per-sample loss with respect to the pre-activation there. For a linear layer ``|T| = 1``;
for a convolution A sums over locations and G averages over them (the KFC paper's
:math:`\\Omega` and :math:`\\Gamma`, under its IAD, SH and SUD assumptions). Following
Martens & Grosse (section 5) the derivatives use targets **sampled from the model's
predictive distribution** (``fisher="sampled"``), so that G estimates the true Fisher,
not the empirical one; ``fisher="type2"`` takes the exact expectation over the targets
(one backward pass per output, as curvlinops' type-2 K-FAC), and ``fisher="empirical"``
uses the training loss's own gradients.

The running factors are exponential averages with weight
:math:`\\min(1 - 1/k, \\text{factor_decay})` on the old value at the k-th update (Martens &
Grosse, section 5: the first estimate is used as is), refreshed every
``factor_interval`` steps (``TCov``). Every ``inverse_interval`` steps (``TInv``) both
factors are eigendecomposed in float64, :math:`A = Q_A D_A Q_A^\\top`,
:math:`G = Q_G D_G Q_G^\\top`, and the gradient ``M`` (``out x in``) is preconditioned by

.. math::

    V = Q_G\\Big[\\big(Q_G^\\top M Q_A\\big) \\oslash \\big(d_G d_A^\\top + \\lambda\\big)\\Big]Q_A^\\top
    = (A \\otimes G + \\lambda I)^{-1} \\operatorname{vec}(M)

(``damping_mode="eigen"``, the exact inverse of the damped Kronecker product), or with
the factored Tikhonov damping of Martens & Grosse (section 6.3,
``damping_mode="pi"``): :math:`(A + \\pi\\sqrt\\lambda I)^{-1}` and
:math:`(G + \\sqrt\\lambda/\\pi\\, I)^{-1}` with
:math:`\\pi = \\sqrt{(\\operatorname{tr}A/\\dim A)/(\\operatorname{tr}G/\\dim G)}`.

KL clipping (Ba et al. 2017, section 4) scales all preconditioned gradients by
:math:`\\nu = \\min\\big(1, \\sqrt{\\kappa / (\\eta^2 \\sum_\\ell V_\\ell \\cdot M_\\ell)}\\big)`
so that the step's predicted KL change stays below :math:`\\kappa` (``kl_clip``); a
non-positive sum (possible only without damping) leaves the step unscaled.

Defaults follow alecwangcq/KFAC-Pytorch, which the original package used: momentum 0.9,
factor decay 0.95, damping 1e-3, KL clip 1e-3, TCov 10, TInv 100. Unlike it (and the
original), weight decay is applied from the first step, eigendecompositions use
``torch.linalg.eigh`` in float64, and the optimiser takes the model, not its parameters.

Layers: ``nn.Linear`` and ``nn.Conv2d`` (zero padding: an amount, ``"valid"`` or
``"same"``; ``groups=1``) with trainable weights, whose forward pass runs. Every other
parameter (BatchNorm, grouped convolutions, embeddings, a ``MultiheadAttention``'s
``out_proj``, whose weight the attention uses without calling its forward, ...) gets the
plain gradient: SGD with momentum in :class:`KFAC`, untouched by
:class:`KFACPreconditioner`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer

from ..core.validate import non_negative, positive, positive_int, unit_interval

SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d)
FISHER_TYPES = ("sampled", "type2", "empirical")
LOSSES = ("cross_entropy", "mse")
DAMPING_MODES = ("eigen", "pi")
_UNFOLD_CHUNK = 1 << 26  # elements of an unfolded patch matrix per chunk


def _supported(module: nn.Module) -> bool:
    if not isinstance(module, SUPPORTED_LAYERS) or not module.weight.requires_grad:
        return False
    if isinstance(module, nn.Conv2d):
        # padding: an amount, "valid" or "same" (both zero padding, see _conv_padding)
        return module.groups == 1 and module.padding_mode == "zeros"
    return True


def _never_called(model: nn.Module) -> dict[int, str]:
    """Layers whose weights are used without calling their forward, so that K-FAC's hooks
    never see their inputs: a ``MultiheadAttention``'s ``out_proj`` (the attention passes
    its weight to ``F.multi_head_attention_forward``). By id, with the reason."""
    return {
        id(m.out_proj): "the MultiheadAttention uses its weight without calling its forward, "
        "so K-FAC never sees its inputs"
        for m in model.modules()
        if isinstance(m, nn.MultiheadAttention)
    }


def _conv_padding(m: nn.Conv2d) -> tuple[int, int, int, int]:
    """The zeros around the input as ``F.pad`` takes them: ``(left, right, top, bottom)``.

    ``"same"`` (stride 1) pads ``dilation * (kernel - 1)`` in all along each dimension,
    half before and the rest after: an even kernel gets the extra zero on the right and at
    the bottom, as torch's ``Conv2d`` does (``_reversed_padding_repeated_twice``).
    """
    if m.padding == "valid":
        return (0, 0, 0, 0)
    if m.padding == "same":
        (th, tw) = (d * (k - 1) for d, k in zip(m.dilation, m.kernel_size))
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = m.padding
    return (pw, pw, ph, ph)


#: relative shifts tried, in order, when LAPACK's eigh fails on a factor (see factor_eigh)
EIGH_SHIFTS = (0.0, 1e-12, 1e-9, 1e-6)


def factor_eigh(factor: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition of a symmetric positive semi-definite K-FAC factor, robust to LAPACK.

    LAPACK's divide-and-conquer ``syevd`` (behind ``torch.linalg.eigh`` on the CPU) can fail to
    converge on a factor of low rank with a large, exactly repeated zero eigenvalue: densenet161
    at 32 x 32 with a batch of 2 gives a 1728 x 1728 factor ``A`` of rank 71 that it rejects.
    A shift ``s I`` moves every eigenvalue by exactly ``s`` and keeps the eigenvectors, so
    ``eigh(F + s I) - s`` is the decomposition of ``F``; the shifts tried are relative to
    ``max(diag F)``, from ``1e-12`` (invisible next to any damping ``>= 1e-10``) upwards.
    """
    scale = float(factor.diagonal().abs().max()) if factor.numel() else 0.0
    last: Exception | None = None
    for relative in EIGH_SHIFTS:
        shift = relative * scale
        if relative and not shift:
            break  # a zero factor: no shift can help (and eigh of zeros does not fail)
        shifted = (
            factor
            if not shift
            else factor
            + shift * torch.eye(factor.shape[0], dtype=factor.dtype, device=factor.device)
        )
        try:
            values, vectors = torch.linalg.eigh(shifted)
        except torch.linalg.LinAlgError as exc:
            last = exc
            continue
        return values - shift, vectors
    raise torch.linalg.LinAlgError(
        f"K-FAC could not decompose the curvature factor {what} (shape "
        f"{tuple(factor.shape)}, largest diagonal entry {scale:.3g}), even shifted by up to "
        f"{EIGH_SHIFTS[-1]:g} x that entry: the factor is not finite or not symmetric; check the "
        f"loss and the learning rate, or exclude the layer with layers=... ({last})"
    )


class _Layer:
    """One preconditioned layer: running factors, their eigendecompositions, pending sums."""

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name = name
        self.module = module
        self.has_bias = module.bias is not None and module.bias.requires_grad
        w = module.weight
        self.out_dim = w.shape[0]
        self.in_dim = w[0].numel() + (1 if self.has_bias else 0)
        self.A: torch.Tensor | None = None
        self.G: torch.Tensor | None = None
        self.QA = self.dA = self.QG = self.dG = None
        self.pi = 1.0
        self.updates = 0
        self.reset_pending()

    def reset_pending(self) -> None:
        self.A_sum: torch.Tensor | None = None
        self.A_count = 0
        self.G_sum: torch.Tensor | None = None
        self.G_count = 0
        self.G_fallback: torch.Tensor | None = None
        self.G_fallback_count = 0

    @property
    def params(self) -> list[nn.Parameter]:
        return [self.module.weight] + ([self.module.bias] if self.has_bias else [])

    # --- statistics -----------------------------------------------------------------
    def input_rows(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """The rows :math:`\\bar a` (inputs or patches, 1 appended), in chunks."""
        m = self.module
        x = x.detach()
        if isinstance(m, nn.Linear):
            chunks: Iterable[torch.Tensor] = [x.reshape(-1, x.shape[-1])]
        else:
            left, right, top, bottom = _conv_padding(m)
            if left == right and top == bottom:  # unfold pads symmetrically itself
                padding, pad = (top, left), None
            else:  # "same" with an even kernel: the extra zero after, padded explicitly
                padding, pad = (0, 0), (left, right, top, bottom)
            per_sample = x[0].numel() * m.kernel_size[0] * m.kernel_size[1]
            step = max(1, _UNFOLD_CHUNK // max(per_sample, 1))
            chunks = (
                F.unfold(
                    x[i : i + step] if pad is None else F.pad(x[i : i + step], pad),
                    m.kernel_size,
                    m.dilation,
                    padding,
                    m.stride,
                )  # fmt: skip
                .transpose(1, 2)
                .reshape(-1, self.in_dim - (1 if self.has_bias else 0))
                for i in range(0, x.shape[0], step)
            )
        for rows in chunks:
            if self.has_bias:
                rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
            yield rows

    def add_inputs(self, x: torch.Tensor) -> None:
        total = None
        for rows in self.input_rows(x):
            part = rows.T @ rows
            total = part if total is None else total + part
        self.A_sum = total if self.A_sum is None else self.A_sum + total
        self.A_count += x.shape[0]

    def output_rows(self, g: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Pre-activation derivatives as rows, and the number of locations per sample."""
        g = g.detach()
        if isinstance(self.module, nn.Conv2d):
            locations = g.shape[2] * g.shape[3]
            return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]), locations
        rows = g.reshape(-1, g.shape[-1])
        return rows, rows.shape[0] // g.shape[0]

    def grad_matrix(self) -> torch.Tensor | None:
        w = self.module.weight
        if w.grad is None:
            return None
        mat = w.grad.reshape(self.out_dim, -1)
        if self.has_bias:
            b = self.module.bias.grad
            bias = torch.zeros_like(mat[:, :1]) if b is None else b.reshape(-1, 1)
            mat = torch.cat([mat, bias], dim=1)
        return mat

    def param_matrix(self) -> torch.Tensor:
        mat = self.module.weight.detach().reshape(self.out_dim, -1)
        if self.has_bias:
            mat = torch.cat([mat, self.module.bias.detach().reshape(-1, 1)], dim=1)
        return mat

    def split(self, mat: torch.Tensor) -> list[torch.Tensor]:
        w = self.module.weight
        if self.has_bias:
            return [mat[:, :-1].reshape(w.shape), mat[:, -1].reshape(self.module.bias.shape)]
        return [mat.reshape(w.shape)]


class KFACPreconditioner:
    """K-FAC as a preconditioner: :meth:`step` replaces the gradients of the supported
    layers by their natural-gradient directions, in front of any optimiser.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> kfac = KFACPreconditioner(model)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> out = model(x)
    >>> kfac.fisher_backward(out)            # sampled-label pass (optional, see below)
    >>> nn.functional.cross_entropy(out, y).backward()
    >>> kfac.step(); opt.step(); opt.zero_grad()

    Args:
        model: the network; its ``nn.Linear``/``nn.Conv2d`` layers are preconditioned.
        damping: :math:`\\lambda` (Tikhonov damping), > 0.
        factor_decay: weight of the old running factor (0.95), in [0, 1).
        factor_interval: steps between factor updates (TCov, 10).
        inverse_interval: steps between eigendecompositions (TInv, 100).
        kl_clip: :math:`\\kappa` of KL clipping, or ``None`` for none (needs ``lr``).
        lr: the learning rate the step will be taken with (a number or a function giving
            it, such as ``lambda: opt.param_groups[0]["lr"]``), for KL clipping.
        fisher: ``"sampled"`` (targets drawn from the model; call :meth:`fisher_backward`
            with the outputs before ``loss.backward()``), ``"type2"`` (exact expectation
            over targets; ``fisher_backward`` does one pass per output) or
            ``"empirical"`` (the loss's own gradients; no extra pass).
        loss: the likelihood the model's outputs parametrise: ``"cross_entropy"``
            (softmax over the last dimension) or ``"mse"`` (Gaussian, matching
            ``nn.MSELoss``).
        loss_reduction: ``"mean"`` or ``"sum"``: how the training loss reduces over the
            batch (only the empirical Fisher needs it).
        damping_mode: ``"eigen"`` or ``"pi"`` (see the module docstring).
        layers: names (or modules) of the layers to precondition; default all supported.
        seed: seed of the target sampling; step ``k`` draws from a generator seeded by
            ``(seed, k)``, so the global RNG is not touched and a replayed step is identical.

    Raises:
        TypeError: ``model`` is not a module (for example ``model.parameters()``).
        ValueError: no supported layer (the message names the supported types), or a
            non-positive damping or interval.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        damping: float = 1e-3,
        factor_decay: float = 0.95,
        factor_interval: int = 10,
        inverse_interval: int = 100,
        kl_clip: float | None = None,
        lr: float | Callable[[], float] | None = None,
        fisher: str = "sampled",
        loss: str = "cross_entropy",
        loss_reduction: str = "mean",
        damping_mode: str = "eigen",
        layers: Iterable[str | nn.Module] | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"K-FAC needs the model (an nn.Module), got {type(model).__name__}; pass the "
                "network itself, e.g. KFAC(model, lr=...), not model.parameters()"
            )
        self.damping = positive("damping", damping)
        self.factor_decay = unit_interval("factor_decay", factor_decay)
        self.factor_interval = positive_int("factor_interval", factor_interval)
        self.inverse_interval = positive_int("inverse_interval", inverse_interval)
        self.kl_clip = positive("kl_clip", kl_clip, allow_none=True)
        if lr is not None and not callable(lr):
            positive("lr", lr)
        self.lr = lr
        for arg, value, allowed in (
            ("fisher", fisher, FISHER_TYPES),
            ("loss", loss, LOSSES),
            ("loss_reduction", loss_reduction, ("mean", "sum")),
            ("damping_mode", damping_mode, DAMPING_MODES),
        ):
            if value not in allowed:
                raise ValueError(f"{arg} must be one of {allowed}, got {value!r}")
        self.fisher, self.loss, self.loss_reduction = fisher, loss, loss_reduction
        self.damping_mode = damping_mode
        self.seed = int(seed)
        self.model = model
        self.layers = self._find_layers(model, layers)
        self._param_ids = {id(p) for layer in self.layers for p in layer.params}
        self.steps = 0
        self._paused = 0
        self._in_fisher_pass = False
        self._pass_index = 0
        self._generator: torch.Generator | None = None
        self._warned: set[str] = set()
        self._handles = [
            layer.module.register_forward_hook(self._make_forward_hook(layer))
            for layer in self.layers
        ]

    # --- set-up -----------------------------------------------------------------------
    @staticmethod
    def _find_layers(model: nn.Module, wanted) -> list[_Layer]:
        named = list(model.named_modules())
        unseen = _never_called(model)
        if wanted is None:
            chosen = [(n, m) for n, m in named if _supported(m) and id(m) not in unseen]
        else:
            ids = {}
            for spec in [wanted] if isinstance(wanted, (str, nn.Module)) else list(wanted):
                hits = [
                    (n, m)
                    for n, m in named
                    if (m is spec if isinstance(spec, nn.Module) else n == spec)
                ]
                if not hits:
                    raise ValueError(f"layers: {spec!r} is not a submodule of the model")
                for n, m in hits:
                    if not _supported(m):
                        raise ValueError(
                            f"layers: {n or type(m).__name__} ({type(m).__name__}) is not a "
                            "supported layer (nn.Linear, or nn.Conv2d with groups=1 and zero "
                            "padding, with trainable weights)"
                        )
                    if id(m) in unseen:
                        raise ValueError(
                            f"layers: {n} cannot be preconditioned: {unseen[id(m)]}; leave it "
                            "out of layers= (it gets the plain gradient)"
                        )
                    ids[id(m)] = (n, m)
            chosen = [(n, m) for n, m in named if id(m) in ids]
        if not chosen:
            kinds = sorted(
                {type(m).__name__ for _, m in named if next(m.parameters(False), None) is not None}
            )
            raise ValueError(
                f"K-FAC found no supported layer in {type(model).__name__} (layers with "
                f"parameters: {', '.join(kinds) or 'none'}). Supported layers: torch.nn.Linear "
                "and torch.nn.Conv2d (groups=1, zero padding) with trainable weights; use "
                "another optimiser for this model"
            )
        return [_Layer(n, m) for n, m in chosen]

    def _make_forward_hook(self, layer: _Layer):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not self.capturing or not module.training or not torch.is_grad_enabled():
                return
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            layer.add_inputs(inputs[0])
            batch = inputs[0].shape[0]
            output.register_hook(lambda g: self._grad_hook(layer, g, batch))

        return hook

    def _grad_hook(self, layer: _Layer, g: torch.Tensor, batch: int) -> None:
        if self._paused:
            return
        rows, locations = layer.output_rows(g)
        if self._in_fisher_pass:
            # per-sample derivatives (the sampled losses are summed over the batch)
            part = (rows.T @ rows) / locations
            layer.G_sum = part if layer.G_sum is None else layer.G_sum + part
            if self._pass_index == 0:
                layer.G_count += batch
            return
        scale = float(batch) if self.loss_reduction == "mean" else 1.0
        part = (rows.T @ rows) * (scale * scale / locations)
        if self.fisher == "empirical":
            layer.G_sum = part if layer.G_sum is None else layer.G_sum + part
            layer.G_count += batch
        elif layer.G_count == 0:
            layer.G_fallback = part if layer.G_fallback is None else layer.G_fallback + part
            layer.G_fallback_count += batch

    # --- public protocol -------------------------------------------------------------
    @property
    def capturing(self) -> bool:
        """Whether forward/backward passes now feed the factors (factor-update steps)."""
        return not self._paused and self.steps % self.factor_interval == 0

    def wants_fisher(self) -> bool:
        """Whether :meth:`fisher_backward` should be called before this step's backward."""
        return self.capturing and self.fisher != "empirical"

    @contextmanager
    def paused(self):
        """Passes inside this block (evaluation, curvature products) do not feed K-FAC."""
        self._paused += 1
        try:
            yield self
        finally:
            self._paused -= 1

    def discard_pending(self) -> None:
        """Forget statistics gathered since the last step (after an aborted step)."""
        for layer in self.layers:
            layer.reset_pending()

    def fisher_backward(self, outputs: torch.Tensor) -> None:
        """Backward passes with targets from the model (``fisher="sampled"``) or over all
        outputs (``"type2"``), feeding G; parameter ``.grad`` is left untouched.

        Call it with the model's outputs of this step, before ``loss.backward()``; it does
        nothing on steps that do not update the factors, or with ``fisher="empirical"``.
        """
        if not self.wants_fisher():
            return
        if not isinstance(outputs, torch.Tensor) or not outputs.requires_grad:
            raise ValueError("fisher_backward needs the model's outputs with their graph")
        weights = [layer.module.weight for layer in self.layers]
        self._in_fisher_pass = True
        try:
            flat = outputs.reshape(outputs.shape[0], -1) if self.loss == "mse" else outputs
            with torch.no_grad():
                grads = self._output_gradients(flat.detach())
            for index, grad_out in enumerate(grads):
                self._pass_index = index
                torch.autograd.grad(
                    flat, weights, grad_outputs=grad_out, retain_graph=True, allow_unused=True
                )
        finally:
            self._in_fisher_pass = False
            self._pass_index = 0

    def _output_gradients(self, out: torch.Tensor) -> list[torch.Tensor]:
        """Derivatives of the per-sample losses w.r.t. the outputs, one tensor per pass."""
        if self.loss == "cross_entropy":
            if out.ndim != 2:
                raise ValueError(
                    f"loss='cross_entropy' expects (batch, classes) outputs, got {tuple(out.shape)}"
                )
            probs = torch.softmax(out.double(), dim=1)
            if self.fisher == "sampled":
                labels = torch.multinomial(probs, 1, generator=self._rng(out.device)).squeeze(1)
                onehot = F.one_hot(labels, out.shape[1]).to(probs.dtype)
                return [(probs - onehot).to(out.dtype)]
            # columns of the symmetric factor of diag(p) - p p^T
            root = probs.sqrt()
            eye = torch.eye(out.shape[1], dtype=probs.dtype, device=out.device)
            return [
                (root[:, c : c + 1] * (eye[c] - probs)).to(out.dtype) for c in range(out.shape[1])
            ]
        c = out.shape[1]  # Gaussian with covariance (c/2) I: per-sample loss ||f - t||^2 / c
        if self.fisher == "sampled":
            noise = torch.randn(out.shape, generator=self._rng(out.device), device=out.device)
            return [(-math.sqrt(2.0 / c) * noise).to(out.dtype)]
        scale = math.sqrt(2.0 / c)
        eye = torch.eye(c, dtype=out.dtype, device=out.device)
        return [scale * eye[i].expand_as(out) for i in range(c)]

    def _rng(self, device: torch.device) -> torch.Generator:
        # seeded from (seed, step): no state to save, and an aborted step replays exactly
        if self._generator is None or self._generator.device != torch.device(device):
            self._generator = torch.Generator(device=device)
        return self._generator.manual_seed(self.seed * 1_000_003 + self.steps)

    # --- factors and inverses --------------------------------------------------------
    def _update_factors(self) -> None:
        for layer in self.layers:
            G_sum, G_count = layer.G_sum, layer.G_count
            if G_count == 0 and layer.G_fallback_count:
                if "fallback" not in self._warned:
                    self._warned.add("fallback")
                    warnings.warn(
                        "K-FAC used the empirical Fisher: fisher_backward(outputs) was not "
                        "called before loss.backward() on a factor-update step. Call it (the "
                        "Trainer does), or pass fisher='empirical' to choose this on purpose.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                G_sum, G_count = layer.G_fallback, layer.G_fallback_count
            if layer.A_count == 0 or G_count == 0:
                continue
            A_new = layer.A_sum / layer.A_count
            G_new = G_sum / G_count
            layer.updates += 1
            rho = min(1.0 - 1.0 / layer.updates, self.factor_decay)
            if layer.A is None or rho == 0.0:
                layer.A, layer.G = A_new, G_new
            else:
                layer.A = layer.A.mul(rho).add_(A_new, alpha=1.0 - rho)
                layer.G = layer.G.mul(rho).add_(G_new, alpha=1.0 - rho)
        self.discard_pending()

    def _update_inverses(self) -> None:
        for layer in self.layers:
            if layer.A is None:
                continue
            dtype = layer.A.dtype
            dA, QA = factor_eigh(layer.A.double(), f"A of layer {layer.name!r}")
            dG, QG = factor_eigh(layer.G.double(), f"G of layer {layer.name!r}")
            dA, dG = dA.clamp_(min=0.0), dG.clamp_(min=0.0)
            if self.damping_mode == "pi":
                ta = layer.A.double().trace().item() / layer.A.shape[0]
                tg = layer.G.double().trace().item() / layer.G.shape[0]
                layer.pi = math.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0
            layer.QA, layer.dA = QA.to(dtype), dA.to(dtype)
            layer.QG, layer.dG = QG.to(dtype), dG.to(dtype)

    def _precondition(self, layer: _Layer, mat: torch.Tensor) -> torch.Tensor:
        v = layer.QG.T @ mat @ layer.QA
        if self.damping_mode == "eigen":
            v = v / (layer.dG[:, None] * layer.dA[None, :] + self.damping)
        else:
            root = math.sqrt(self.damping)
            v = v / ((layer.dG[:, None] + root / layer.pi) * (layer.dA[None, :] + root * layer.pi))
        return layer.QG @ v @ layer.QA.T

    def _current_lr(self, lr: float | None = None) -> float | None:
        if lr is not None:
            return lr
        return self.lr() if callable(self.lr) else self.lr

    def _advance(self) -> None:
        """Update factors (and inverses) as this step calls for."""
        if self.steps % self.factor_interval == 0:
            self._update_factors()
        else:
            self.discard_pending()
        missing = any(layer.A is not None and layer.QA is None for layer in self.layers)
        if self.steps % self.inverse_interval == 0 or missing:
            self._update_inverses()

    def _directions(
        self, weight_decay: float = 0.0, lr: float | None = None
    ) -> dict[int, torch.Tensor]:
        """Preconditioned (and KL-clipped) gradients of the supported layers' parameters."""
        out: dict[int, tuple[_Layer, torch.Tensor, torch.Tensor]] = {}
        step_lr = self._current_lr(lr)
        clip = self.kl_clip is not None and bool(step_lr)
        vg_terms: list[torch.Tensor] = []
        for layer in self.layers:
            mat = layer.grad_matrix()
            if mat is None:
                continue
            if weight_decay:
                mat = mat + weight_decay * layer.param_matrix()
            if layer.QA is None:
                if "no_factors" not in self._warned:
                    self._warned.add("no_factors")
                    warnings.warn(
                        f"K-FAC has no curvature factors for layer {layer.name!r} yet (no "
                        "training-mode forward pass on a factor-update step); its gradient is "
                        "used unpreconditioned",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                v = mat
            else:
                v = self._precondition(layer, mat)
            out[id(layer)] = (layer, v, mat)
            if clip:
                vg_terms.append((v.double() * mat.double()).sum())
        nu = 1.0
        if clip and vg_terms:
            total = torch.stack(vg_terms).sum().item() * step_lr * step_lr
            if total > 0:
                nu = min(1.0, math.sqrt(self.kl_clip / total))
        result: dict[int, torch.Tensor] = {}
        for layer, v, _ in out.values():
            if nu != 1.0:
                v = v * nu
            for p, part in zip(layer.params, layer.split(v)):
                result[id(p)] = part
        self.last_kl_scale = nu
        return result

    @torch.no_grad()
    def step(self) -> None:
        """Update the factors if due, then overwrite ``.grad`` of the supported layers with
        the preconditioned gradient (call it after ``backward()``, before ``opt.step()``)."""
        self._advance()
        directions = self._directions()
        for layer in self.layers:
            for p in layer.params:
                d = directions.get(id(p))
                if d is not None and p.grad is not None:
                    p.grad.copy_(d)
        self.steps += 1

    # --- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Factors, their eigendecompositions and the step counter (tensors and numbers only)."""
        layers = {}
        for layer in self.layers:
            entry: dict[str, Any] = {"updates": layer.updates, "pi": layer.pi}
            for key in ("A", "G", "QA", "dA", "QG", "dG"):
                value = getattr(layer, key)
                if value is not None:
                    entry[key] = value.detach().clone()
            layers[layer.name] = entry
        return {"steps": self.steps, "layers": layers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; layer names and factor shapes must match."""
        saved = state.get("layers", {})
        ours = {layer.name: layer for layer in self.layers}
        if set(saved) != set(ours):
            missing = sorted(set(ours) - set(saved))
            unexpected = sorted(set(saved) - set(ours))
            raise ValueError(
                "K-FAC state does not match this model's layers: "
                f"missing {missing or 'none'}, unexpected {unexpected or 'none'}"
            )
        for name, entry in saved.items():
            layer = ours[name]
            for key in ("A", "G", "QA", "dA", "QG", "dG"):
                value = entry.get(key)
                if value is None:
                    setattr(layer, key, None)
                    continue
                want = layer.in_dim if key in ("A", "QA", "dA") else layer.out_dim
                if value.shape[0] != want:
                    raise ValueError(
                        f"K-FAC state for layer {name!r}: factor {key} has size "
                        f"{value.shape[0]}, the layer needs {want}"
                    )
                w = layer.module.weight
                setattr(layer, key, value.to(device=w.device, dtype=w.dtype))
            layer.updates = int(entry.get("updates", 0))
            layer.pi = float(entry.get("pi", 1.0))
            layer.reset_pending()
        self.steps = int(state.get("steps", 0))

    def remove_hooks(self) -> None:
        """Detach from the model (the preconditioner stops collecting statistics)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.layers)} layers, damping={self.damping}, "
            f"factor_interval={self.factor_interval}, inverse_interval={self.inverse_interval}, "
            f"fisher={self.fisher!r})"
        )


class KFAC(Optimizer):
    """K-FAC as a ``torch.optim.Optimizer``: natural-gradient SGD with momentum.

    For supported layers the update direction is the K-FAC preconditioned gradient
    (KL-clipped); every other parameter (BatchNorm, ...) gets the plain gradient. Then,
    as in ``torch.optim.SGD``: ``buf <- momentum * buf + d``; ``w <- w - lr * buf``.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> opt = KFAC(model, lr=0.05)
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> out = model(x)
    >>> opt.fisher_backward(out)     # targets sampled from the model, for the Fisher
    >>> nn.functional.cross_entropy(out, y).backward()
    >>> opt.step(); opt.zero_grad()

    Args:
        model: the network (not its parameters).
        lr: learning rate :math:`\\eta` (> 0; a schedule may later set it to 0, which
            freezes the weights).
        momentum: heavy-ball momentum (0.9).
        weight_decay: decay coefficient.
        decoupled_weight_decay: ``False`` (coupled, L2): ``wd * w`` joins the gradient and
            is preconditioned with it; ``True`` (decoupled, Loshchilov & Hutter, "K-FAC-w"
            of the original): ``w <- w (1 - lr * wd)`` separately.
        damping, factor_decay, factor_interval, inverse_interval, kl_clip, fisher, loss,
        loss_reduction, damping_mode, layers, seed: as for :class:`KFACPreconditioner`
        (``kl_clip`` defaults to 1e-3 here; ``None`` turns it off).

    The factors are part of :meth:`state_dict` (under ``"kfac"``), so a checkpoint
    resumes exactly.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        momentum: float = 0.9,
        *,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        damping: float = 1e-3,
        factor_decay: float = 0.95,
        factor_interval: int = 10,
        inverse_interval: int = 100,
        kl_clip: float | None = 1e-3,
        fisher: str = "sampled",
        loss: str = "cross_entropy",
        loss_reduction: str = "mean",
        damping_mode: str = "eigen",
        layers: Iterable[str | nn.Module] | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"KFAC needs the model (an nn.Module), got {type(model).__name__}; pass the "
                "network itself, KFAC(model, lr=...), not model.parameters()"
            )
        positive("lr", lr)
        unit_interval("momentum", momentum)
        non_negative("weight_decay", weight_decay)
        self.preconditioner = KFACPreconditioner(
            model,
            damping=damping,
            factor_decay=factor_decay,
            factor_interval=factor_interval,
            inverse_interval=inverse_interval,
            kl_clip=kl_clip,
            fisher=fisher,
            loss=loss,
            loss_reduction=loss_reduction,
            damping_mode=damping_mode,
            layers=layers,
            seed=seed,
        )
        params = [p for p in model.parameters() if p.requires_grad]
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults)

    # the preconditioner's protocol, forwarded
    def fisher_backward(self, outputs: torch.Tensor) -> None:
        self.preconditioner.fisher_backward(outputs)

    def wants_fisher(self) -> bool:
        return self.preconditioner.wants_fisher()

    def paused(self):
        return self.preconditioner.paused()

    def discard_pending(self) -> None:
        self.preconditioner.discard_pending()

    @property
    def layers(self) -> list[str]:
        """Names of the preconditioned layers."""
        return [layer.name for layer in self.preconditioner.layers]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pre = self.preconditioner
        pre._advance()
        # one group in practice; each group's lr and coupled decay are its own
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            momentum = group["momentum"]
            coupled = wd if (wd and not group["decoupled_weight_decay"]) else 0.0
            directions = pre._directions(weight_decay=coupled, lr=lr)
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = directions.get(id(p))
                if d is None:
                    d = p.grad if not coupled else p.grad.add(p, alpha=coupled)
                if wd and group["decoupled_weight_decay"]:
                    p.mul_(1 - lr * wd)
                if momentum:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.detach().clone()
                    else:
                        buf.mul_(momentum).add_(d)
                    d = buf
                p.add_(d, alpha=-lr)
        pre.steps += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["kfac"] = self.preconditioner.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        kfac_state = state_dict.pop("kfac", None)
        if kfac_state is None:
            raise ValueError("this state dict has no 'kfac' entry: it is not from a KFAC optimiser")
        self.preconditioner.load_state_dict(kfac_state)
        super().load_state_dict(state_dict)

    def remove_hooks(self) -> None:
        self.preconditioner.remove_hooks()
