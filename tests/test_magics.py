"""The magics through IPython's InteractiveShell: parsing, errors, training, interrupts, lifecycle."""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import pytest
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from ipywidgets.widgets.widget import _instances
from traitlets.config import Config

from jupyter_curvature import tasks as api
from jupyter_curvature.magics import CurvMagics

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# a few small settings that keep every run here to a fraction of a second
FAST = "--steps 4 --batch-size 32"


@pytest.fixture(scope="module")
def ip():
    c = Config()
    c.HistoryAccessor.enabled = False  # jupysql's testing shell: no sqlite history, no fd leak
    shell = InteractiveShell.instance(config=c)
    shell.run_line_magic("load_ext", "jupyter_curvature")
    shell.run_line_magic("config", "CurvMagics.widgets = 'on'")
    yield shell
    shell.run_line_magic("unload_ext", "jupyter_curvature")


def magics(ip) -> CurvMagics:
    return next(c for c in ip.configurables if isinstance(c, CurvMagics))


def run(ip, code: str):
    """run_cell, re-raising the cell's exception (like jupysql's TestingShell)."""
    res = ip.run_cell(code)
    if res.error_before_exec is not None:
        raise res.error_before_exec
    if res.error_in_exec is not None:
        raise res.error_in_exec
    return res


def usage_error(ip, magic: str, line: str) -> str:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic(magic, line)
    msg = str(info.value)
    assert "\n" not in msg, f"not a one-line message: {msg!r}"
    return msg


# ----------------------------------------------------------------------------- extension
def test_extension_registers_every_magic_and_help(ip, capsys):
    line = ip.magics_manager.magics["line"]
    for name in ("curv_help", "curv_train", "curv_spectrum", "curv_stats", "curv_landscape"):
        assert name in line
    assert "curv_train" in ip.magics_manager.magics["cell"]
    ip.run_line_magic("curv_help", "")
    out = capsys.readouterr().out
    for name in (
        "%%curv_train",
        "%curv_spectrum",
        "%curv_stats",
        "%curv_landscape",
        "--spectrum-every",
    ):
        assert name in out
    # each magic's own help (what `%curv_spectrum?` shows) lists its options
    doc = ip.find_line_magic("curv_spectrum").__doc__
    for opt in ("--curvature", "--num-iters", "--num-probes", "--top-k", "--params", "--out"):
        assert opt in doc


def test_load_is_idempotent_and_unload_removes_everything():
    c = Config()
    c.HistoryAccessor.enabled = False
    shell = InteractiveShell.instance(config=c)
    before = sum(isinstance(x, CurvMagics) for x in shell.configurables)
    from jupyter_curvature.magics import load_ipython_extension, unload_ipython_extension

    load_ipython_extension(shell)
    load_ipython_extension(shell)
    assert sum(isinstance(x, CurvMagics) for x in shell.configurables) == max(before, 1)
    m = magics(shell)
    unload_ipython_extension(shell)
    assert "curv_spectrum" not in shell.magics_manager.magics["line"]
    assert m._pre_run_cell not in shell.events.callbacks["pre_run_cell"]
    load_ipython_extension(shell)  # the module fixture's shell is the same singleton
    shell.run_line_magic("config", "CurvMagics.widgets = 'on'")


def test_load_ext_shows_the_bqplot_axis_guard_and_unload_closes_it(monkeypatch):
    import jupyter_curvature.magics as magics_module
    from jupyter_curvature.magics import load_ipython_extension, unload_ipython_extension
    from jupyter_curvature.widgets._bqplot_guard import BqplotAxisGuard

    c = Config()
    c.HistoryAccessor.enabled = False
    shell = InteractiveShell.instance(config=c)
    unload_ipython_extension(shell)
    shown = []
    monkeypatch.setattr(magics_module, "display", shown.append)
    shell.config.CurvMagics.widgets = "on"  # a kernel with widgets: the guard is shown at load
    try:
        load_ipython_extension(shell)
        assert len(shown) == 1 and isinstance(shown[0], BqplotAxisGuard), shown
        guard = shown[0]
        assert guard.comm is not None and repr(guard) == ""  # nothing to read in a text view
        load_ipython_extension(shell)  # idempotent: one guard
        assert len(shown) == 1
        unload_ipython_extension(shell)
        assert guard.comm is None
    finally:
        del shell.config.CurvMagics["widgets"]
        unload_ipython_extension(shell)
        load_ipython_extension(shell)  # the module fixture's shell is the same singleton
        shell.run_line_magic("config", "CurvMagics.widgets = 'on'")
    assert len(shown) == 1  # "auto" outside a kernel shows nothing


