"""Every operator class against the one conformance case (tests/operator_cases.py).

``EmpiricalRiskOperator`` is the abstract base of the three model operators (it has no
product of its own), so it is covered through them.
"""

from __future__ import annotations

import functools

import torch
from operator_cases import DT, OperatorCase
from reference import dense_empirical_fisher, dense_ggn, dense_hessian
from torch import nn

from jupyter_curvature.data import digits_dataset
from jupyter_curvature.models import MLP
from jupyter_curvature.operators import (
    DenseOperator,
    EmpiricalFisherOperator,
    FunctionOperator,
    GGNOperator,
    HessianOperator,
    as_operator,
)

CE = nn.CrossEntropyLoss()


def model():
    torch.manual_seed(4)
    return MLP(in_features=64, hidden=(3,), num_classes=10).to(DT).eval()


@functools.cache
def data():
    x, y = digits_dataset("train", limit=24, dtype=DT, flatten=True).tensors
    return x, y


@functools.cache
def dense(kind: str) -> torch.Tensor:
    x, y = data()
    build = {"hessian": dense_hessian, "ggn": dense_ggn, "fisher": dense_empirical_fisher}[kind]
    return build(model(), CE, x, y).detach()


def operator(kind: str):
    m = model()
    cls = {"hessian": HessianOperator, "ggn": GGNOperator, "fisher": EmpiricalFisherOperator}
    return cls[kind](m, CE, data()), m


def symmetric_matrix(n: int = 9, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=gen, dtype=DT)
    return (A + A.T) / 2


def orthonormal(n: int, k: int, seed: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=DT)).Q


# ------------------------------------------------------------------ the model operators
class TestHessianOperator(OperatorCase):
    def build(self):
        op, m = operator("hessian")
        return op, dense("hessian"), m


class TestHessianOperatorKeepingGraphs(OperatorCase):
    def build(self):
        m = model()
        return HessianOperator(m, CE, data(), keep_graphs=True), dense("hessian"), m


class TestGGNOperator(OperatorCase):
    def build(self):
        op, m = operator("ggn")
        return op, dense("ggn"), m


class TestEmpiricalFisherOperator(OperatorCase):
    def build(self):
        op, m = operator("fisher")
        return op, dense("fisher"), m


# ------------------------------------------------------------------ dense and functions
class TestDenseOperator(OperatorCase):
    rtol, atol = 1e-14, 1e-14

    def build(self):
        A = symmetric_matrix()
        return DenseOperator(A), A, None


class TestAsOperatorOfATensor(OperatorCase):
    rtol, atol = 1e-14, 1e-14

    def build(self):
        A = symmetric_matrix(seed=1)
        return as_operator(A), A, None


class TestAsOperatorOfABlockFunction(OperatorCase):
    rtol, atol = 1e-14, 1e-14

    def build(self):
        A = symmetric_matrix(seed=2)
        return as_operator(lambda V: A @ V, shape=9, dtype=DT), A, None


class TestFunctionOperatorOfVectors(OperatorCase):
    rtol, atol = 1e-14, 1e-14

    def build(self):
        A = symmetric_matrix(seed=3)
        return FunctionOperator(lambda v: A @ v, 9, DT, batched=False), A, None


# ------------------------------------------------------------------ composites
class TestScaledHessian(OperatorCase):
    def build(self):
        op, m = operator("hessian")
        return 2.5 * op, 2.5 * dense("hessian"), m


class TestHessianTimesAScalarTensor(OperatorCase):
    def build(self):
        op, m = operator("hessian")
        return op * torch.tensor(-0.75), -0.75 * dense("hessian"), m


class TestHessianDividedByAScalar(OperatorCase):
    def build(self):
        op, m = operator("hessian")
        return op / 3.0, dense("hessian") / 3.0, m


class TestNegatedGGN(OperatorCase):
    def build(self):
        op, m = operator("ggn")
        return -op, -dense("ggn"), m


class TestHessianPlusFisher(OperatorCase):
    products_per_column = 2  # one product of each part

    def build(self):
        m = model()
        H, F = HessianOperator(m, CE, data()), EmpiricalFisherOperator(m, CE, data())
        return H + F, dense("hessian") + dense("fisher"), m


class TestHessianMinusGGN(OperatorCase):
    """The functional-Hessian part ``H - G`` (Singh, Bachmann & Hofmann, NeurIPS 2021)."""

    products_per_column = 2

    def build(self):
        m = model()
        H, G = HessianOperator(m, CE, data()), GGNOperator(m, CE, data())
        return H - 0.5 * G, dense("hessian") - 0.5 * dense("ggn"), m


class TestDampedGGN(OperatorCase):
    """``G + lambda I``: the damped curvature of natural-gradient and K-FAC-style methods."""

    products_per_column = 2

    def build(self):
        op, m = operator("ggn")
        n = op.shape[0]
        damping = 1e-3 * DenseOperator(torch.eye(n, dtype=DT))
        return op + damping, dense("ggn") + 1e-3 * torch.eye(n, dtype=DT), m


class TestDeflatedHessian(OperatorCase):
    def build(self):
        op, m = operator("hessian")
        H = dense("hessian")
        values, vectors = torch.linalg.eigh(H)
        V, lam = vectors[:, -3:], values[-3:]
        return op.deflated(V, lam), H - V @ torch.diag(lam) @ V.T, m


class TestProjectedHessian(OperatorCase):
    def build(self):
        op, m = operator("hessian")
        H = dense("hessian")
        V = orthonormal(H.shape[0], 4)
        P = torch.eye(H.shape[0], dtype=DT) - V @ V.T
        return op.projected(V), P @ H @ P, m


class TestNestedComposite(OperatorCase):
    # (2 H).projected(V) - H / 4 multiplies H twice per column; H's own count says so
    products_per_column = 2

    def build(self):
        op, m = operator("hessian")
        H = dense("hessian")
        V = orthonormal(H.shape[0], 2, seed=6)
        P = torch.eye(H.shape[0], dtype=DT) - V @ V.T
        composite = (2.0 * op).projected(V) - op / 4
        return composite, 2.0 * P @ H @ P - H / 4, m
