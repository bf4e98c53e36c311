"""The conformance test case every curvature operator class inherits.

In the style of linear_operator's ``LinearOperatorTestCase``: a subclass says how to build its
operator (:meth:`OperatorCase.build`) and the dense float64 matrix it must equal, and inherits
the tests of the operator interface: shape, dtype/device/shape errors for wrong vectors,
symmetry ``<u, A v> = <A u, v>``, the dense reference for vectors and blocks, ``to_dense``,
``to_scipy``, the product count, and a model's state restored bit for bit after products.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import assert_close, assert_same_state, snapshot

DT = torch.float64


class OperatorCase:
    """Base class of the conformance tests (not collected itself: no ``Test`` prefix).

    Subclasses implement :meth:`build`; they may set :attr:`rtol` / :attr:`atol`.
    """

    rtol = 1e-9
    atol = 1e-12
    #: products one ``op @ block`` of ``k`` columns adds to ``op.num_matvecs`` per column
    products_per_column = 1

    def build(self):
        """``(operator, dense float64 reference, model or None)``; built afresh per call."""
        raise NotImplementedError

    # -------------------------------------------------------------- helpers
    @pytest.fixture
    def case(self):
        return self.build()

    @staticmethod
    def _vectors(n: int, k: int, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(n, k, generator=gen, dtype=DT)

    # -------------------------------------------------------------- the interface
    def test_shape_dtype_device(self, case):
        op, dense, _ = case
        n = dense.shape[0]
        assert tuple(op.shape) == (n, n)
        assert len(op) == n
        assert op.dtype == DT
        assert op.device == torch.device("cpu")

    def test_matches_the_dense_reference(self, case):
        op, dense, _ = case
        V = self._vectors(dense.shape[0], 3)
        assert_close(op @ V, dense @ V, rtol=self.rtol, atol=self.atol, what="block product")
        v = V[:, 0]
        y = op @ v
        assert y.shape == v.shape
        assert_close(y, dense @ v, rtol=self.rtol, atol=self.atol, what="vector product")
        assert_close(op.matvec(v), y, rtol=0, atol=0, what="matvec")

    def test_to_dense(self, case):
        op, dense, _ = case
        assert_close(op.to_dense(), dense, rtol=self.rtol, atol=self.atol, what="to_dense")

    def test_symmetric(self, case):
        op, dense, _ = case
        u, v = self._vectors(dense.shape[0], 2, seed=1).unbind(1)
        left, right = float(u @ (op @ v)), float((op @ u) @ v)
        scale = float((op @ u).norm() * v.norm() + (op @ v).norm() * u.norm())
        assert abs(left - right) <= 1e-10 * scale, f"<u, Av> = {left} but <Au, v> = {right}"

    def test_to_scipy_agrees(self, case):
        op, dense, _ = case
        sp = op.to_scipy()
        assert sp.shape == tuple(op.shape)
        assert sp.dtype == np.float64
        V = self._vectors(dense.shape[0], 2, seed=2)
        assert_close(torch.from_numpy(sp.matvec(V[:, 0].numpy())), op @ V[:, 0], rtol=0, atol=0)
        assert_close(torch.from_numpy(sp.matmat(V.numpy())), op @ V, rtol=0, atol=0)
        assert_close(torch.from_numpy(sp.rmatvec(V[:, 1].numpy())), op @ V[:, 1], rtol=0, atol=0)

    def test_counts_products(self, case):
        op, dense, _ = case
        n = dense.shape[0]
        start = op.num_matvecs
        op @ self._vectors(n, 3)
        assert op.num_matvecs - start == 3 * self.products_per_column
        op @ self._vectors(n, 1)[:, 0]
        assert op.num_matvecs - start == 4 * self.products_per_column

    def test_wrong_vectors_are_named(self, case):
        op, dense, _ = case
        n = dense.shape[0]
        with pytest.raises(ValueError, match="shape"):
            op @ torch.zeros(n + 1, dtype=DT)
        with pytest.raises(ValueError, match="shape"):
            op @ torch.zeros(n, 2, 2, dtype=DT)
        with pytest.raises(TypeError, match="torch.Tensor"):
            op @ np.zeros(n)
        with pytest.raises(ValueError, match="dtype"):
            op @ torch.zeros(n, dtype=torch.float32)
        with pytest.raises(ValueError, match="lives on"):
            op @ torch.zeros(n, dtype=DT, device="meta")
        bad = torch.zeros(n, dtype=DT)
        bad[0] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            op @ bad
        assert op.num_matvecs == 0  # a refused vector is no product

    def test_model_state_restored_bit_for_bit(self):
        op, dense, model = self.build()
        if model is None:
            pytest.skip("no model behind this operator")
        model.train()  # the user left it training, with gradients and a frozen flag set
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        before = snapshot(model)
        op @ self._vectors(dense.shape[0], 2)
        op @ self._vectors(dense.shape[0], 1)[:, 0]
        assert_same_state(model, before)