def test_the_tasks_import_no_jupyter_module():
    """tasks/ is engine-side: no import of IPython, ipywidgets, bqplot, traitlets, anywidget.

    (Checked on the source, not in a subprocess: importing torch there costs 15 s on the
    shared test machine; the package-wide subprocess check belongs to the package tests.)
    """
    import ast

    imported = set()
    for path in Path(api.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert not imported & {"IPython", "ipywidgets", "bqplot", "traitlets", "anywidget"}


# ----------------------------------------------------------------------------- bad input
def test_usage_errors_are_one_line(ip):
    ip.user_ns.update(number=3, text="hello", net=torch.nn.Linear(64, 10))
    msg = usage_error(ip, "curv_spectrum", "--model no_such_thing --data digits")
    assert "neither a variable nor a registered model" in msg and "mlp" in msg
    msg = usage_error(ip, "curv_spectrum", "--model number --data digits")
    assert "'number' is an int, not a torch.nn.Module" in msg
    msg = usage_error(ip, "curv_spectrum", "--model net --data text")
    assert "'text' is a str, not a DataLoader" in msg
    msg = usage_error(ip, "curv_spectrum", "--model net --data missing_loader")
    assert "define a variable 'missing_loader' first" in msg and "digits" in msg
    msg = usage_error(ip, "curv_train", "--model net --data digits --optimizer number")
    assert "'number' is an int, not a torch.optim.Optimizer" in msg
    msg = usage_error(ip, "curv_train", "--model net --data digits --optimizer lbfgs2")
    assert "sgd, adam, adamw, kfac, swats" in msg
    msg = usage_error(ip, "curv_spectrum", "--model net --data digits --bogus 3")
    assert (
        "unrecognized arguments: --bogus 3" in msg
        and "valid options:" in msg
        and "--num-probes" in msg
    )
    msg = usage_error(ip, "curv_train", "--model net --data digits --steps 2 --epochs 1")
    assert "not both" in msg
    msg = usage_error(ip, "curv_train", "--model net --data digits --lr -1")
    assert "--lr" in msg
    msg = usage_error(ip, "curv_stats", "--model net --data digits --include norms,bogus")
    assert "choose from evaluation,gradients,curvature,norms,layers" in msg
    msg = usage_error(ip, "curv_spectrum", "--data digits")
    assert "--model" in msg
    msg = usage_error(ip, "curv_train", "--model net --data digits --out 1bad")
    assert "not a valid Python variable name" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_gpu(ip):
    msg = usage_error(ip, "curv_spectrum", "--model mlp --data digits --device cuda")
    assert "no CUDA GPU" in msg and "--device cpu" in msg
    msg = usage_error(ip, "curv_train", "--model mlp --data digits --device cuda:1")
    assert "no CUDA GPU" in msg


# ----------------------------------------------------------------------------- %%curv_train
def trainer_batches(batch_size, seed=0):
    """The digits in the order the Trainer documents for epoch 1: a permutation drawn from
    a generator seeded by ``(seed, epoch)``, cut into batches."""
    from jupyter_curvature.data import digits_dataset
    from jupyter_curvature.training.data_order import epoch_seed

    x, y = digits_dataset("train").tensors
    g = torch.Generator().manual_seed(epoch_seed(seed, 0))
    idx = torch.randperm(len(y), generator=g)
    return [(x[i], y[i]) for i in idx.split(batch_size)]


def manual_losses(model, loader, lr, steps):
    params = list(model.parameters())
    out = []
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        loss = torch.nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
        out.append(float(loss.detach()))
    return out


def test_train_line_magic_matches_a_manual_loop(ip):
    from jupyter_curvature.models import create

    torch.manual_seed(0)
    ip.user_ns["net"] = net = create("mlp")
    reference = copy.deepcopy(net)
    run(
        ip,
        f"%curv_train --model net --data digits {FAST} --lr 0.2 --spectrum-every 2 --num-iters 8 --out run",
    )
    r = ip.user_ns["run"]
    assert isinstance(r, api.TrainResult) and r.model is net and r.status == "completed"
    loader = trainer_batches(32)
    assert r.history.loss == pytest.approx(manual_losses(reference, loader, 0.2, 4), rel=1e-6)
    assert r.history.spectrum_steps == [0, 2, 4] and len(r.history.top_eigenvalues[0]) == 3
    dash = magics(ip).last_panel
    assert dash.progress.value == 4 and "finished" in dash.status.value
    # the test split of the built-in data was evaluated at the end
    assert r.history.eval_steps[-1] == 4 and 0 <= r.history.test_accuracy[-1] <= 1


def test_cell_body_is_the_training_step(ip):
    from jupyter_curvature.models import create

    torch.manual_seed(0)
    ip.user_ns["net2"] = create("mlp")
    ip.user_ns["x"] = "my x"  # the user's names come back after training
    reference = copy.deepcopy(ip.user_ns["net2"])
    body = "outputs = model(x)\nloss = loss_fn(outputs, y) + 0.0 * step\n"
    run(ip, f"%%curv_train --model net2 --data digits {FAST} --lr 0.2 --out run2\n{body}")
    h = ip.user_ns["run2"].history
    loader = trainer_batches(32)
    assert h.loss == pytest.approx(manual_losses(reference, loader, 0.2, 4), rel=1e-6)
    assert all(0 <= a <= 1 for a in h.accuracy)  # `outputs` was set: accuracy known
    assert ip.user_ns["x"] == "my x" and "batch" not in ip.user_ns


def test_failing_body_points_at_the_user_line_and_stops_cleanly(ip):
    from jupyter_curvature.models import create

    ip.user_ns["net3"] = net = create("mlp")
    before = copy.deepcopy(net.state_dict())
    body = (
        "outputs = model(x)\nif step == 3:\n    loss = undefined_name\nloss = loss_fn(outputs, y)\n"
    )
    res = ip.run_cell(f"%%curv_train --model net3 --data digits {FAST} --out run3\n{body}")
    assert isinstance(res.error_in_exec, NameError)
    stb = res.error_in_exec._render_traceback_()
    text = "\n".join(stb)
    assert "undefined_name" in text and "line 4" in text  # the cell's line (the magic is line 1)
    assert "tasks/train.py" not in text and "tasks/live.py" not in text  # none of our frames
    assert "magics.py" not in text and "jupyter_curvature/magics/" not in text  # the package
    r = ip.user_ns["run3"]
    assert r.status == "failed" and r.trainer.step == 2 and len(r.history.loss) == 2
    assert "failed at step 3" in magics(ip).last_panel.status.value
    # two SGD steps were applied, the failing third was not
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_body_without_loss_is_a_usage_error(ip):
    with pytest.raises(UsageError, match="must assign a scalar tensor to `loss`"):
        run(ip, f"%%curv_train --model mlp --data digits {FAST}\nz = model(x)\n")


def test_body_that_does_not_compile_is_a_usage_error_naming_the_line(ip):
    with pytest.raises(UsageError, match=r"%curv_train: syntax error in the cell body, line 3"):
        ip.run_cell_magic("curv_train", f"--model mlp --data digits {FAST}",
                          "z = 1\nloss = (\n")  # fmt: skip


def test_keyboard_interrupt_stops_at_a_step_boundary(ip):
    body = "if step == 3:\n    raise KeyboardInterrupt\nloss = loss_fn(model(x), y)\n"
    res = run(ip, f"%%curv_train --model mlp --data digits {FAST} --out run4\n{body}")
    assert res.success
    r = ip.user_ns["run4"]
    assert r.status == "interrupted" and r.trainer.step == 2 and len(r.history.loss) == 2
    assert "interrupted at step 2" in magics(ip).last_panel.status.value


def test_sigint_undoes_the_step_in_progress_then_stops(ip):
    """The kernel's Interrupt (SIGINT) lands in step 2's forward pass: the Trainer undoes that
    step and stops at step 1, the model equal to one hand-made SGD step."""
    from jupyter_curvature.models import create

    torch.manual_seed(0)
    ip.user_ns["net5"] = net = create("mlp")
    reference = copy.deepcopy(net)
    body = (
        "import os, signal\n"
        "if step == 2:\n    os.kill(os.getpid(), signal.SIGINT)\n"
        "loss = loss_fn(model(x), y)\n"
    )
    res = run(ip, f"%%curv_train --model net5 --data digits {FAST} --lr 0.2 --out run5\n{body}")
    assert res.success
    r = ip.user_ns["run5"]
    assert r.status == "interrupted" and r.trainer.step == 1 and len(r.history.loss) == 1
    assert r.history.event_lines()[-1] == (1, "interrupted at step 1")
    manual_losses(reference, trainer_batches(32), 0.2, 1)
    for (k, v), w in zip(net.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=1e-6, atol=1e-7, msg=k)


def test_checkpoints_of_the_magic_resume_a_trainer_bitwise(ip, tmp_path):
    """%%curv_train --checkpoint-dir, then a plain Trainer resumed from the step-4 file:
    bitwise the weights of the uninterrupted 8-step run; --resume continues the same way."""
    from jupyter_curvature.data import digits_dataset
    from jupyter_curvature.models import create
    from jupyter_curvature.training import Trainer

    torch.manual_seed(0)
    ip.user_ns["net6"] = net = create("mlp")
    start = copy.deepcopy(net.state_dict())
    folder = tmp_path / "ck"
    run(
        ip,
        f"%curv_train --model net6 --data digits --steps 8 --batch-size 32 --lr 0.2 "
        f"--momentum 0.9 --checkpoint-dir {folder} --checkpoint-every 4 --out run6",
    )
    texts = [t for _, t in ip.user_ns["run6"].history.event_lines() if t.startswith("checkpoint")]
    assert texts == ["checkpoint checkpoint-000004.pt", "checkpoint checkpoint-000008.pt"]
    assert "checkpoint-000004.pt" in magics(ip).last_panel.events_html.value
    plain = create("mlp")
    plain.load_state_dict(start)
    opt = torch.optim.SGD(plain.parameters(), lr=0.2, momentum=0.9)
    trainer = Trainer(plain, opt, digits_dataset("train"), steps=8, batch_size=32, seed=0)
    trainer.fit(resume=folder / "checkpoint-000004.pt")
    for key, value in net.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value), key
    # the magic itself: 4 steps, then --resume to 8
    torch.manual_seed(0)
    ip.user_ns["net7"] = again = create("mlp")
    again.load_state_dict(start)
    common = "--model net7 --data digits --batch-size 32 --lr 0.2 --momentum 0.9"
    run(ip, f"%curv_train {common} --steps 4 --checkpoint-dir {tmp_path / 'r'}")
    run(ip, f"%curv_train {common} --steps 8 --checkpoint-dir {tmp_path / 'r'} --resume --out r7")
    assert ip.user_ns["r7"].history.steps["step"] == list(range(1, 9))
    for key, value in net.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_swats_switch_appears_in_the_event_log(ip):
    """SWATS told to switch as soon as it may (step 2): the history and the dashboard log it."""
    from jupyter_curvature.models import create
    from jupyter_curvature.optim import SWATS

    torch.manual_seed(0)
    ip.user_ns["net8"] = net = create("mlp")
    ip.user_ns["opt8"] = opt = SWATS(net.parameters(), lr=1e-3, switch_tol=1e9)
    run(ip, f"%curv_train --model net8 --data digits --optimizer opt8 {FAST} --out run8")
    events = [(s, t) for s, t in ip.user_ns["run8"].history.event_lines() if "SWATS" in t]
    group = opt.param_groups[0]
    assert group["phase"] == "sgd"  # switched as soon as allowed: step 2
    assert events == [(2, f"SWATS switched group 0 from Adam to SGD (lr {group['sgd_lr']:.4g})")]
    assert "SWATS switched group" in magics(ip).last_panel.events_html.value


