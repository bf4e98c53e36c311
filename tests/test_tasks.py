"""The task layer (jupyter_curvature.tasks): name resolution, deprecated aliases, results."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from jupyter_curvature import tasks
from jupyter_curvature.tasks import InputError


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _batches(n: int = 24, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return [(x[i : i + size], y[i : i + size]) for i in range(0, n, size)]


# ----------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda: tasks.resolve_model("smal_cnn"), "did you mean small_cnn?"),
        (lambda: tasks.resolve_model("wideresnet28"), "did you mean wideresnet28x10?"),
        (lambda: tasks.resolve_data("digitz"), "did you mean digits?"),
        (lambda: tasks.resolve_data("cifar1O"), "did you mean cifar10?"),
        (lambda: tasks.resolve_loss("cross_entropi"), "did you mean cross_entropy?"),
        (lambda: tasks.resolve_optimizer("adamm", _net()), "did you mean adam?"),
    ],
)
def test_an_unknown_name_suggests_the_closest_known_one(call, expected):
    with pytest.raises(InputError) as info:
        call()
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_missing_variable_says_which_cell_to_run_first():
    with pytest.raises(
        InputError, match="no variable 'run' yet: run the cell that defines it first"
    ):
        tasks.resolve_model("run.model", {"net": _net()})
    with pytest.raises(InputError, match="define a variable 'loader' first"):
        tasks.resolve_data("loader", {})
    with pytest.raises(InputError, match="'net' has no attribute path 'net.model'"):
        tasks.resolve_model("net.model", {"net": 3})


def test_names_are_looked_up_in_the_namespace_first():
    net, batches = _net(), _batches()
    ns = {"net": net, "run": type("Run", (), {"model": net})(), "digits": batches}
    assert tasks.resolve_model("net", ns) is net and tasks.resolve_model("run.model", ns) is net
    assert tasks.resolve_data("digits", ns) is batches  # the variable wins over the dataset


def test_one_resolve_device():
    assert tasks.resolve_device(None) is None
    assert tasks.resolve_device("cpu") == torch.device("cpu")
    auto = tasks.resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="not a device name"):
        tasks.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            tasks.resolve_device("cuda")


# ----------------------------------------------------------------------------- aliases
def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


@pytest.mark.parametrize(
    "old, new",
    [
        ({"ggn": True}, {"curvature": "ggn"}),
        ({"iters": 7}, {"num_iters": 7}),
        ({"probes": 2}, {"num_probes": 2}),
        ({"top": 2}, {"top_k": 2}),
        ({"subsample": 16}, {"num_samples": 16}),
        ({"loss": "cross_entropy"}, {"loss_fn": "cross_entropy"}),
    ],
)
def test_each_deprecated_spectrum_keyword_warns_and_equals_the_new_one(old, new):
    base = dict(num_iters=5, num_probes=1, top_k=1, tol=1e-6)
    for key in new:
        base.pop(key, None)
    expected = tasks.spectrum(_net(), _batches(), **base, **new).to_dict()
    with pytest.warns(FutureWarning) as record:
        got = tasks.spectrum(_net(), _batches(), **base, **old).to_dict()
    (key,) = old
    (new_key,) = new
    assert any(f"{key}= is deprecated; use {new_key}=" in str(w.message) for w in record)
    expected.pop("seconds"), got.pop("seconds")
    assert _same(got, expected)


def test_an_old_and_a_new_name_together_is_an_error():
    with pytest.raises(TypeError, match="give num_iters= only"):
        tasks.spectrum(_net(), _batches(), iters=5, num_iters=6)


def test_deprecated_statistics_and_landscape_keywords():
    new = tasks.statistics(_net(), _batches(), include=["curvature"], curvature="ggn", batch_size=8,
                           num_probes=2).to_dict()  # fmt: skip
    with pytest.warns(FutureWarning, match="ggn= is deprecated; use curvature='ggn'"):
        old = tasks.statistics(_net(), _batches(), include=["curvature"], ggn=True, batch_size=8,
                               probes=2).to_dict()  # fmt: skip
    assert _same(old, new)
    kw = dict(directions="random:1", plane=False)
    new = tasks.landscape(_net(), _batches(), span=0.5, num_points=3, **kw).line
    with pytest.warns(FutureWarning, match="points= is deprecated; use num_points=3"):
        old = tasks.landscape(_net(), _batches(), distance=0.5, points=3, **kw).line
    assert (old.metric("train_loss") == new.metric("train_loss")).all()


def test_deprecated_train_keywords():
    kw = dict(steps=3, spectrum_every=2, seed=0)
    new = tasks.train(_net(), _batches(), curvature="ggn", num_iters=5, num_probes=1, **kw)
    with pytest.warns(FutureWarning) as record:
        old = tasks.train(_net(), _batches(), ggn=True, spectrum_iters=5, spectrum_probes=1, **kw)
    messages = " ".join(str(w.message) for w in record)
    for text in ("ggn= is deprecated", "spectrum_iters= is deprecated", "spectrum_probes="):
        assert text in messages
    kinds = [[r["curvature"] for r in run.history.curvature] for run in (old, new)]
    assert kinds[0] == kinds[1] == ["ggn", "ggn"]
    assert old.history.loss == new.history.loss
    assert old.history.top_eigenvalues == new.history.top_eigenvalues


def test_the_engine_takes_the_table_names_and_its_old_ones_warn():
    """The engine's last old spellings (docs/vocabulary.md) are aliases of the table's names."""
    import jupyter_curvature as jc
    from jupyter_curvature.data import get_dataset, get_loader
    from jupyter_curvature.training import CurvatureCallback

    assert jc.train is tasks.train
    new = get_dataset("digits", num_samples=40, seed=2).tensors
    with pytest.warns(FutureWarning, match="get_dataset: subset= is deprecated; use num_samples"):
        old = get_dataset("digits", subset=40, subset_seed=2).tensors
    assert all(torch.equal(a, b) for a, b in zip(old, new))
    with pytest.warns(FutureWarning, match="subset_seed= is deprecated; use seed=2"):
        loader = get_loader("digits", batch_size=40, shuffle=False, num_samples=40, subset_seed=2)
    assert torch.equal(next(iter(loader))[0], new[0])
    with pytest.warns(FutureWarning, match="CurvatureCallback: subsample= is deprecated"):
        callback = CurvatureCallback(subsample=64)
    assert callback.spectrum_samples == 64
    with pytest.raises(TypeError, match="give spectrum_samples= only"):
        CurvatureCallback(subsample=64, spectrum_samples=32)


def test_get_loader_takes_the_old_subset_it_forwards_to_get_dataset():
    """``get_loader`` forwards ``num_samples`` through ``**kwargs``; its old name still works."""
    from jupyter_curvature.data import get_loader

    new = get_loader("digits", batch_size=100, shuffle=False, num_samples=100)
    with pytest.warns(FutureWarning, match="get_loader: subset= is deprecated; use num_samples"):
        old = get_loader("digits", batch_size=100, shuffle=False, subset=100)
    assert len(old.dataset) == len(new.dataset) == 100
    assert torch.equal(next(iter(old))[0], next(iter(new))[0])


def test_the_api_module_is_a_deprecated_alias_of_tasks():
    import jupyter_curvature

    jupyter_curvature.__dict__.pop("api", None)
    with pytest.warns(FutureWarning, match="use jupyter_curvature.tasks"):
        api = jupyter_curvature.api
    assert api.train is tasks.train and api.spectrum is tasks.spectrum


# ----------------------------------------------------------------------------- results
def _has_nan_literal(text: str) -> bool:
    return "NaN" in text or "Infinity" in text


def test_spectrum_result_round_trips_through_json(tmp_path):
    result = tasks.spectrum(_net(), _batches(), num_iters=5, num_probes=1, top_k=2, tol=1e-6)
    result.density.stats.__dict__.update(negative_mass=float("nan"))  # a value not computed
    d = result.to_dict()
    assert d["top_eigenvalues"] == result.eigen.eigenvalues.tolist()
    result.save(tmp_path)
    text = (tmp_path / "hessian_spectrum.json").read_text()
    assert not _has_nan_literal(text)
    back = json.loads(text)
    assert back["top_eigenvalues"] == d["top_eigenvalues"]
    assert back["num_parameters"] == d["num_parameters"] == 53
    for key, value in d["stats"].items():
        if isinstance(value, float) and not math.isfinite(value):
            assert back["stats"][key] is None, key
        else:
            assert back["stats"][key] == value, key
    assert (tmp_path / "hessian_density.png").stat().st_size > 1000
    assert (tmp_path / "hessian_density.npz").is_file()


def test_statistics_result_round_trips_through_json(tmp_path):
    result = tasks.statistics(_net(), _batches(), include=["evaluation", "norms"])
    result.evaluation.__dict__["loss"] = float("nan")
    result.save(tmp_path)
    text = (tmp_path / "stats.json").read_text()
    assert not _has_nan_literal(text)
    back = json.loads(text)
    assert back["evaluation"]["loss"] is None
    assert back["norms"]["l2"] == pytest.approx(result.norms.to_dict()["l2"], rel=1e-15)
    assert back["gradients"] is None and back["layers"] is None


def test_landscape_result_round_trips_through_json(tmp_path):
    result = tasks.landscape(_net(), _batches(), directions="random:2", num_points=3, span=0.5)
    result.save(tmp_path)
    back = json.loads((tmp_path / "landscape.json").read_text())
    assert back["directions"] == "random:2" and back["plane"] is not None
    for name in ("landscape_1d.npz", "landscape_1d.png", "landscape_2d.npz", "landscape_2d.png"):
        assert (tmp_path / name).is_file(), name


def test_train_result_round_trips_through_json(tmp_path):
    result = tasks.train(_net(), _batches(), epochs=2, spectrum_every=2, num_iters=4, num_probes=1)
    result.history.steps["loss"][0] = float("nan")
    d = result.to_dict()
    assert d["status"] == "completed" and d["history"]["steps"]["step"][-1] == 6
    result.save(tmp_path)
    text = (tmp_path / "train.json").read_text()
    assert not _has_nan_literal(text)
    back = json.loads(text)
    assert back["history"]["steps"]["loss"][0] is None
    assert back["history"]["steps"]["loss"][1:] == result.history.loss[1:]
    assert back["history"]["steps"]["step"] == list(range(1, 7))
    assert json.loads((tmp_path / "history.json").read_text()) == back["history"]
    assert (tmp_path / "training.png").is_file()


def test_train_by_names_writes_the_history_and_the_figure(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the new names warn about nothing
        result = tasks.train("mlp", "digits", epochs=1, num_samples=64, batch_size=32,
                             out=tmp_path)  # fmt: skip
    assert result.status == "completed"
    back = json.loads((tmp_path / "history.json").read_text())
    assert back["steps"]["step"] == [1, 2]
    assert (tmp_path / "checkpoint-last.pt").is_file() and (tmp_path / "training.png").is_file()


def test_the_trainers_history_writes_nan_as_null_and_reads_it_back(tmp_path):
    from jupyter_curvature.training import History

    result = tasks.train(_net(), _batches(), steps=3, spectrum_every=2, num_iters=4, num_probes=1)
    history = result.history
    history.steps["loss"][1] = float("nan")
    path = history.save(tmp_path / "h.json")
    assert not _has_nan_literal(path.read_text())
    back = History.load(path)
    assert math.isnan(back.loss[1]) and back.loss[0] == history.loss[0]
    assert back.top_eigenvalues == history.top_eigenvalues
    assert back.steps["step"] == history.steps["step"] and len(result.spectra) == 2


def test_the_ggn_of_loss_fn_mse_is_the_hessian_of_a_linear_model():
    """``--loss-fn mse`` (squared error to one-hot targets) has MSELoss's output Hessian: on a
    linear model the GGN equals the Hessian (float64, class-label targets)."""
    from jupyter_curvature.operators import GGNOperator, HessianOperator

    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3).double()
    batch = (torch.randn(20, 5, dtype=torch.float64), torch.randint(0, 3, (20,)))
    loss_fn = tasks.resolve_loss("mse")
    ggn, hessian = GGNOperator(net, loss_fn, batch), HessianOperator(net, loss_fn, batch)
    block = torch.randn(ggn.shape[0], 4, dtype=torch.float64)
    torch.testing.assert_close(ggn @ block, hessian @ block, rtol=1e-12, atol=1e-14)
