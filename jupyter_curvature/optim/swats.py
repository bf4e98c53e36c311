"""SWATS: switching from Adam to SGD (Keskar & Socher 2017, arXiv:1712.07628).

Algorithm 1 of the paper, per parameter group. While in the Adam phase, with gradient
``g_k`` (weight decay added when coupled):

.. math::

    m_k = \\beta_1 m_{k-1} + (1-\\beta_1) g_k,\\qquad
    a_k = \\beta_2 a_{k-1} + (1-\\beta_2) g_k^2,\\qquad
    p_k = -\\alpha\\,\\frac{\\hat m_k}{\\sqrt{\\hat a_k} + \\epsilon},\\qquad w_k = w_{k-1} + p_k

(exactly :class:`torch.optim.Adam`'s arithmetic, so the two agree step for step; the
paper writes the same step with :math:`\\epsilon` not bias-corrected). Then, if
:math:`p_k^\\top g_k \\ne 0`, the learning rate of SGD that would make the same progress
along :math:`p_k` is estimated by projection and averaged:

.. math::

    \\gamma_k = \\frac{p_k^\\top p_k}{-p_k^\\top g_k},\\qquad
    \\lambda_k = \\beta_2 \\lambda_{k-1} + (1-\\beta_2)\\gamma_k,

and the group switches to SGD when :math:`k > 1`,
:math:`|\\lambda_k/(1-\\beta_2^k) - \\gamma_k| < \\epsilon_{switch}` (``switch_tol``,
``1e-9`` in the paper) and :math:`\\Lambda = \\lambda_k/(1-\\beta_2^k) > 0`. After the
switch, with the momentum buffer started at zero:

.. math::

    v_k = \\beta_1 v_{k-1} + g_k,\\qquad w_k = w_{k-1} - (1-\\beta_1)\\,\\Lambda\\, v_k .

Dot products are taken over all parameters of a group, in float64; each group switches
on its own (give each layer its own group to switch layer by layer). A learning-rate
schedule keeps working after the switch: it scales :math:`\\Lambda` by
``lr / lr_at_switch``.

Differences from the original package's SWATS (Purgai's code): the momentum buffer is
not shrunk after the switch (that made the step about 0.11x the paper's), the switch
test is the paper's, the whole group's vector is used (not one tensor), and
``p.grad`` is never modified.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> opt = SWATS([w], lr=0.1)
    >>> for _ in range(3):
    ...     opt.zero_grad(); (w ** 2).sum().backward(); opt.step()
    >>> opt.switch_info()[0]["phase"]
    'adam'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from ..core.validate import non_negative, positive, unit_interval


class SWATS(Optimizer):
    """Adam that switches to SGD with momentum once its implied SGD step size settles.

    Args:
        params: parameters or parameter groups.
        lr: Adam's learning rate :math:`\\alpha` (default 1e-3, the paper's).
        betas: :math:`(\\beta_1, \\beta_2)`, default (0.9, 0.999).
        eps: Adam's :math:`\\epsilon` (1e-8).
        weight_decay: L2 coefficient.
        decoupled_weight_decay: apply the decay to the weights directly (AdamW style,
            ``w <- w (1 - lr wd)``, with :math:`\\Lambda` in place of ``lr`` after the
            switch) instead of adding ``wd * w`` to the gradient.
        amsgrad: use the AMSGrad maximum of the second moments in the Adam phase.
        switch_tol: :math:`\\epsilon` of the switch test (1e-9).
        switch: ``False`` to never switch (plain Adam, with the estimates still recorded).

    Each group records ``phase`` (``"adam"`` or ``"sgd"``), ``switch_step`` (the step at
    which it switched, or ``None``) and ``sgd_lr`` (:math:`\\Lambda`); see
    :meth:`switch_info`. :meth:`pop_events` returns the switches since it was last called.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        amsgrad: bool = False,
        switch_tol: float = 1e-9,
        switch: bool = True,
    ) -> None:
        positive("lr", lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        unit_interval("betas[0]", betas[0])
        unit_interval("betas[1]", betas[1])
        non_negative("eps", eps)
        non_negative("weight_decay", weight_decay)
        positive("switch_tol", switch_tol)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            amsgrad=amsgrad,
            switch_tol=switch_tol,
            switch=switch,
            phase="adam",
            step=0,
            lambda_avg=0.0,
            gamma=None,
            sgd_lr=None,
            lr_at_switch=None,
            switch_step=None,
        )
        super().__init__(params, defaults)
        self._events: list[dict[str, Any]] = []

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_events", [])

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            if group["phase"] == "sgd":
                self._sgd_step(group)
            else:
                self._adam_step(index, group)
        return loss

    def _adam_step(self, index: int, group: dict) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        pg_terms, pp_terms = [], []
        any_grad = False
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("SWATS does not support sparse gradients")
            any_grad = True
            grad = p.grad
            state = self.state[p]
            if len(state) == 0:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            step = state["step"]
            if wd != 0:
                if group["decoupled_weight_decay"]:
                    p.mul_(1 - lr * wd)
                else:
                    grad = grad.add(p, alpha=wd)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            # torch.optim.Adam's arithmetic, operation for operation
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2**0.5
            if group["amsgrad"]:
                torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                denom = (state["max_exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(eps)
            else:
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)
            update = exp_avg.mul(-step_size).div_(denom)  # p_k, for the projection
            u64, g64 = update.reshape(-1).double(), grad.reshape(-1).double()
            pg_terms.append(torch.dot(u64, g64))
            pp_terms.append(torch.dot(u64, u64))
        if not any_grad:
            return
        group["step"] += 1
        k = group["step"]
        pg, pp = torch.stack(pg_terms).sum().item(), torch.stack(pp_terms).sum().item()
        if pg == 0.0:
            return
        gamma = pp / -pg
        lam = beta2 * group["lambda_avg"] + (1 - beta2) * gamma
        group["lambda_avg"] = lam
        group["gamma"] = gamma
        corrected = lam / (1 - beta2**k)
        if (
            group["switch"]
            and k > 1
            and corrected > 0
            and abs(corrected - gamma) < group["switch_tol"]
        ):
            group["phase"] = "sgd"
            group["sgd_lr"] = corrected
            group["lr_at_switch"] = lr
            group["switch_step"] = k
            for p in group["params"]:
                state = self.state[p]
                for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                    state.pop(key, None)
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            self._events.append(
                {"event": "swats_switch", "group": index, "step": k, "sgd_lr": corrected}
            )

    def _sgd_step(self, group: dict) -> None:
        beta1 = group["betas"][0]
        wd = group["weight_decay"]
        # a schedule scales Lambda by how much it changed the lr since the switch
        scale = group["lr"] / group["lr_at_switch"] if group["lr_at_switch"] else 1.0
        lam = group["sgd_lr"] * scale
        stepped = False
        for p in group["params"]:
            if p.grad is None:
                continue
            stepped = True
            grad = p.grad
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] = state.get("step", 0) + 1
            if wd != 0:
                if group["decoupled_weight_decay"]:
                    p.mul_(1 - lam * wd)
                else:
                    grad = grad.add(p, alpha=wd)
            buf = state["momentum_buffer"]
            buf.mul_(beta1).add_(grad)
            p.add_(buf, alpha=-(1 - beta1) * lam)
        if stepped:
            group["step"] += 1

    def switch_info(self) -> list[dict[str, Any]]:
        """Per group: ``phase``, ``switch_step``, ``sgd_lr`` (Lambda), the latest ``gamma``
        and the bias-corrected average ``lambda_avg / (1 - beta2^k)``."""
        out = []
        for group in self.param_groups:
            k = group["step"]
            beta2 = group["betas"][1]
            corrected = group["lambda_avg"] / (1 - beta2**k) if k else None
            out.append(
                {
                    "phase": group["phase"],
                    "step": k,
                    "switch_step": group["switch_step"],
                    "sgd_lr": group["sgd_lr"],
                    "gamma": group["gamma"],
                    "lambda_corrected": corrected,
                }
            )
        return out

    @property
    def switched(self) -> bool:
        """Whether every group has switched to SGD."""
        return all(g["phase"] == "sgd" for g in self.param_groups)

    def pop_events(self) -> list[dict[str, Any]]:
        """The switches since the last call (``{"event": "swats_switch", "group", "step",
        "sgd_lr"}``), for progress displays."""
        events, self._events = self._events, []
        return events