def test_terminal_mode_uses_text_and_no_widgets(ip, capsys):
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    try:
        n = len(_instances)
        run(ip, f"%curv_train --model mlp --data digits {FAST} --spectrum-every 4 --num-iters 5")
        run(ip, "%curv_stats --model mlp --data digits:test --include norms")
        assert len(_instances) == n
        captured = capsys.readouterr()
        assert "step 4: largest hessian eigenvalues" in captured.out  # tqdm.write
        assert "4/4" in captured.err  # the bar
        assert "Weight norms" in captured.out
    finally:
        ip.run_line_magic("config", "CurvMagics.widgets = 'on'")


# ----------------------------------------------------------------------------- %curv_spectrum / %curv_stats
def test_spectrum_magic_stores_the_density_and_shows_a_panel(ip):
    from reference import dense_hessian

    from jupyter_curvature.data import digits_dataset
    from jupyter_curvature.spectral import SpectralDensity

    torch.manual_seed(0)
    ip.user_ns["tiny"] = tiny = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    ds = digits_dataset("train", limit=60)
    x, y = ds.tensors
    y = y % 3
    ip.user_ns["batch60"] = (x, y)
    run(
        ip,
        "%curv_spectrum --model tiny --data batch60 --num-iters 195 --num-probes 2 --top-k 3 --out d --out-eigen e",
    )
    d, e = ip.user_ns["d"], ip.user_ns["e"]
    assert isinstance(d, SpectralDensity) and d.n == 195
    H = dense_hessian(tiny, torch.nn.functional.cross_entropy, x, y).double()
    eig = torch.linalg.eigvalsh(H).flip(0)[:3]
    torch.testing.assert_close(e.eigenvalues.double(), eig, rtol=1e-4, atol=1e-6)
    panel = magics(ip).last_panel
    assert [r[1] for r in panel.top_rows()] == pytest.approx(eig.tolist(), rel=1e-4)
    run(
        ip,
        "%curv_spectrum --model tiny --data batch60 --num-iters 10 --num-probes 1 --params 1.bias --curvature ggn --out d2",
    )
    assert ip.user_ns["d2"].n == 3


