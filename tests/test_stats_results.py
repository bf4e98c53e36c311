"""The statistics' result records: tables, dicts, JSON, save/load; the modules' doctests."""

from __future__ import annotations

import doctest
import importlib
import json
import math
import subprocess
import sys

import pytest

from jupyter_curvature.stats import (
    CurvatureStatistics,
    Estimate,
    GradientStatistics,
    Record,
    WeightNorms,
)
from jupyter_curvature.stats.results import format_table


def gradient_record() -> GradientStatistics:
    return GradientStatistics(
        loss_mean=2.3,
        loss_var=0.01,
        grad_mean_norm_sq=1.5,
        grad_var=0.5,
        snr=3.0,
        per_sample=False,
        batch_size=16,
        num_batches=4,
        num_samples=50,
        num_params=610,
        batchnorm="eval",
    )


def test_estimate_prints_with_its_standard_error():
    assert str(Estimate(1.23456789, 0.0123, 8)) == "1.23457 ± 0.012"
    assert str(Estimate(1.0, math.nan, 1)) == "1 ± nan"
    assert Estimate(1.0, 0.1, 4).interval == (0.8, 1.2)
    assert float(Estimate(2.5, 0.1, 4)) == 2.5


def test_table_aligns_columns():
    text = format_table(["name", "value"], [["a", 1.5], ["longer", None]], title="T")
    lines = text.splitlines()
    assert lines[0] == "T" and lines[1].startswith("name") and set(lines[2]) <= {"-", " "}
    assert lines[3].endswith("1.5") and lines[4].endswith("-")


def test_dict_json_and_file_round_trip(tmp_path):
    record = gradient_record()
    as_dict = record.to_dict()
    assert as_dict["type"] == "GradientStatistics" and as_dict["snr"] == 3.0
    assert json.loads(record.to_json())["grad_var"] == 0.5
    assert Record.from_dict(as_dict) == record
    path = record.save(tmp_path / "grad")
    assert path.suffix == ".json"
    assert GradientStatistics.load(path) == record and Record.load(path) == record


def test_nan_survives_json(tmp_path):
    est = Estimate(1.0, math.nan, 1)
    stats = CurvatureStatistics(
        curvature="ggn",
        mean_norm_sq=est,
        variance=est,
        rayleigh=est,
        delta=est,
        alpha=est,
        frobenius_sq=est,
        trace=est,
        num_probes=1,
        batch_size=8,
        num_batches=2,
        num_samples=16,
        num_params=3,
        seed=0,
        batchnorm="eval",
        per_probe={"alpha": [1.0]},
    )
    path = stats.save(tmp_path / "c.json")
    loaded = CurvatureStatistics.load(path)
    assert math.isnan(loaded.trace.stderr) and isinstance(loaded.trace, Estimate)
    assert loaded.per_probe == {"alpha": [1.0]}
    # the one JSON policy: strict JSON on file (NaN -> null), NaN again on load
    text = path.read_text()
    assert "NaN" not in text and '"stderr": null' in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert stats.to_dict()["trace"]["stderr"] is None
    assert math.isnan(Record.from_dict(stats.to_dict()).trace.stderr)
    # files written before the policy (NaN literals) load the same
    old = tmp_path / "old.json"
    old.write_text(
        json.dumps({"type": "CurvatureStatistics", **stats.to_dict()}).replace("null", "NaN")
    )
    back = CurvatureStatistics.load(old)
    assert math.isnan(back.trace.stderr) and back.trace.value == 1.0 and back.num_probes == 1


def test_optional_float_fields_keep_none(tmp_path):
    norms = WeightNorms(
        l2=1.0,
        linf=0.5,
        weights_l2=1.0,
        weights_linf=0.5,
        biases_l2=None,
        biases_linf=None,
        norm_l2=None,
        norm_linf=None,
        num_params=3,
    )
    back = WeightNorms.load(norms.save(tmp_path / "w.json"))
    assert back == norms and back.biases_l2 is None


def test_loading_the_wrong_record_type_is_refused(tmp_path):
    path = gradient_record().save(tmp_path / "g.json")
    with pytest.raises(ValueError, match="holds a GradientStatistics, not a WeightNorms"):
        WeightNorms.load(path)
    with pytest.raises(ValueError, match="unknown record type"):
        Record.from_dict({"type": "Nope"})


@pytest.mark.parametrize(
    "module", ["evaluation", "gradients", "curvature", "norms", "layers", "results", "report"]
)
def test_docstring_examples(module):
    mod = importlib.import_module(f"jupyter_curvature.stats.{module}")
    failures, _ = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert failures == 0


def test_stats_import_no_jupyter_modules():
    code = (
        "import sys, jupyter_curvature.stats; "
        "bad = [m for m in ('IPython', 'ipywidgets', 'bqplot', 'traitlets', 'anywidget') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_network_statistics_combines_the_parts(tmp_path):
    import torch
    from reference import bn_cnn, digits
    from torch import nn

    from jupyter_curvature.stats import (
        NetworkStatistics,
        curvature_statistics,
        evaluate,
        gradient_statistics,
        network_statistics,
        weight_norms,
    )

    x, y = digits(48)
    ce = nn.CrossEntropyLoss()
    model = bn_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, test = (x[:32], y[:32]), (x[32:], y[32:])
    report = network_statistics(model, ce, train, test, batch_size=16, num_probes=2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert report.train == evaluate(model, ce, train)
    assert report.test == evaluate(model, ce, test)
    assert report.gradients == gradient_statistics(model, ce, train, batch_size=16)
    assert report.curvature == curvature_statistics(model, ce, train, num_probes=2, batch_size=16)
    assert report.weights == weight_norms(model)
    text = str(report)
    assert (
        "[train] Evaluation" in text and "Curvature statistics" in text and "Weight norms" in text
    )
    assert NetworkStatistics.load(report.save(tmp_path / "all.json")) == report
    # the original's order: recalibrate BatchNorm on the training data first
    recal = network_statistics(
        model, ce, train, batch_size=16, curvature=None, recalibrate_batchnorm=True
    )
    assert recal.curvature is None and recal.test is None
    assert not torch.equal(model.features[1].running_mean, before["features.1.running_mean"])
