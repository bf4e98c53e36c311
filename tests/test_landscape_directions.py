"""Directions: the original's eigenvector choice, filter normalisation, user and checkpoint
directions, and their records."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from jupyter_curvature.core.params import flatten, select_parameters, unflatten
from jupyter_curvature.landscape import (
    Directions,
    as_directions,
    checkpoint_directions,
    eigen_directions,
    filter_normalize,
    original_selection,
    perturbed,
    random_directions,
    user_directions,
)


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=1, bias=False),
        nn.Flatten(),
        nn.Linear(2 * 5 * 5, 3),
    )


def _num(model) -> int:
    return sum(p.numel() for _, p in select_parameters(model))


# ---- the original's choice ----------------------------------------------------------------


def test_original_selection_follows_the_rule():
    lam = np.array([3.0, -2.0, 0.01, 7.0, -0.5, 1.0, 0.2, 9.0, -4.0, 0.05, 5.0, 2.5, 0.6, -1.0])
    asc, desc, near = np.argsort(lam), np.argsort(-lam), np.argsort(np.abs(lam))
    expected = sorted({int(o[p]) for o in (asc, desc, near) for p in (0, 1, 2, 5)})
    assert original_selection(lam) == expected
    assert len(expected) <= 12
    # smallest, largest and nearest-zero are all there
    assert {int(np.argmin(lam)), int(np.argmax(lam)), int(np.argmin(np.abs(lam)))} <= set(expected)


def test_original_selection_drops_positions_past_the_rank_and_dedups():
    assert original_selection([2.0, 1.0, 0.5]) == [0, 1, 2]
    # all positive: "smallest" and "nearest zero" coincide (the original's 8-direction case)
    lam = np.linspace(10, 0.1, 20)
    assert len(original_selection(lam)) == 8


def test_eigen_directions_are_unit_and_labelled():
    model = _cnn()
    n = _num(model)
    q, _ = torch.linalg.qr(torch.randn(n, 8, dtype=torch.float64))
    vals = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.0, -0.1, -0.7, -2.0], dtype=torch.float64)
    res = SimpleNamespace(eigenvalues=vals, eigenvectors=3.0 * q)  # not unit on purpose
    dirs = eigen_directions(res, model=model)
    assert [d.index for d in dirs] == original_selection(vals)
    for d in dirs:
        assert d.kind == "eigenvector" and d.normalization == "unit"
        assert d.norm == pytest.approx(1.0, abs=1e-14)
        assert d.eigenvalue == float(vals[d.index])
        assert f"{d.eigenvalue:.4g}" in d.label
        torch.testing.assert_close(d.vector, q[:, d.index], rtol=0, atol=1e-14)
    assert [d.index for d in eigen_directions(res, "largest", k=2)] == [0, 1]
    assert [d.index for d in eigen_directions(res, "smallest", k=2)] == [7, 6]
    assert [d.index for d in eigen_directions(res, "nearest_zero", k=1)] == [4]
    assert [d.index for d in eigen_directions(res, [3, -1])] == [3, 7]
    with pytest.raises(ValueError, match="out of range"):
        eigen_directions(res, [8])
    with pytest.raises(ValueError, match="more eigenvectors than"):
        eigen_directions(res, "largest", k=9)
    short = SimpleNamespace(eigenvalues=vals, eigenvectors=q[:-1])
    with pytest.raises(ValueError, match="entries but the chosen parameters"):
        eigen_directions(short, model=model)


def test_eigen_directions_from_the_spectra_module():
    from jupyter_curvature.spectral import eigenpairs

    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 30, generator=g, dtype=torch.float64)
    a = a + a.T
    res = eigenpairs(a, k=4, which="LA", tol=1e-8)
    dirs = eigen_directions(res, "largest", k=2)
    for d in dirs:
        torch.testing.assert_close(a @ d.vector, d.eigenvalue * d.vector, rtol=0, atol=1e-6)


# ---- filter normalisation (Li et al. 2018) ----------------------------------------------


@pytest.mark.parametrize("ignore", ["biasbn", None])
def test_random_directions_are_filter_normalised(ignore):
    model = _cnn()
    names = [n for n, _ in select_parameters(model)]
    weights = [p.detach().double() for _, p in select_parameters(model)]
    dirs = random_directions(model, 2, seed=7, ignore=ignore)
    assert dirs.normalizations == ["filter", "filter"]
    assert dirs.param_names == names
    for d in dirs:
        parts = unflatten(d.vector, weights)
        for name, part, w in zip(names, parts, weights):
            if w.ndim <= 1:  # biases and BatchNorm weights/biases
                expected = torch.zeros_like(w) if ignore == "biasbn" else w
                assert torch.equal(part, expected), name
                continue
            for j in range(w.shape[0]):  # every filter has its weights' norm
                assert torch.linalg.vector_norm(part[j]).item() == pytest.approx(
                    torch.linalg.vector_norm(w[j]).item(), rel=1e-12
                ), f"{name} filter {j}"
    # seeded: the same directions again, different ones for another seed
    again = random_directions(model, 2, seed=7, ignore=ignore)
    assert torch.equal(again.matrix(), dirs.matrix())
    assert not torch.equal(random_directions(model, 2, seed=8).matrix(), dirs.matrix())
    assert not torch.equal(dirs[0].vector, dirs[1].vector)


def test_filter_normalize_of_a_given_vector():
    model = _cnn()
    weights = [p.detach().double() for _, p in select_parameters(model)]
    v = torch.randn(_num(model), dtype=torch.float64)
    out = unflatten(filter_normalize(v, model), weights)
    raw = unflatten(v, weights)
    for part, r, w in zip(out, raw, weights):
        if w.ndim > 1:
            for j in range(w.shape[0]):  # direction of each filter kept, norm replaced
                expected = r[j] / r[j].norm() * w[j].norm()
                torch.testing.assert_close(part[j], expected, rtol=1e-13, atol=1e-15)


def test_other_normalisations():
    model = _cnn()
    unit = random_directions(model, 1, normalization="unit")
    assert unit[0].norm == pytest.approx(1.0, abs=1e-14)
    layer = random_directions(model, 1, normalization="layer", ignore=None)
    weights = [p.detach().double() for _, p in select_parameters(model)]
    for part, w in zip(unflatten(layer[0].vector, weights), weights):
        assert part.norm().item() == pytest.approx(w.norm().item(), rel=1e-12)
    with pytest.raises(ValueError, match="normalization"):
        random_directions(model, 1, normalization="filterwise")


# ---- user and checkpoint directions ------------------------------------------------------


def test_user_directions_in_every_layout():
    model = _cnn()
    n = _num(model)
    tensors = [p for _, p in select_parameters(model)]
    v = torch.randn(n, dtype=torch.float64)
    per_param = [t.clone() for t in unflatten(v, tensors)]
    state = {name: t for (name, _), t in zip(select_parameters(model), per_param)}
    for given in (v, per_param, state):
        d = user_directions(model, given)
        assert len(d) == 1 and d[0].kind == "user" and d[0].normalization == "none"
        assert torch.equal(d[0].vector, v)
    two = user_directions(model, [v, 2 * v], labels=["a", "b"], normalization="unit")
    assert two.labels == ["a", "b"]
    assert two[1].norm == pytest.approx(1.0)
    block = user_directions(model, torch.stack([v, -v], dim=1))  # (n, k) columns
    assert torch.equal(block[1].vector, -v)
    with pytest.raises(ValueError, match="shape"):
        user_directions(model, torch.randn(n + 1))


def test_checkpoint_direction_reaches_the_end_at_one():
    model = _cnn().double()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    end_model = _cnn().double()
    with torch.no_grad():
        for p in end_model.parameters():
            p.add_(torch.randn_like(p))
    dirs = checkpoint_directions(model, start, end_model)
    assert dirs[0].kind == "checkpoint"
    w_end = flatten([p.detach() for _, p in select_parameters(end_model)])
    assert dirs[0].extra["distance"] == pytest.approx(
        torch.linalg.vector_norm(
            w_end - flatten([start[n] for n, _ in select_parameters(model)])
        ).item()
    )
    with perturbed(model, dirs, 1.0):
        w = flatten([p.detach() for _, p in select_parameters(model)])
        torch.testing.assert_close(w, w_end, rtol=0, atol=1e-14)


# ---- checks and records ------------------------------------------------------------------


def test_as_directions_checks_and_layouts():
    n = 6
    rows = torch.randn(2, n, dtype=torch.float64)
    assert torch.equal(as_directions(rows, n).matrix(), rows)
    assert torch.equal(as_directions(rows.T, n).matrix(), rows)
    assert len(as_directions([rows[0], rows[1]], n)) == 2
    with pytest.raises(ValueError, match="entries"):
        as_directions(torch.randn(n + 1), n)
    with pytest.raises(ValueError, match="NaN"):
        as_directions(torch.tensor([1.0, float("nan"), 0, 0, 0, 0]), n)
    with pytest.raises(ValueError, match="zero"):
        as_directions(torch.zeros(n), n)
    with pytest.raises(ValueError, match="empty"):
        as_directions([], n)
    with pytest.raises(TypeError):
        as_directions("top", n)


def test_directions_save_load_roundtrip(tmp_path):
    model = _cnn()
    dirs = random_directions(model, 2, seed=4) + eigen_directions(
        (np.array([2.5]), torch.randn(_num(model), 1, dtype=torch.float64))
    )
    path = dirs.save(tmp_path / "dirs")
    back = Directions.load(path)
    assert torch.equal(back.matrix(), dirs.matrix())
    assert back.info() == dirs.info()
    assert back.param_names == dirs.param_names
    assert "λ=2.5" in repr(back)