def test_spectrum_magic_blocks(ip):
    """``--blocks``: the blocks' top eigenvalues are the dense Hessian's of each block."""
    from reference import dense_hessian

    from jupyter_curvature.data import digits_dataset

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.Tanh(),
                              torch.nn.Linear(4, 3))  # fmt: skip
    ip.user_ns["net2"] = net
    x, y = digits_dataset("train", limit=40).tensors
    ip.user_ns["batch40"] = (x, y % 3)
    run(ip, "%curv_spectrum --model net2 --data batch40 --num-iters 40 --num-probes 1 --blocks 1,3")
    blocks = magics(ip).last_result.blocks
    H = dense_hessian(copy.deepcopy(net).double(), torch.nn.functional.cross_entropy,
                      x.double(), y % 3)  # fmt: skip
    for block, index in zip(blocks.blocks, (slice(0, 260), slice(260, 275))):
        exact = torch.linalg.eigvalsh(H[index, index]).max().item()
        assert block.top_eigenvalue == pytest.approx(exact, rel=1e-4)  # float32 products
    assert blocks.names == ["1", "3"]


def test_stats_magic(ip):
    run(
        ip,
        "%curv_stats --model mlp --data digits:test --num-samples 64 --include evaluation,norms,layers --out st",
    )
    st = ip.user_ns["st"]
    assert st.evaluation.num_samples == 64 and st.gradients is None
    panel = magics(ip).last_panel
    assert panel.tabs.titles == ("Evaluation", "Weight norms", "Per layer")


