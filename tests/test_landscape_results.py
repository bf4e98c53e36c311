"""Landscape results: lossless save/load, dicts, text, and the matplotlib pictures."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

matplotlib.use("Agg")

from jupyter_curvature.landscape import (  # noqa: E402
    Landscape1D,
    Landscape2D,
    LandscapeResult,
    eigen_directions,
    landscape_1d,
    landscape_2d,
    plot_landscape_1d,
    plot_landscape_2d,
    plot_landscape_surface,
)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    train, test = [(x[:24], y[:24])], [(x[24:], y[24:])]
    n = sum(p.numel() for p in model.parameters())
    q, _ = torch.linalg.qr(torch.randn(n, 3, generator=g, dtype=torch.float64))
    dirs = eigen_directions((torch.tensor([4.2, 0.3, -1.5], dtype=torch.float64), q), [0, 1, 2])
    line = landscape_1d(model, nn.CrossEntropyLoss(), train, dirs, test_data=test, num_points=9)
    plane = landscape_2d(
        model, nn.CrossEntropyLoss(), train, dirs[:2], test_data=test, num_points=(7, 5)
    )
    partial = landscape_2d(
        model,
        nn.CrossEntropyLoss(),
        train,
        dirs[:2],
        num_points=9,
        callback=lambda p: not p.level_complete,
    )
    return SimpleNamespace(line=line, plane=plane, partial=partial)


@pytest.mark.parametrize("which", ["line", "plane", "partial"])
def test_save_load_is_lossless(setup, tmp_path, which):
    result = getattr(setup, which)
    path = result.save(tmp_path / which)
    assert path.suffix == ".npz"
    back = LandscapeResult.load(path)
    assert type(back) is type(result)
    assert back.equals(result)
    for m in result.metrics:
        a, b = getattr(result, m), getattr(back, m)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    assert back.directions == result.directions
    assert back.interrupted == result.interrupted
    assert type(result).load(path).equals(result)


def test_loading_the_wrong_kind_fails(setup, tmp_path):
    path = setup.line.save(tmp_path / "line.npz")
    with pytest.raises(ValueError, match="Landscape1D"):
        Landscape2D.load(path)


def test_to_dict_is_plain_json(setup):
    for result in (setup.line, setup.plane, setup.partial):
        d = result.to_dict()
        text = json.dumps(d, allow_nan=False)  # NaN became None
        assert json.loads(text)["bn"] == "eval"
    d = setup.partial.to_dict()
    assert any(v is None for row in d["train_loss"] for v in row)
    assert setup.line.to_dict()["directions"][0]["eigenvalue"] == 4.2


def test_saved_record_is_strict_json_and_old_files_load(setup, tmp_path):
    result = setup.partial.copy()
    result.meta = {"note": "x", "scale": float("nan"), "peak": float("inf")}
    path = result.save(tmp_path / "strict")
    with np.load(path) as f:
        text = str(f["__record__"])
    # the one JSON policy (core.records): no NaN/Infinity literals in the file
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert record["meta"] == {"note": "x", "scale": None, "peak": None}
    back = LandscapeResult.load(path)
    assert back.equals(result) and back.meta["scale"] is None
    assert np.isnan(back.train_loss).any()  # the arrays keep their NaN
    # a file written before the policy, with NaN literals in its record, still loads
    from jupyter_curvature.core.files import atomic_savez

    old = json.dumps({**record, "meta": {"scale": float("nan")}}, allow_nan=True)
    assert "NaN" in old
    path = atomic_savez(tmp_path / "old.npz", __record__=np.array(old), **result._arrays())
    back = LandscapeResult.load(path)
    assert np.isnan(back.meta["scale"]) and back.directions == result.directions


def test_repr_is_readable(setup):
    text = repr(setup.line)
    assert text.startswith("Landscape1D(3 directions x 9 points")
    assert "λ=4.2" in text and "test loss" in text
    text = repr(setup.plane)
    assert "7x5 grid" in text and "train_loss: min" in text
    assert "25/81 points, interrupted" in repr(setup.partial)


def test_metric_access(setup):
    assert setup.line.metric("loss") is setup.line.train_loss
    with pytest.raises(ValueError, match="no test data"):
        setup.partial.metric("test_loss")
    with pytest.raises(ValueError, match="metric must be"):
        setup.line.metric("f1")


def test_plot_1d_is_the_original_two_by_two(setup):
    fig = plot_landscape_1d(setup.line)
    axes = fig.get_axes()
    assert len(axes) == 4
    titles = [ax.get_title() for ax in axes]
    assert titles == ["train loss", "train accuracy", "test loss", "test accuracy"]
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels == ["λ = 4.2 (#0)", "λ = 0.3 (#1)", "λ = -1.5 (#2)"]
    assert all(len(ax.get_lines()) == 3 for ax in axes)
    fig.savefig(io.BytesIO(), format="png")
    matplotlib.pyplot.close("all")


@pytest.mark.parametrize("kind", ["both", "heatmap", "contour"])
def test_plot_2d_and_surface(setup, kind):
    for result in (setup.plane, setup.partial):
        ax = plot_landscape_2d(result, kind=kind, log=kind == "contour")
        assert "λ = 4.2" in ax.get_xlabel()
        ax.figure.savefig(io.BytesIO(), format="png")
        ax3 = plot_landscape_surface(result, "train_accuracy")
        ax3.figure.savefig(io.BytesIO(), format="png")
    with pytest.raises(TypeError):
        plot_landscape_2d(setup.line)
    assert isinstance(setup.plane.plot(), matplotlib.axes.Axes)
    assert isinstance(setup.line, Landscape1D)
    matplotlib.pyplot.close("all")
