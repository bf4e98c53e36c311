"""The command-line interface: outputs checked against independent computations."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import concat, dense_hessian
from torch import nn

from jupyter_curvature.cli import main
from jupyter_curvature.tasks import resolve_setup


def test_list_prints_models_and_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "small_cnn" in out and "digits" in out and "cifar100" in out


def test_every_option_of_every_command_says_what_it_does():
    import argparse

    from jupyter_curvature.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    silent = [
        f"{name} {'/'.join(action.option_strings)}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if action.option_strings and not action.help
    ]
    assert not silent, f"options without help: {silent}"


def test_spectrum_top_eigenvalues_equal_dense_hessian(tmp_path, capsys):
    args = ["--model", "mlp", "--num-samples", "48", "--batch-size", "20", "--dtype", "float64"]
    code = main(
        [
            "spectrum",
            *args,
            "--num-iters",
            "30",
            "--num-probes",
            "2",
            "--top-k",
            "3",
            "--tol",
            "1e-9",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "hessian_spectrum.json").read_text())
    setup = resolve_setup("mlp", "digits", num_samples=48, batch_size=20, dtype="float64", seed=0)
    x, y = concat(setup.data)
    x = x.double()  # loaders give float32; the engine casts inputs to the model dtype
    exact = torch.linalg.eigvalsh(dense_hessian(setup.model, nn.CrossEntropyLoss(), x, y))
    scale = exact.abs().max().item()
    top = np.sort(exact.numpy())[::-1][:3]
    assert np.allclose(summary["top_eigenvalues"], top, rtol=0, atol=1e-8 * scale)
    assert summary["top_converged"] is True
    assert abs(summary["stats"]["largest"] - top[0]) <= 1e-6 * scale
    assert (tmp_path / "hessian_density.png").stat().st_size > 1000
    assert "EigenpairsResult" in capsys.readouterr().out


def test_spectrum_blocks_equal_the_dense_hessian_of_each_block(tmp_path, capsys):
    """``spectrum --blocks``: each block's top eigenvalue is the largest eigenvalue of the
    dense Hessian restricted to that block's parameters; the table is printed and saved."""
    args = ["--model", "mlp", "--num-samples", "48", "--batch-size", "20", "--dtype", "float64"]
    code = main(["spectrum", *args, "--num-iters", "60", "--num-probes", "1", "--tol", "1e-9",
                 "--blocks", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    rows = json.loads((tmp_path / "hessian_spectrum.json").read_text())["blocks"]
    saved = json.loads((tmp_path / "hessian_blocks.json").read_text())
    assert [r["block"] for r in rows] == [b["name"] for b in saved["blocks"]] == ["1", "3"]
    setup = resolve_setup("mlp", "digits", num_samples=48, batch_size=20, dtype="float64", seed=0)
    x, y = concat(setup.data)
    H = dense_hessian(setup.model, nn.CrossEntropyLoss(), x.double(), y)
    names = [n for n, _ in setup.model.named_parameters()]
    sizes = [p.numel() for _, p in setup.model.named_parameters()]
    offsets = np.cumsum([0, *sizes])
    for block in saved["blocks"]:
        index = np.concatenate([np.arange(offsets[names.index(n)], offsets[names.index(n) + 1])
                                for n in block["params"]])  # fmt: skip
        exact = torch.linalg.eigvalsh(H[np.ix_(index, index)]).max().item()
        assert block["converged"] and abs(block["top_eigenvalue"] - exact) <= 1e-8 * abs(exact)
    assert (tmp_path / "hessian_blocks.png").stat().st_size > 1000
    assert "Per-block hessian spectra" in capsys.readouterr().out


def test_landscape_centre_is_the_model_loss(tmp_path):
    args = ["--model", "mlp", "--num-samples", "40", "--dtype", "float64"]
    assert (
        main(
            [
                "landscape",
                *args,
                "--directions",
                "random:1",
                "--num-points",
                "3",
                "--no-plane",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    from jupyter_curvature.landscape.results import LandscapeResult

    line = LandscapeResult.load(tmp_path / "landscape_1d.npz")
    setup = resolve_setup("mlp", "digits", num_samples=40, dtype="float64", seed=0)
    x, y = concat(setup.data)
    x = x.double()  # loaders give float32; the engine casts inputs to the model dtype
    with torch.no_grad():
        expected = nn.CrossEntropyLoss()(setup.model.eval()(x), y).item()
    assert line.metric("train_loss")[0, 1] == pytest.approx(expected, rel=1e-12)
    assert (tmp_path / "landscape_1d.png").exists()


def test_stats_writes_the_evaluation(tmp_path):
    args = ["--model", "mlp", "--num-samples", "60", "--dtype", "float64"]
    assert (
        main(
            [
                "stats",
                *args,
                "--stats-batch",
                "20",
                "--num-probes",
                "2",
                "--no-layers",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    stats = json.loads((tmp_path / "stats.json").read_text())
    setup = resolve_setup("mlp", "digits", num_samples=60, dtype="float64", seed=0)
    x, y = concat(setup.data)
    x = x.double()  # loaders give float32; the engine casts inputs to the model dtype
    with torch.no_grad():
        expected = nn.CrossEntropyLoss()(setup.model.eval()(x), y).item()
    assert stats["evaluation"]["loss"] == pytest.approx(expected, rel=1e-12)
    assert stats["norms"]["l2"] == pytest.approx(
        torch.cat([p.reshape(-1) for p in setup.model.parameters()]).norm().item(), rel=1e-12
    )


def test_train_then_load_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            ["train", "--model", "mlp", "--epochs", "1", "--num-samples", "100", "--out", str(out)]
        )
        == 0
    )
    checkpoints = sorted(out.glob("*.pt"))
    assert checkpoints, "training wrote no checkpoint"
    assert (out / "history.json").exists() and (out / "training.png").exists()
    setup = resolve_setup("mlp", "digits", checkpoint=str(checkpoints[-1]))
    assert isinstance(setup.model, nn.Module)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["spectrum", "--model", "no_such_net"], "no_such_net"),
        (["spectrum", "--data", "no_such_data"], "no_such_data"),
        (
            ["spectrum", "--device", "cuda"]
            if not torch.cuda.is_available()
            else ["spectrum", "--num-iters", "0"],
            "cuda" if not torch.cuda.is_available() else "num-iters",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys):
    assert message in one_line_error(argv, capsys)


def one_line_error(argv: list[str], capsys) -> str:
    """The error ``main(argv)`` prints, checked to be one line with exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


class RunsWhenUnpickled:
    """A pickle payload: unpickling it creates ``marker`` (weights_only loading must refuse
    it, never run it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


SMALL_SPECTRUM = ["spectrum", "--model", "mlp", "--num-samples", "40", "--num-iters", "5", "--num-probes",
                  "1", "--top-k", "1"]  # fmt: skip


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "the file is empty"),
        (RunsWhenUnpickled, "Unsupported global"),
        ([1, 2, 3], "holds a list, not model weights"),
        ({"lr": 0.1}, "holds no model weights"),
    ],
    ids=["empty", "pickle-payload", "list", "dict-without-weights"],
)
def test_a_checkpoint_that_is_not_weights_is_one_line_and_exit_code_2(
    tmp_path, capsys, content, message
):
    path, marker = tmp_path / "bad.pt", tmp_path / "payload-ran"
    if content is None:
        path.write_bytes(b"")
    else:
        torch.save(content(marker) if content is RunsWhenUnpickled else content, path)
    err = one_line_error([*SMALL_SPECTRUM, "--checkpoint", str(path)], capsys)
    assert message in err and str(path) in err
    assert not marker.exists()


@pytest.mark.parametrize("where", ["existing-file", "under-a-file", "under-dev-full"])
def test_an_out_that_cannot_be_a_folder_is_one_line_and_exit_code_2(tmp_path, capsys, where):
    (tmp_path / "a-file").write_text("kept")
    out = {
        "existing-file": tmp_path / "a-file",
        "under-a-file": tmp_path / "a-file" / "results",
        "under-dev-full": Path("/dev/full/results"),
    }[where]
    if where == "under-dev-full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    err = one_line_error([*SMALL_SPECTRUM, "--out", str(out)], capsys)
    assert f"--out {out} is not a folder" in err
    assert (tmp_path / "a-file").read_text() == "kept"


def test_a_full_disk_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
    def no_room(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_room)
    err = one_line_error([*SMALL_SPECTRUM, "--out", str(tmp_path)], capsys)
    assert f"disk full or file too large while writing {tmp_path}" in err
    assert list(tmp_path.iterdir()) == []  # the first file failed; no temporary file is left


def test_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(SystemExit):
        main(["spectrum", "--model", "mlp", "--checkpoint", str(tmp_path / "other.pt")])
    with pytest.raises(ValueError, match="missing keys"):
        resolve_setup("mlp", "digits", checkpoint=str(tmp_path / "other.pt"))


@pytest.mark.slow
def test_demo_report_matches_its_results(tmp_path):
    from jupyter_curvature.tasks import report as run_report

    report = run_report(tmp_path, epochs=1, quick=True)
    saved = json.loads((tmp_path / "hessian_spectrum.json").read_text())
    assert report["hessian"]["top_eigenvalues"] == saved["top_eigenvalues"]
    assert (tmp_path / "report.md").read_text().startswith("# Curvature report")
    for name in (
        "hessian_density.png",
        "ggn_density.png",
        "landscape_1d.png",
        "landscape_2d.png",
        "stats.json",
    ):
        assert (tmp_path / name).exists(), name
    # the GGN of cross-entropy is positive semi-definite: its smallest Ritz value is >= 0
    assert report["ggn"]["stats"]["smallest"] >= -1e-6 * report["ggn"]["stats"]["largest"]


def _train_argv(out) -> list[str]:
    return ["train", "--model", "mlp", "--epochs", "2", "--num-samples", "100", "--batch-size",
            "20", "--out", str(out)]  # fmt: skip


def _train_on_a_rank(out: str) -> int:
    return main(_train_argv(out))


@pytest.mark.distributed
def test_train_under_two_processes_takes_the_single_process_steps(tmp_path):
    """`train` under a process group (as under torchrun) runs the DDP Trainer: the same 10
    global batches of 20 as one process, each split 10 + 10, the same weights up to float32
    rounding, and only rank 0 writes."""
    import jupyter_curvature.distributed as jd

    assert main(_train_argv(tmp_path / "single")) == 0
    codes = jd.launch(_train_on_a_rank, 2, (str(tmp_path / "ddp"),), timeout=60,
                      join_timeout=300, start_method="fork")  # fmt: skip
    assert codes == [0, 0]
    single = json.loads((tmp_path / "single" / "history.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert ddp["steps"]["step"] == single["steps"]["step"] == list(range(1, 11))
    # float32: the two runs sum the same numbers in a different order (relative 1e-7 a step)
    assert ddp["steps"]["loss"] == pytest.approx(single["steps"]["loss"], rel=1e-5)
    a = torch.load(tmp_path / "single" / "checkpoint-last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "ddp" / "checkpoint-last.pt", weights_only=True)
    assert b["world_size"] == 2
    for key, value in a.items():
        assert torch.allclose(b["model"][key], value, rtol=1e-5, atol=1e-6), key
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir()
    )


@pytest.mark.parametrize(
    "old, new",
    [
        (["--iters", "6"], ["--num-iters", "6"]),
        (["--probes", "2"], ["--num-probes", "2"]),
        (["--top", "2"], ["--top-k", "2"]),
        (["--subsample", "30"], ["--num-samples", "30"]),
        (["--ggn"], ["--curvature", "ggn"]),
    ],
)
def test_a_deprecated_flag_warns_on_stderr_and_gives_the_new_flags_result(
    tmp_path, capsys, old, new
):
    base = ["spectrum", "--model", "mlp", "--num-samples", "30", "--num-iters", "5",
            "--num-probes", "1", "--top-k", "1", "--tol", "1e-6"]  # fmt: skip
    if new[0] in base:  # the flag under test replaces the base's setting of it
        i = base.index(new[0])
        del base[i : i + 2]
    assert main([*base, *new, "--out", str(tmp_path / "new")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main([*base, *old, "--out", str(tmp_path / "old")]) == 0
    err = capsys.readouterr().err
    assert f"{old[0]} is deprecated; use {new[0]}" in err and len(err.strip().splitlines()) == 1
    curvature = "ggn" if old == ["--ggn"] else "hessian"
    a = json.loads((tmp_path / "new" / f"{curvature}_spectrum.json").read_text())
    b = json.loads((tmp_path / "old" / f"{curvature}_spectrum.json").read_text())
    for key in ("top_eigenvalues", "stats", "num_parameters"):
        assert a[key] == b[key], key


def test_train_writes_tensorboard_event_files_with_the_history(tmp_path):
    """``train --tensorboard DIR``: the per-step losses and each curvature check are in the
    event files, equal to the run's own history (read back with tensorboard's reader)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb, out = tmp_path / "tb", tmp_path / "run"
    argv = ["train", "--model", "mlp", "--epochs", "1", "--num-samples", "64",
            "--batch-size", "16", "--spectrum-every", "2", "--out", str(out),
            "--tensorboard", str(tb)]  # fmt: skip
    assert main(argv) == 0
    history = json.loads((out / "history.json").read_text())
    acc = EventAccumulator(str(tb))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == history["steps"]["step"]
    assert [e.value for e in losses] == pytest.approx(history["steps"]["loss"], rel=1e-6)
    checks = acc.Scalars("curvature/lambda_1")
    assert [e.step for e in checks] == [r["step"] for r in history["curvature"]]
    assert [e.value for e in checks] == pytest.approx(
        [r["top_eigenvalues"][0] for r in history["curvature"]], rel=1e-6
    )


def _sigint_at_step(step: int):
    """A training callback that presses Ctrl-C (SIGINT to this process) after ``step``."""
    import signal

    from jupyter_curvature.training import LambdaCallback

    def press(trainer, logs):
        if logs["step"] == step:
            os.kill(os.getpid(), signal.SIGINT)

    return LambdaCallback(on_step_end=press)


def _train_with_ctrl_c(monkeypatch, module, step: int = 2) -> None:
    """Make ``module.train`` press Ctrl-C after ``step`` of training."""
    real = module.train

    def train(*args, callbacks=(), **kwargs):
        return real(*args, callbacks=[*callbacks, _sigint_at_step(step)], **kwargs)

    monkeypatch.setattr(module, "train", train)


@pytest.mark.parametrize("task", ["digits", "text"])
def test_ctrl_c_in_demo_training_stops_the_demo_and_exits_130(tmp_path, capsys, monkeypatch, task):
    import sys

    if task == "text":
        pytest.importorskip("transformers")
    module = sys.modules[
        f"jupyter_curvature.tasks.{'report' if task == 'digits' else 'text_report'}"
    ]
    _train_with_ctrl_c(monkeypatch, module)
    argv = ["demo", "--task", task, "--epochs", "1", "--quick", "--out", str(tmp_path / "k")]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "at step 2" in err and "not computed" in err
    assert (tmp_path / "k" / "train" / "checkpoint-last.pt").exists()  # what finished is kept
    assert not list((tmp_path / "k").glob("*_spectrum.json"))  # nothing ran after training


def test_ctrl_c_in_train_exits_130_after_saving(tmp_path, capsys, monkeypatch):
    from jupyter_curvature import tasks

    _train_with_ctrl_c(monkeypatch, tasks)
    assert main(_train_argv(tmp_path)) == 130
    assert "interrupted" in capsys.readouterr().err
    assert (tmp_path / "checkpoint-last.pt").exists() and (tmp_path / "history.json").exists()


def test_ctrl_c_in_spectrum_exits_130_with_the_partial_result(tmp_path, capsys, monkeypatch):
    import signal

    from jupyter_curvature import tasks

    real = tasks.spectrum

    def spectrum(*args, progress, cancel, **kwargs):
        def press_once(event):  # after the density's third step
            if event.phase == "density" and event.step >= 3 and not cancel.is_set():
                os.kill(os.getpid(), signal.SIGINT)  # the main thread cancels the token
                cancel._event.wait(30)

        return real(*args, progress=press_once, cancel=cancel, **kwargs)

    monkeypatch.setattr(tasks, "spectrum", spectrum)
    assert main([*SMALL_SPECTRUM, "--num-iters", "20", "--out", str(tmp_path)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert json.loads((tmp_path / "hessian_spectrum.json").read_text())["cancelled"] is True


@pytest.mark.parametrize(
    "argv",
    [
        ["spectrum", "--model", "nosuch"],
        ["spectrum", "--data", "nosuch"],
        ["spectrum", "--model", "mlp", "--num-samples", "40", "--params", "nosuch"],
        ["spectrum", "--model", "mlp", "--num-samples", "40", "--top-k", "5000"],
        ["stats", "--model", "nosuch"],
        ["landscape", "--model", "nosuch"],
        ["train", "--model", "nosuch"],
        ["demo", "--epochs", "0"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_failed_run_leaves_no_folder_behind(tmp_path, capsys, argv):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "kept.txt").write_text("kept")
    for out in (tmp_path / "new" / "deep", tmp_path / "mine"):
        one_line_error([*argv, "--out", str(out)], capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept.txt", "mine"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["spectrum", "--top-k", "2", "--tol", "0"], "--tol must be between 0 and 1"),
        (["spectrum", "--tol", "5"], "--tol must be between 0 and 1"),
        (["spectrum", "--top-k", "-1"], "--top-k must be 0"),
        (["spectrum", "--num-probes", "0"], "--num-probes must be at least 1"),
        (["spectrum", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["spectrum", "--num-iters", "0"], "--num-iters must be at least 1"),
        (["landscape", "--directions", "top:4", "--span", "-1"], "--span must be a positive"),
        (["landscape", "--num-points", "0"], "--num-points must be at least 2"),
        (["landscape", "--directions", "sideways:2"], "--directions"),
        (["stats", "--num-probes", "0"], "--num-probes must be at least 1"),
        (["stats", "--stats-batch", "0"], "--stats-batch must be at least 1"),
        (["train", "--spectrum-every", "-3"], "--spectrum-every must be 0"),
        (["demo", "--epochs", "0"], "--epochs must be at least 1"),
    ],
)
def test_every_flag_is_checked_before_any_computation(argv, message, capsys, monkeypatch):
    from jupyter_curvature import tasks

    def no_setup(*args, **kwargs):
        raise AssertionError("the data and model were set up before the flags were checked")

    monkeypatch.setattr(tasks, "resolve_setup", no_setup)
    monkeypatch.setattr(tasks, "train", no_setup)
    monkeypatch.setattr(tasks, "report", no_setup)
    assert message in one_line_error(argv, capsys)


@pytest.mark.parametrize(
    "argv, flags",
    [
        (["spectrum", "--num-iters", "7", "--iters", "5"], ("--num-iters", "--iters")),
        (["spectrum", "--curvature", "hessian", "--ggn"], ("--curvature", "--ggn")),
        (["landscape", "--span", "1", "--range", "2"], ("--span", "--range")),
    ],
)
def test_an_old_flag_given_with_its_new_one_is_an_error_naming_both(argv, flags, capsys):
    err = one_line_error(argv, capsys)
    assert all(flag in err for flag in flags)


def test_an_empty_out_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["spectrum", "--out", ""])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err


def test_an_out_that_cannot_be_created_names_out_and_the_remedy(tmp_path, capsys, monkeypatch):
    def refused(self, *args, **kwargs):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(Path, "mkdir", refused)
    err = one_line_error([*SMALL_SPECTRUM, "--out", str(tmp_path / "x")], capsys)
    assert f"--out {tmp_path / 'x'} cannot be created" in err and "folder you can write" in err


@pytest.mark.parametrize("command", ["train", "spectrum", "stats", "landscape"])
def test_the_out_help_names_its_default(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert f"curvature-{command}" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["spectrum", "--model", "mlp", "--num-samples", "40", "--memory-budget", "1"],
         "--num-iters"),
        (["stats", "--model", "mlp", "--num-samples", "64"], "--stats-batch"),
        (["spectrum", "--model", "mlp", "--num-samples", "40", "--params", "nosuch"],
         "--params"),
    ],
)  # fmt: skip
def test_engine_errors_name_the_flags(argv, flag, capsys):
    err = one_line_error(argv, capsys)
    assert flag in err and "num_iters" not in err and "batch_size" not in err


def _one_hot_mse(outputs, labels):
    return ((outputs - nn.functional.one_hot(labels, outputs.shape[1]).double()) ** 2).mean()


@pytest.mark.parametrize("loss, reference", [("mse", _one_hot_mse), ("nll", None)])
@pytest.mark.parametrize("command", ["spectrum", "train"])
def test_every_offered_loss_runs_and_means_what_the_help_says(
    tmp_path, capsys, loss, reference, command
):
    if command == "train":
        argv = ["train", "--model", "mlp", "--epochs", "1", "--num-samples", "40"]
        assert main([*argv, "--loss-fn", loss, "--out", str(tmp_path)]) == 0
        history = json.loads((tmp_path / "history.json").read_text())
        assert np.isfinite(history["steps"]["loss"]).all()
        return
    argv = ["spectrum", "--model", "mlp", "--num-samples", "24", "--dtype", "float64",
            "--num-iters", "10", "--num-probes", "1", "--top-k", "1", "--tol", "1e-9"]  # fmt: skip
    assert main([*argv, "--loss-fn", loss, "--out", str(tmp_path)]) == 0
    setup = resolve_setup("mlp", "digits", num_samples=24, dtype="float64", seed=0)
    x, y = concat(setup.data)
    # nll of log_softmax(logits) is cross-entropy
    exact = torch.linalg.eigvalsh(
        dense_hessian(setup.model, reference or nn.CrossEntropyLoss(), x.double(), y)
    )
    top = json.loads((tmp_path / "hessian_spectrum.json").read_text())["top_eigenvalues"][0]
    assert abs(top - exact.max().item()) <= 1e-7 * exact.abs().max().item()


@pytest.mark.parametrize("flag", [["--checkpoint", "w.pt"], ["--dtype", "float64"]])
def test_train_does_not_offer_flags_it_would_ignore(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *flag])
    assert exit_info.value.code == 2 and flag[0] in capsys.readouterr().err


def test_train_with_the_default_loss_given_is_the_run_without_it(tmp_path):
    argv = ["train", "--model", "mlp", "--epochs", "1", "--num-samples", "64"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--loss-fn", "cross_entropy", "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "history.json").read_text()) for d in "ab")
    assert a["steps"] == b["steps"]  # the same lr, losses and accuracies
    assert [{**e, "seconds": 0} for e in a["epochs"]] == [{**e, "seconds": 0} for e in b["epochs"]]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        p.name for p in (tmp_path / "b").iterdir()
    )


def test_a_spectrum_without_blocks_removes_an_earlier_runs_blocks(tmp_path, capsys):
    assert main([*SMALL_SPECTRUM, "--blocks", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "hessian_blocks.json").exists()
    assert main([*SMALL_SPECTRUM, "--out", str(tmp_path)]) == 0
    assert not list(tmp_path.glob("hessian_blocks.*"))
    assert "removed hessian_blocks.json, hessian_blocks.png" in capsys.readouterr().err


def test_train_into_an_earlier_runs_folder_warns(tmp_path, capsys):
    assert main(_train_argv(tmp_path)) == 0
    assert "earlier run" not in capsys.readouterr().err
    assert main(_train_argv(tmp_path)) == 0
    assert "holds an earlier run's checkpoint-last.pt" in capsys.readouterr().err


def test_ctrl_c_in_landscape_keeps_the_line_skips_the_plane_and_exits_130(
    tmp_path, capsys, monkeypatch
):
    import signal

    from jupyter_curvature import tasks

    real = tasks.resolve_setup
    calls = []

    def press_at_the_third_forward(*args, **kwargs):
        setup = real(*args, **kwargs)

        def hook(module, inputs, outputs):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)

        setup.model.register_forward_hook(hook)
        return setup

    monkeypatch.setattr(tasks, "resolve_setup", press_at_the_third_forward)
    argv = ["landscape", "--model", "mlp", "--num-samples", "40", "--directions", "random:2",
            "--num-points", "5", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert (tmp_path / "landscape_1d.npz").exists() and not (tmp_path / "landscape_2d.npz").exists()


def test_train_passes_download_to_the_dataset(tmp_path, monkeypatch):
    from jupyter_curvature import data

    asked = []
    real = data.get_dataset

    def get_dataset(*args, download=False, **kwargs):
        asked.append(download)
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "get_dataset", get_dataset)
    assert main([*_train_argv(tmp_path), "--download"]) == 0
    assert asked and all(asked)


@pytest.mark.parametrize(
    "message, shown",
    [
        ("k must be >= 1", "--top-k must be >= 1"),
        ("every must be a positive integer", "--spectrum-every must be a positive integer"),
        ("lower num_iters/num_probes", "lower --num-iters/--num-probes"),
        ("params='x' matches no parameter", "--params 'x' matches no parameter"),
        ("cannot read /data/num_samples/a.pt", "cannot read /data/num_samples/a.pt"),
    ],
)
def test_engine_keywords_in_messages_become_flags_but_paths_stay(message, shown):
    from jupyter_curvature.cli import _in_flag_names

    assert _in_flag_names(message, "spectrum") == shown