# ----------------------------------------------------------------------------- lifecycle
def test_rerunning_a_cell_closes_its_previous_panel(ip):
    cell = "%curv_stats --model mlp --data digits:test --num-samples 32 --include norms"
    run(ip, cell)
    first = magics(ip).last_panel
    n = len(_instances)
    run(ip, cell)
    second = magics(ip).last_panel
    assert first is not second and first.closed and not second.closed
    assert len(_instances) == n  # nothing accumulates
    run(ip, "1 + 1")  # another cell leaves it alone
    assert not second.closed


def test_unload_closes_the_panels():
    c = Config()
    c.HistoryAccessor.enabled = False
    shell = InteractiveShell.instance(config=c)
    run(shell, "%curv_stats --model mlp --data digits:test --num-samples 32 --include norms")
    panel = magics(shell).last_panel
    shell.run_line_magic("unload_ext", "jupyter_curvature")
    assert panel.closed
    shell.run_line_magic("load_ext", "jupyter_curvature")
    shell.run_line_magic("config", "CurvMagics.widgets = 'on'")


# ----------------------------------------------------------------------------- %curv_landscape
def test_landscape_uses_the_magics_arguments_or_says_it_is_unavailable(ip, monkeypatch):
    # the magic is CurvMagics' own, with the shared argument machinery and vocabulary
    func = magics(ip).curv_landscape
    for opt in ("--span", "--num-points", "--curvature", "--loss-fn", "--test-data", "--out"):
        assert opt in func.__func__.parser._option_string_actions, opt
    msg = usage_error(ip, "curv_landscape", "--model mlp --data digits --colour red")
    assert msg.startswith("%curv_landscape: unrecognized arguments") and "--num-points" in msg
    import jupyter_curvature.widgets as widgets_pkg

    monkeypatch.setitem(sys.modules, "jupyter_curvature.widgets.landscape", None)
    monkeypatch.delattr(widgets_pkg, "landscape", raising=False)
    msg = usage_error(ip, "curv_landscape", "--model mlp --data digits")
    assert "landscape explorer is not available" in msg


# ----------------------------------------------------------------------------- K-FAC in the cell body
def test_kfac_takes_the_outputs_of_the_one_model_call_in_the_body(ip):
    """The README's example: the body sets only `loss`; K-FAC samples its Fisher from the
    outputs of the body's single model call (no fallback to the empirical Fisher)."""
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="K-FAC used the empirical Fisher")
        run(
            ip,
            "%%curv_train --model mlp --data digits --optimizer kfac --lr 0.05 --steps 3 "
            "--spectrum-every 0 --out kfac_run\nloss = loss_fn(model(x.flatten(1)), y)\n",
        )
    result = ip.user_ns["kfac_run"]
    assert result.status == "completed" and result.trainer.step == 3
    assert result.optimizer.preconditioner.steps == 3  # three K-FAC steps, sampled Fisher each


def test_kfac_with_two_model_calls_and_no_outputs_is_a_clear_error(ip):
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    body = "a = model(x.flatten(1))\nloss = loss_fn(model(x.flatten(1)), y)\n"
    with pytest.raises(UsageError, match="called the model 2 times; set `outputs`"):
        ip.run_cell_magic(
            "curv_train",
            "--model mlp --data digits --optimizer kfac --lr 0.05 --steps 2 --spectrum-every 0",
            body,
        )


@pytest.mark.parametrize("quoted", ['"3.*"', "'3.*'", "3.*"])
def test_quoted_option_values_are_unquoted_as_in_a_shell(ip, quoted):
    """`--params "3.*"` is the pattern 3.*, as in a shell (IPython keeps the quotes)."""
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    run(
        ip,
        f"%curv_spectrum --model mlp --data digits --params {quoted} --num-iters 5 --num-probes 1 --top-k 1 --out d",
    )
    assert ip.user_ns["d"].n == 320 + 10  # the last layer of the registry's mlp: 3.weight, 3.bias


