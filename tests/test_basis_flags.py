"""The Lanczos-basis settings from the front ends: ``--memory-budget``, ``--basis-dtype``,
``--basis-device`` and ``--reorthogonalize`` (CLI, ``%curv_spectrum``, ``tasks.spectrum``).

Each flag is checked to reach the engine against an independent computation (the dense
float64 ``torch.func`` Hessian), the chosen mode to be recorded in the result, its JSON and
the printed summary, and bad values to be refused before any work.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from reference import concat, dense_hessian
from torch import nn
from traitlets.config import Config

import jupyter_curvature.spectral as spectral
import jupyter_curvature.tasks as tasks
from jupyter_curvature.cli import main
from jupyter_curvature.core.sizes import parse_bytes
from jupyter_curvature.spectral import EigenpairsResult, SpectralDensity
from jupyter_curvature.spectral.lanczos import start_vectors
from jupyter_curvature.spectral.memory import density_bytes, eigenpairs_bytes

# bqplot's scales (the panel) warn on import with the installed traitlets, as in test_magics
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: unit roundoff of float32 (half its machine epsilon)
U32 = torch.finfo(torch.float32).eps / 2
#: the digits MLP of the CLI tests, in float64 (2,410 parameters)
SETUP = ["--model", "mlp", "--num-samples", "48", "--batch-size", "20", "--dtype", "float64"]


@pytest.fixture(scope="module")
def mlp():
    """The model and data ``SETUP`` gives the CLI, and their dense float64 Hessian."""
    setup = tasks.resolve_setup("mlp", "digits", num_samples=48, batch_size=20,
                                dtype="float64", seed=0)  # fmt: skip
    x, y = concat(setup.data)
    H = dense_hessian(setup.model, nn.CrossEntropyLoss(), x.double(), y).detach()
    return setup, H, torch.linalg.eigvalsh(H).flip(0)


def float32_bound(scale: float, m: int) -> float:
    """What a float32 basis adds to a certified residual (``verify="stored"``).

    The reported residual is ``||(A Q) s - theta Q s||`` from the stored float32 columns:
    each stored product ``A q_j`` is rounded (``|delta_j| <= u |A q_j|``), so ``(A Q) s`` is
    off by at most ``u ||A|| ||s||_1 <= u sqrt(m) ||A||`` for a unit ``s`` of ``m`` entries;
    the two combinations ``(A Q) s`` and ``Q s`` are each rounded once more to float32 (``u
    ||A||``, and ``u |theta|`` through ``theta Q s``), and the returned vector is the rounded
    ``Q s`` (``||A eps|| <= u ||A||``, and ``u`` in its norm). By Krylov-Weinstein, some
    eigenvalue lies within the true residual ``||A y - theta y|| / ||y||`` of ``theta``.
    """
    return (math.sqrt(m) + 4) * U32 * scale


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize(
    "text, expected",
    [("8GB", 8e9), ("8 gb", 8e9), ("512MiB", 512 * 2**20), ("1.5GiB", 1.5 * 2**30),
     ("8e9", 8e9), ("8000000000", 8e9), ("100kB", 1e5), ("2TiB", 2 * 2**40), ("12B", 12)],
)  # fmt: skip
def test_sizes_are_read_as_the_units_say(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["8XB", "8 G", "GB", "", "-1GB", "0", "1e999", "eight"])
def test_a_bad_size_names_the_accepted_forms(text):
    with pytest.raises(ValueError, match=r"8GB, 512MB \(powers of 1000\), 512MiB"):
        parse_bytes(text)


def test_the_command_line_parser_reads_sizes_without_torch():
    """``--memory-budget`` is parsed by ``core.sizes`` (plain Python): ``jupyter-curvature
    --help`` and a bad size stay quick, with no torch import."""
    import subprocess
    import sys

    code = (
        "import sys; from jupyter_curvature.cli import build_parser; "
        "a = build_parser().parse_args(['spectrum', '--memory-budget', '512MiB']); "
        "assert a.memory_budget == 2**29; assert 'torch' not in sys.modules, 'torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_engine_takes_a_size_as_its_budget(mlp):
    setup, H, _ = mlp
    op = tasks.make_operator(setup.model, nn.CrossEntropyLoss(), setup.data)
    n = H.shape[0]
    f64 = density_bytes(n, 10, 2, torch.float64)
    text = f"{f64 - 1}B"  # one byte short of the float64 basis: float32 is chosen
    d = spectral.spectral_density(op, 10, 2, memory_budget=text)
    assert d.basis["dtype"] == "float32" and d.basis["memory_budget"] == f64 - 1
    assert spectral.spectral_density(op, 10, 2, memory_budget=f64).basis["dtype"] == "float64"


# ----------------------------------------------------------------------------- the CLI
def test_cli_float32_basis_eigenvalues_equal_the_dense_hessian(mlp, tmp_path, capsys):
    setup, H, exact = mlp
    tol = 1e-6
    code = main(["spectrum", *SETUP, "--num-iters", "30", "--num-probes", "2", "--top-k", "3",
                 "--tol", str(tol), "--basis-dtype", "float32", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "hessian_spectrum.json").read_text())
    for run in ("density", "eigenpairs"):
        rec = summary["basis"][run]
        mode = (rec["dtype"], rec["device"], rec["pinned"], rec["reorthogonalize"])
        assert mode == ("float32", "cpu", False, "full"), run
        assert rec["memory_budget"] is None
    assert summary["top_converged"] is True
    scale = float(exact.abs().max())
    m = min(H.shape[0], 100)  # eigenpairs' default max_basis for k = 3
    got = torch.tensor(summary["top_eigenvalues"], dtype=torch.float64)
    residuals = torch.tensor(summary["top_residuals"], dtype=torch.float64)
    assert (residuals <= tol * scale * (1 + 1e-9)).all()
    assert ((got - exact[:3]).abs() <= residuals + float32_bound(scale, m)).all()
    out = capsys.readouterr().out
    assert "Lanczos vectors: density: float32 basis on cpu" in out
    assert "eigenpairs: float32 basis on cpu" in out
    assert out.count("Lanczos vectors") == 1  # one line for both runs, not one per result
    # the saved density keeps its record
    saved = SpectralDensity.load(tmp_path / "hessian_density.npz")
    assert saved.basis == summary["basis"]["density"]


def test_cli_density_without_a_basis_keeps_the_dense_moments(mlp, tmp_path):
    """``--reorthogonalize none``: each probe's quadrature of ``x^j`` is ``q_0^T H^j q_0``
    for ``j < 2m`` (Gauss quadrature, kept to working accuracy by the plain recurrence:
    Greenbaum 1989; the engine's bound, tests/test_spectral_memory.py), so the trace is the
    Hutchinson estimate ``mean_l z_l^T H z_l`` of the same probes; checked with the dense H."""
    setup, H, exact = mlp
    m, p, seed = 30, 2, 0  # --seed seeds the model and the subset too: the fixture's 0
    code = main(["spectrum", *SETUP, "--num-iters", str(m), "--num-probes", str(p), "--top-k",
                 "0", "--reorthogonalize", "none", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "hessian_spectrum.json").read_text())
    rec = summary["basis"]["density"]
    assert rec["reorthogonalize"] == "none" and rec["dtype"] == "float64"
    assert summary["basis"]["eigenpairs"] is None
    d = SpectralDensity.load(tmp_path / "hessian_density.npz")
    n, scale = H.shape[0], float(exact.abs().max())
    z = start_vectors(n, p, seed)
    q = z / z.norm(dim=0)
    Aj = q.clone()
    for j in range(2 * m):
        quadrature = (d.weights * (d.ritz_values / scale) ** j).sum(-1)
        assert (quadrature - (q * Aj).sum(0)).abs().max() <= 1e-10, j
        Aj = H @ Aj / scale
    hutchinson = float((z * (H @ z)).sum(0).mean())
    assert abs(summary["stats"]["trace"] - hutchinson) <= 1e-10 * n * scale


def test_cli_budget_picks_the_basis_and_records_it(mlp, tmp_path, capsys):
    setup, H, _ = mlp
    n = H.shape[0]
    f64 = density_bytes(n, 10, 1, torch.float64)
    code = main(["spectrum", *SETUP, "--num-iters", "10", "--num-probes", "1", "--top-k", "0",
                 "--memory-budget", f"{f64 - 1}", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    rec = json.loads((tmp_path / "hessian_spectrum.json").read_text())["basis"]["density"]
    assert rec["dtype"] == "float32" and rec["memory_budget"] == f64 - 1
    assert rec["device_bytes"] == density_bytes(n, 10, 1, torch.float32, op_dtype=torch.float64)
    out = capsys.readouterr().out
    assert (
        "Lanczos vectors: density: float32 basis on cpu" in out
        and out.count("Lanczos vectors") == 1
    )


def test_cli_budget_too_small_is_the_engines_error_before_any_product(
    mlp, tmp_path, capsys, monkeypatch
):
    """A budget that holds the density's basis but not the eigenpairs' fails before the
    density runs: the eigenpairs' basis is checked first too."""
    setup, H, _ = mlp
    n = H.shape[0]
    fits_density = density_bytes(n, 10, 1, torch.float64)
    assert fits_density < eigenpairs_bytes(n, 3, 100, "stored", torch.float32)

    def no_product(*args, **kwargs):
        raise AssertionError("a product ran before the budget was checked")

    monkeypatch.setattr(spectral, "spectral_density", no_product)
    base = ["spectrum", *SETUP, "--num-iters", "10", "--num-probes", "1", "--out", str(tmp_path)]
    for argv, what in (
        ([*base, "--top-k", "3", "--memory-budget", str(fits_density)], "the top 3 eigenpairs"),
        ([*base, "--top-k", "0", "--memory-budget", "1kB"], "the density"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        # the engine's keyword is shown as the flag (cli.py), with the budget as given
        size = err.split(f"({what}): --memory-budget ")[1].split(" cannot")[0]
        assert err.startswith(f"jupyter-curvature spectrum: error: --memory-budget {size} ({what})")
        assert "memory_budget" not in err and "float32 basis on cpu" in err
    assert not (tmp_path / "hessian_spectrum.json").exists()


def test_cli_blocks_are_checked_against_the_budget_before_any_product(
    mlp, tmp_path, capsys, monkeypatch
):
    """``--blocks`` under ``--memory-budget``: the per-block spectra's Lanczos vectors (their
    memory model, ``blocks_bytes``) are checked with the density's, before any product; a
    budget that holds them picks their dtype, recorded in the blocks' JSON."""
    setup, H, _ = mlp
    n = H.shape[0]
    sizes = [p.numel() for p in setup.model.parameters()]
    model_blocks = [sizes[i] + sizes[i + 1] for i in range(0, len(sizes), 2)]  # weight, bias
    f32_density = density_bytes(n, 10, 1, torch.float32, op_dtype=torch.float64)
    # the GGN's block product spreads its column over one per block: more than the density
    f32_blocks = spectral.memory.blocks_bytes(model_blocks, 10, 1, torch.float32,
                                              torch.float64, spreads=True)  # fmt: skip
    assert f32_blocks > f32_density
    base = ["spectrum", *SETUP, "--curvature", "ggn", "--num-iters", "10", "--num-probes", "1",
            "--top-k", "0", "--blocks", "--out", str(tmp_path)]  # fmt: skip

    def no_product(*args, **kwargs):
        raise AssertionError("a product ran before the budget was checked")

    with monkeypatch.context() as patch:
        patch.setattr(spectral, "spectral_density", no_product)
        with pytest.raises(SystemExit) as exit_info:
            main([*base, "--memory-budget", str(f32_density)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(the per-block spectra): --memory-budget " in err, err
    f64_blocks = spectral.memory.blocks_bytes(model_blocks, 10, 1, torch.float64, spreads=True)
    budget = max(f32_blocks, density_bytes(n, 10, 1, torch.float64))
    assert budget < f64_blocks  # float64 fits the density, only float32 the blocks
    assert main([*base, "--memory-budget", str(budget)]) == 0
    saved = json.loads((tmp_path / "ggn_blocks.json").read_text())
    assert saved["basis"]["dtype"] == "float32" and saved["basis"]["device_bytes"] == f32_blocks
    spectrum = json.loads((tmp_path / "ggn_spectrum.json").read_text())
    assert spectrum["basis"]["density"]["dtype"] == "float64"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--memory-budget", "8XB"], "argument --memory-budget: '8XB' is not a size"),
        (["--memory-budget", "0"], "argument --memory-budget: '0' is not a positive size"),
        (["--basis-dtype", "float16"], "argument --basis-dtype: invalid choice: 'float16'"),
        (["--reorthogonalize", "partial"], "argument --reorthogonalize: invalid choice"),
    ],
)
def test_cli_bad_values_are_refused_when_parsed(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["spectrum", *flags])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in last
    if "memory-budget" in message:
        assert "8GB, 512MB (powers of 1000), 512MiB" in last


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--reorthogonalize", "none"],  # the CLI's default --top-k is 5
         "--reorthogonalize none keeps no Lanczos basis and gives the density only, but "
         "--top-k 5 (eigenpairs) needs a stored basis: pass --top-k 0"),
        (["--reorthogonalize", "none", "--top-k", "0", "--blocks"],
         "--blocks (per-block spectra) needs a stored basis: drop --blocks"),
        (["--basis-device", "gpu9"], "--basis-device 'gpu9' is not a device name"),
    ],
)  # fmt: skip
def test_cli_a_setting_the_request_cannot_use_fails_before_any_work(
    flags, message, capsys, monkeypatch
):
    def no_setup(*args, **kwargs):
        raise AssertionError("the model and data were resolved before the settings were checked")

    monkeypatch.setattr(tasks, "resolve_setup", no_setup)
    with pytest.raises(SystemExit) as exit_info:
        main(["spectrum", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cli_a_cuda_basis_without_a_gpu_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["spectrum", "--basis-device", "cuda"])
    assert (
        "--basis-device cuda: no CUDA GPU is available on this machine; use --basis-device cpu"
        in capsys.readouterr().err
    )


# ----------------------------------------------------------------------------- tasks.spectrum
def test_task_float32_basis_pairs_are_certified_by_the_dense_hessian(mlp):
    """The returned float32-basis eigenvectors: by Krylov-Weinstein each eigenvalue lies
    within its true residual (recomputed with the dense H) of the exact one, and that
    residual is the certificate plus at most the float32 rounding of :func:`float32_bound`."""
    setup, H, exact = mlp
    tol = 1e-6
    r = tasks.spectrum(setup.model, setup.data, num_iters=10, num_probes=1, top_k=3, tol=tol,
                       basis_dtype="float32")  # fmt: skip
    assert r.eigen.basis["dtype"] == "float32" and r.density.basis["dtype"] == "float32"
    assert r.eigen.converged
    V = r.eigen.eigenvectors.double()
    V = V / V.norm(dim=0)
    true = (H @ V - V * r.eigen.eigenvalues).norm(dim=0)
    scale = float(exact.abs().max())
    slack = H.shape[0] * torch.finfo(torch.float64).eps * scale  # this check's own rounding
    assert ((r.eigen.eigenvalues - exact[:3]).abs() <= true + slack).all()
    assert (true <= r.eigen.residuals + float32_bound(scale, min(H.shape[0], 100))).all()


def test_task_takes_the_engines_names_and_checks_them(mlp):
    setup, _, _ = mlp
    r = tasks.spectrum(setup.model, setup.data, num_iters=5, num_probes=1,
                       memory_budget="10MB", reorthogonalize="none",
                       basis_dtype=torch.float32)  # fmt: skip
    assert r.basis["density"]["mode"] == 'reorthogonalize="none" (float32)'
    assert r.basis["density"]["memory_budget"] == 1e7 and r.basis["eigenpairs"] is None
    assert r.to_dict()["basis"] == r.basis
    with pytest.raises(tasks.InputError, match="--memory-budget: memory_budget must be"):
        tasks.spectrum(setup.model, setup.data, memory_budget=-1)
    with pytest.raises(tasks.InputError, match="--basis-dtype 'float16': choose float64"):
        tasks.spectrum(setup.model, setup.data, basis_dtype="float16")
    with pytest.raises(tasks.InputError, match="--reorthogonalize 'partial': choose full"):
        tasks.spectrum(setup.model, setup.data, reorthogonalize="partial")
    with pytest.raises(tasks.InputError, match="--top-k 2 .* pass --top-k 0"):
        tasks.spectrum(setup.model, setup.data, top_k=2, reorthogonalize="none")


def test_results_keep_their_basis_record_when_saved(mlp, tmp_path):
    setup, _, _ = mlp
    op = tasks.make_operator(setup.model, nn.CrossEntropyLoss(), setup.data)
    d = spectral.spectral_density(op, 5, 1, basis_dtype=torch.float32)
    for name in ("d.json", "d.npz"):
        assert SpectralDensity.load(d.save(tmp_path / name)).basis == d.basis
    e = spectral.eigenpairs(op, k=1, tol=1e-2, max_basis=20)
    assert e.basis["dtype"] == "float64" and e.basis["device_bytes"] == eigenpairs_bytes(
        op.shape[0], 1, 20, "stored", torch.float64
    )
    assert EigenpairsResult.load(e.save(tmp_path / "e.npz")).basis == e.basis
    assert "Lanczos vectors: float64 basis on cpu" in repr(e)


# ----------------------------------------------------------------------------- %curv_spectrum
@pytest.fixture(scope="module")
def ip():
    c = Config()
    c.HistoryAccessor.enabled = False  # no sqlite history, no fd leak
    shell = InteractiveShell.instance(config=c)
    shell.run_line_magic("load_ext", "jupyter_curvature")
    shell.run_line_magic("config", "CurvMagics.widgets = 'off'")
    yield shell
    shell.run_line_magic("unload_ext", "jupyter_curvature")


def magic_error(ip, line: str) -> str:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("curv_spectrum", line)
    msg = str(info.value)
    assert "\n" not in msg, f"not a one-line message: {msg!r}"
    return msg


def test_magic_flags_reach_the_engine_and_print_the_mode(ip, mlp, capsys):
    from jupyter_curvature.magics import CurvMagics

    setup, H, exact = mlp
    ip.user_ns.update(net64=setup.model, data48=setup.data)
    ip.run_line_magic(
        "curv_spectrum",
        "--model net64 --data data48 --num-iters 10 --num-probes 1 --top-k 2 "
        "--basis-dtype float32 --out dm --out-eigen em",
    )
    e = ip.user_ns["em"]
    assert e.basis["dtype"] == "float32" and ip.user_ns["dm"].basis["dtype"] == "float32"
    scale = float(exact.abs().max())
    bound = e.residuals + float32_bound(scale, min(H.shape[0], 100))
    assert e.converged and ((e.eigenvalues - exact[:2]).abs() <= bound).all()
    out = capsys.readouterr().out
    assert (
        "Lanczos vectors: density: float32 basis on cpu" in out
        and out.count("Lanczos vectors") == 1
    )
    ip.run_line_magic("curv_spectrum", "--model net64 --data data48 --num-iters 5 "
                      "--num-probes 1 --reorthogonalize none --memory-budget 1MiB --out dn")  # fmt: skip
    rec = ip.user_ns["dn"].basis
    assert rec["reorthogonalize"] == "none" and rec["memory_budget"] == 2**20
    magics = next(c for c in ip.configurables if isinstance(c, CurvMagics))
    assert magics.last_result.to_dict()["basis"]["density"] == rec


def test_magic_bad_values_are_one_line_usage_errors(ip, mlp, monkeypatch):
    setup, _, _ = mlp
    ip.user_ns.update(net64=setup.model, data48=setup.data)
    msg = magic_error(ip, "--model net64 --data data48 --memory-budget 8XB")
    assert "argument --memory-budget: '8XB' is not a size" in msg and "512MiB" in msg
    msg = magic_error(ip, "--model net64 --data data48 --basis-dtype half")
    assert "--basis-dtype" in msg
    monkeypatch.setattr(tasks, "spectrum", lambda **kw: pytest.fail("the task ran"))
    msg = magic_error(ip, "--model net64 --data data48 --top-k 2 --reorthogonalize none")
    assert "--top-k 2 (eigenpairs) needs a stored basis: pass --top-k 0" in msg
    monkeypatch.undo()
    msg = magic_error(ip, "--model net64 --data data48 --num-iters 5 --memory-budget 1kB")
    assert "--memory-budget 1 kB (the density): memory_budget=1 kB cannot hold" in msg


def test_the_panel_shows_the_basis(mlp):
    from jupyter_curvature.widgets.spectrum import SpectrumPanel

    setup, _, _ = mlp
    r = tasks.spectrum(setup.model, setup.data, num_iters=5, num_probes=1, basis_dtype="float32")
    panel = SpectrumPanel(r)
    try:
        assert dict((row[0], row[1]) for row in panel.stats_rows())["Lanczos vectors"] == (
            "float32 basis on cpu"
        )
    finally:
        panel.close()


# ------------------------------------------------------------ no budget: the memory free now
@pytest.fixture()
def free_bytes(monkeypatch):
    """Set what the memory model reads as the memory free on the operator's device."""
    import importlib

    memory = importlib.import_module("jupyter_curvature.spectral.memory")

    def set_free(value: int) -> None:
        monkeypatch.setattr(memory, "free_memory", lambda device: value)

    return set_free


def test_no_budget_falls_back_to_float32_when_float64_does_not_fit(mlp, free_bytes):
    setup, H, exact = mlp
    op = tasks.make_operator(setup.model, nn.CrossEntropyLoss(), setup.data)
    n = H.shape[0]
    free_bytes(density_bytes(n, 12, 2, torch.float64, op_dtype=torch.float64) - 1)
    with pytest.warns(spectral.memory.MemoryWarning, match="using the float32 basis on cpu"):
        d = spectral.spectral_density(op, 12, 2)
    assert d.basis["dtype"] == "float32" and d.basis["memory_budget"] is None
    # it is the float32-basis run, bit for bit (whose accuracy against the dense Hessian is
    # checked above); and no smaller mode was taken than needed
    d32 = spectral.spectral_density(op, 12, 2, basis_dtype=torch.float32)
    assert torch.equal(d.ritz_values, d32.ritz_values) and torch.equal(d.weights, d32.weights)


def test_no_budget_refuses_a_run_that_fits_no_mode_before_any_product(mlp, free_bytes):
    setup, H, _ = mlp
    op = tasks.make_operator(setup.model, nn.CrossEntropyLoss(), setup.data)
    free_bytes(1000)
    with pytest.raises(ValueError, match=r"the 1 kB free on cpu cannot hold float64 basis") as e:
        spectral.spectral_density(op, 12, 2)
    assert "none of them fits: free some memory" in str(e.value)
    with pytest.raises(ValueError, match="free on cpu cannot hold"):
        spectral.eigenpairs(op, k=2)
    assert op.num_matvecs == 0


def test_no_budget_keeps_an_explicit_dtype_with_a_warning(mlp, free_bytes):
    setup, H, _ = mlp
    op = tasks.make_operator(setup.model, nn.CrossEntropyLoss(), setup.data)
    free_bytes(1000)
    with pytest.warns(spectral.memory.MemoryWarning, match="may be stopped for memory"):
        d = spectral.spectral_density(op, 6, 1, basis_dtype=torch.float64)
    assert d.basis["dtype"] == "float64"


def test_no_budget_and_only_the_device_given_still_falls_back_to_float32(mlp, free_bytes):
    """``basis_device`` alone fixes where, not the dtype: float32 there when float64 does not
    fit (only a setting the caller made is kept at their risk)."""
    setup, H, _ = mlp
    op = tasks.make_operator(setup.model, nn.CrossEntropyLoss(), setup.data)
    free_bytes(density_bytes(H.shape[0], 12, 2, torch.float64, op_dtype=torch.float64) - 1)
    with pytest.warns(spectral.memory.MemoryWarning, match="using the float32 basis on cpu"):
        d = spectral.spectral_density(op, 12, 2, basis_device="cpu")
    assert d.basis["dtype"] == "float32" and d.basis["device"] == "cpu"


def test_no_budget_and_room_enough_chooses_float64_silently(mlp, free_bytes, recwarn):
    setup, H, _ = mlp
    op = tasks.make_operator(setup.model, nn.CrossEntropyLoss(), setup.data)
    n = H.shape[0]
    free_bytes(density_bytes(n, 12, 2, torch.float64, op_dtype=torch.float64))
    assert spectral.spectral_density(op, 12, 2).basis["dtype"] == "float64"
    assert not [w for w in recwarn if issubclass(w.category, spectral.memory.MemoryWarning)]