def test_a_trailing_comment_is_dropped_as_in_a_shell(ip):
    """IPython passes `# ...` to a line magic; the magics read the line as a shell would."""
    from jupyter_curvature.magics.arguments import strip_comment

    assert strip_comment("--top-k 2 --out d   # eigenpairs, certified") == "--top-k 2 --out d"
    assert strip_comment("# all a comment") == ""
    assert strip_comment('--params "re:a #b" # c') == '--params "re:a #b"'
    assert strip_comment("--params re:a#b") == "--params re:a#b"
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    run(
        ip,
        "%curv_spectrum --model mlp --data digits --num-iters 5 --num-probes 1 --top-k 1 "
        "--out dc --out-eigen ec      # eigenpairs, certified",
    )
    assert ip.user_ns["ec"].eigenvalues.shape == (1,)
    run(ip, f"%curv_train --model mlp --data digits {FAST} --out tc  # a comment")
    assert ip.user_ns["tc"].trainer.step == 4


def test_spectrum_magic_takes_tol_and_train_magic_takes_schedule(ip):
    """`--tol` and `--schedule` are the tasks' settings (docs/vocabulary.md), as on the CLI."""
    from jupyter_curvature.models import create

    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    run(ip, "%curv_spectrum --model mlp --data digits --num-iters 20 --num-probes 1 --top-k 1 "
            "--tol 0.05 --out-eigen et")  # fmt: skip
    assert ip.user_ns["et"].tol == 0.05
    assert "--tol" in usage_error(ip, "curv_spectrum", "--model mlp --data digits --tol -1")
    ip.user_ns["net_sched"] = create("mlp")
    run(ip, f"%curv_train --model net_sched --data digits {FAST} --out s0")
    assert ip.user_ns["s0"].trainer.scheduler is None  # notebook objects: no schedule
    run(ip, f"%curv_train --model net_sched --data digits {FAST} --schedule linear --out s1")
    assert ip.user_ns["s1"].trainer.scheduler is not None
    msg = usage_error(ip, "curv_train", "--model net_sched --data digits --schedule cosine")
    assert "--schedule" in msg and "linear" in msg


def test_deprecated_flags_print_a_note_and_give_the_new_flags_result(ip, capsys):
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    torch.manual_seed(0)
    ip.user_ns["tiny_old"] = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)
    )
    ip.user_ns["batch_old"] = (torch.randn(30, 4), torch.randint(0, 2, (30,)))
    common = "--model tiny_old --data batch_old"
    run(ip, f"%curv_spectrum {common} --num-iters 10 --num-probes 1 --top-k 2 --curvature ggn "
            "--num-samples 20 --loss-fn cross_entropy --out d_new --out-eigen e_new")  # fmt: skip
    assert "deprecated" not in capsys.readouterr().out
    run(ip, f"%curv_spectrum {common} --iters 10 --probes 1 --top 2 --ggn --samples 20 "
            "--loss cross_entropy --out d_old --out-eigen e_old")  # fmt: skip
    notes = [line for line in capsys.readouterr().out.splitlines() if "deprecated" in line]
    for old, new in [("--iters", "--num-iters 10"), ("--probes", "--num-probes 1"),
                     ("--top", "--top-k 2"), ("--ggn", "--curvature ggn"),
                     ("--samples", "--num-samples 20"), ("--loss", "--loss-fn cross_entropy")]:  # fmt: skip
        assert f"note: %curv_spectrum: {old} is deprecated; use {new}" in notes, notes
    assert len(notes) == 6
    ns = ip.user_ns
    assert torch.equal(ns["d_old"].ritz_values, ns["d_new"].ritz_values)
    assert torch.equal(ns["e_old"].eigenvalues, ns["e_new"].eigenvalues)
    run(
        ip,
        f"%curv_stats {common} --include curvature --batch-size 10 --probes 3 --ggn --out st_old",
    )
    run(
        ip,
        f"%curv_stats {common} --include curvature --batch-size 10 --num-probes 3 --curvature ggn --out st_new",
    )
    assert ns["st_old"].to_dict() == ns["st_new"].to_dict()


def test_an_old_flag_given_with_its_new_one_is_a_usage_error_naming_both(ip, monkeypatch):
    """As on the command line: the magic refuses to choose between them, before any work."""
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    monkeypatch.setattr(api, "spectrum", lambda *a, **kw: pytest.fail("the task ran"))
    ip.user_ns["tiny_both"] = torch.nn.Sequential(torch.nn.Linear(4, 2))
    ip.user_ns["batch_both"] = (torch.randn(10, 4), torch.randint(0, 2, (10,)))
    common = "--model tiny_both --data batch_both"
    for line, new, old in (
        (f"{common} --num-iters 7 --iters 5", "--num-iters", "--iters"),
        (f"{common} --curvature hessian --ggn", "--curvature", "--ggn"),
    ):
        msg = usage_error(ip, "curv_spectrum", line)
        assert f"give {new} only ({old} is its old name)" in msg, msg
    # the new flag given at its default value counts as given
    msg = usage_error(ip, "curv_spectrum", f"{common} --num-iters 80 --iters 5")
    assert "give --num-iters only" in msg


def test_a_tasks_own_setting_is_not_taken_for_an_old_name(ip, capsys):
    """``--spectrum-samples`` is training's setting; elsewhere ``spectrum_samples`` is an old
    spelling of ``num_samples``. Training with its default printed a deprecation note."""
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    flags = "--spectrum-every 4 --num-iters 3 --num-probes 1 --spectrum-samples 40"
    run(ip, f"%curv_train --model mlp --data digits {FAST} {flags} --out own\n")
    assert "deprecated" not in capsys.readouterr().out
    checks = ip.user_ns["own"].history.curvature
    assert checks and all(r["spectrum_samples"] == 40 for r in checks)


def test_train_magic_logs_to_tensorboard(ip, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(ip, f"%curv_train --model mlp --data digits {FAST} --tensorboard {tmp_path} --out tbrun")
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    assert [e.value for e in losses] == pytest.approx(ip.user_ns["tbrun"].history.loss, rel=1e-6)


# ----------------------------------------------------------------------------- audit fixes
def small_net_and_loader(ip, n=400, batch=100):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    x, y = torch.randn(n, 64), torch.randint(0, 10, (n,))
    loader = [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]
    ip.user_ns.update(net=net, loader=loader)
    return net, loader


def test_a_train_that_fails_before_its_first_step_leaves_out_alone(ip):
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    small_net_and_loader(ip)
    ip.run_line_magic("curv_train", "--model net --data loader --steps 2 --out run")
    kept = ip.user_ns["run"]
    bad_numbers = (("--momentum -1", "--momentum"), ("--momentum 1.5", "--momentum must be below 1"),
                   ("--weight-decay -1", "--weight-decay"))  # fmt: skip
    for bad, flag in bad_numbers:
        msg = usage_error(ip, "curv_train", f"--model net --data loader --steps 2 --out run {bad}")
        assert flag in msg
        assert ip.user_ns["run"] is kept
    # a setting refused by the task (after parsing) keeps --out too
    msg = usage_error(ip, "curv_train", "--model net --data loader --optimizer bogus --out run")
    assert ip.user_ns["run"] is kept
    # the task checks the numbers too (the CLI and the Python API share it)
    with pytest.raises(api.InputError, match="--momentum must be >= 0"):
        api.resolve_optimizer("sgd", ip.user_ns["net"], momentum=-1.0)


def test_a_failed_train_closes_its_empty_dashboard(ip):
    ip.run_line_magic("config", "CurvMagics.widgets = 'on'")
    small_net_and_loader(ip)
    usage_error(ip, "curv_train", "--model net --data loader --optimizer bogus --steps 2")
    dashboard = magics(ip).last_panel
    assert type(dashboard).__name__ == "TrainingDashboard" and dashboard.closed


def test_out_eigen_needs_top_k_and_is_never_set_to_none(ip, monkeypatch, capsys):
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    small_net_and_loader(ip)
    ip.user_ns["top"] = "KEEP"
    line = "--model net --data loader --num-iters 5 --num-probes 1 --out d --out-eigen top"
    msg = usage_error(ip, "curv_spectrum", line)
    assert "--out-eigen top needs --top-k" in msg
    assert ip.user_ns["top"] == "KEEP"
    # stopped in the density phase (after the eigenpairs were asked): no eigenpairs, so the
    # variable keeps its value; the density is stored
    from types import SimpleNamespace

    density = SimpleNamespace(stats="stats")
    partial = SimpleNamespace(
        density=density, eigen=None, blocks=None, curvature="hessian", num_params=1,
        basis_summary=lambda: "basis",
    )  # fmt: skip
    monkeypatch.setattr(magics(ip), "_run_task", lambda *a, **k: (partial, None))
    ip.run_line_magic("curv_spectrum", line + " --top-k 5")
    assert ip.user_ns["top"] == "KEEP" and ip.user_ns["d"] is density
    assert "top is unchanged" in capsys.readouterr().out


def test_engine_errors_are_usage_errors_in_every_magic(ip):
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    net, _ = small_net_and_loader(ip)
    ip.user_ns["small"] = [(torch.randn(40, 64), torch.randint(0, 10, (40,)))]
    spec = "--model net --data loader --num-iters 5 --num-probes 1"
    assert "nosuch" in usage_error(ip, "curv_spectrum", f"{spec} --blocks nosuch")
    stats = "--model net --data loader --num-probes 2"
    assert "nosuch" in usage_error(ip, "curv_stats", f"{stats} --layers nosuch")
    assert "batch_size" in usage_error(ip, "curv_stats", f"{stats} --batch-size 1000")
    # --loss-fn mse is squared error to one-hot targets, for the Hessian and the GGN alike
    ip.run_line_magic("curv_stats", f"{stats} --curvature ggn --loss-fn mse --out st")
    assert ip.user_ns["st"].curvatures["ggn"] is not None
    for magic, line in (
        ("curv_spectrum", spec),
        ("curv_stats", stats),
        ("curv_landscape", "--model net --data loader --num-points 3"),
        ("curv_train", "--model net --data loader --steps 1"),
    ):
        assert "--seed" in usage_error(ip, magic, f"{line} --seed -1")
    # the default --batch-size fits data of fewer than 128 samples (two batches of 20)
    ip.run_line_magic("curv_stats", "--model net --data small --num-probes 2 --out st")
    assert ip.user_ns["st"].gradients.batch_size == 20


def test_a_frozen_parameter_chosen_with_params_works_in_the_curvature_magics(ip):
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    net, _ = small_net_and_loader(ip)
    net[0].bias.requires_grad_(False)
    ip.run_line_magic(
        "curv_spectrum",
        "--model net --data loader --num-iters 5 --num-probes 1 --params 0 --top-k 1 --out d",
    )
    assert ip.user_ns["d"].n == 64 * 16 + 16
    assert net[0].bias.requires_grad is False


def test_an_optimizer_object_is_checked_against_the_flags_and_the_model(ip):
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    net, _ = small_net_and_loader(ip)
    ip.user_ns["opt"] = torch.optim.SGD(net.parameters(), lr=0.01)
    ip.user_ns["opt_other"] = torch.optim.SGD(torch.nn.Linear(3, 3).parameters(), lr=0.1)
    line = "--model net --data loader --steps 1 --optimizer"
    msg = usage_error(ip, "curv_train", f"{line} opt --lr 0.5 --momentum 0.9")
    assert "--lr, --momentum would be ignored" in msg
    msg = usage_error(ip, "curv_train", f"{line} opt_other")
    assert "holds none of the model's parameters" in msg
    msg = usage_error(ip, "curv_train", f"{line} adam --momentum 0.9")
    assert "--momentum is for sgd and kfac" in msg
    ip.run_line_magic("curv_train", f"{line} opt --out r")
    assert ip.user_ns["r"].optimizer is ip.user_ns["opt"]


def test_seed_gives_the_weights_of_a_registry_model(ip):
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    weights = []
    for seed in (0, 0, 1):
        torch.manual_seed(100 + len(weights))  # the global state differs between runs
        ip.run_line_magic(
            "curv_train", f"--model mlp --data digits --steps 1 --seed {seed} --out r"
        )
        weights.append(next(ip.user_ns["r"].model.parameters()).detach().clone())
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    losses = []
    for _ in range(2):
        torch.manual_seed(len(losses) + 7)
        ip.run_line_magic(
            "curv_landscape",
            "--model mlp --data digits --num-points 3 --directions random:1 --seed 0 --out ex",
        )
        losses.append(ip.user_ns["ex"].line.train_loss.copy())
    assert (losses[0] == losses[1]).all()


def test_checkpoint_dir_and_tensorboard_on_a_file_are_refused_before_training(ip, tmp_path):
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    net, loader = small_net_and_loader(ip)
    before = copy.deepcopy(net.state_dict())
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for flag in ("--checkpoint-dir", "--tensorboard"):
        for path in (afile, afile / "under"):
            msg = usage_error(
                ip, "curv_train", f"--model net --data loader --steps 2 {flag} {path}"
            )
            assert flag in msg and "not a folder" in msg
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert afile.read_text() == "mine"
    with pytest.raises(api.InputError, match="--checkpoint-dir"):  # the CLI's path too
        api.train(net, loader, steps=1, checkpoint_dir=afile)


def test_landscape_without_widgets_prints_numbers(ip, capsys):
    ip.run_line_magic("config", "CurvMagics.widgets = 'off'")
    small_net_and_loader(ip)
    ip.run_line_magic(
        "curv_landscape", "--model net --data loader --num-points 5 --directions top:2 --out ex"
    )
    out = capsys.readouterr().out
    assert "loss at the origin" in out and "eigenvalue" in out and "plane of the first two" in out
    result = ip.user_ns["ex"]
    assert type(result).__name__ == "LandscapeTaskResult" and result.plane is not None
    eigenvalues = [d["eigenvalue"] for d in result.line.directions]
    assert eigenvalues[0] >= eigenvalues[1] and f"{eigenvalues[0]:.6g}" in out
    # more eigen-directions than Lanczos can give: refused before computing any
    msg = usage_error(ip, "curv_landscape", "--model net --data loader --directions top:2000")
    assert "of 1210 parameters; ask for at most 1209" in msg


def test_the_magics_work_without_ipywidgets(tmp_path):
    import subprocess

    script = tmp_path / "noipw.py"
    script.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ipywidgets', 'bqplot', 'anywidget'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        "shell.run_line_magic('load_ext', 'jupyter_curvature')\n"
        "shell.run_line_magic('curv_stats', '--model mlp --data digits --include norms')\n"
        "shell.run_line_magic('curv_landscape', '--model mlp --data digits --num-points 3 "
        "--directions random:1')\n"
        "assert 'ipywidgets' not in sys.modules\n"
        "print('DONE')\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DONE" in done.stdout and "loss at the origin" in done.stdout
