"""The finish of the notebook output (issue 16, item 4): warnings, titles, counts, ranges, notes."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from jupyter_curvature import tasks
from jupyter_curvature.plotting import curvature_label, format_count, plot_spectral_density
from jupyter_curvature.spectral import spectral_density


def test_no_dependency_warning_when_the_package_runs_a_spectrum():
    code = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            import jupyter_curvature as jc
            from jupyter_curvature import tasks
            tasks.spectrum("mlp", "digits", num_iters=3, num_probes=1, top_k=1, num_samples=40)
            tasks.statistics("mlp", "digits", num_samples=64, batch_size=32, include=["curvature"])
        bad = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, UserWarning))]
        print(repr(bad))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_titles_name_the_curvature_with_capitals():
    assert curvature_label("hessian") == "Hessian" and curvature_label("ggn") == "GGN"
    r = tasks.spectrum("mlp", "digits", num_iters=4, num_probes=1, num_samples=40)
    assert r.plot().get_title() == "Hessian spectral density"
    from jupyter_curvature.widgets.dashboard import TrainingDashboard  # noqa: F401  (imports)

    st = tasks.statistics("mlp", "digits", num_samples=64, include=["layers"])
    assert st.plot().get_ylabel() == "largest Hessian eigenvalue"


def test_counts_are_integers_with_their_standard_error():
    assert format_count(1169.99, 41.3) == "≈ 1170 ± 41"
    assert format_count(1169.99, 0.0) == "1170"  # no spread: exact
    assert format_count(1169.99, math.nan) == "≈ 1170"  # one probe
    # A rotated diagonal: on a diagonal matrix every Rademacher probe has the same weights
    # (1/n on each eigenvector), so the probes agree but for rounding and the spread is 0 or
    # 1e-15 by the CPU's kernels; rotated, each probe weighs the eigenvectors differently.
    Q, _ = torch.linalg.qr(torch.randn(101, 101, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(0)))  # fmt: skip
    A = Q @ torch.diag(torch.linspace(-1, 1, 101, dtype=torch.float64)) @ Q.T
    d = spectral_density((A + A.T) / 2, num_iters=30, num_probes=4)
    st = d.stats
    theta, tau = d.ritz_values.numpy(), d.weights.numpy()
    per_probe = 101 * np.where(theta < -st.scale * d.zero_tol, tau, 0).sum(1)
    assert st.negative_count_stderr == pytest.approx(per_probe.std(ddof=1) / 2, rel=1e-12)
    pytest.importorskip("bqplot")
    from jupyter_curvature.widgets import SpectrumPanel

    with SpectrumPanel(d) as panel:
        row = dict((r[0], r[1]) for r in panel.stats_rows())["negative count"]
        assert row == format_count(st.negative_count, st.negative_count_stderr)
        assert row.startswith("≈ ") and " ± " in row


def test_density_x_range_is_that_of_the_ritz_values():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # bulk near 0 and one outlier at 30
    A = torch.diag(torch.cat([torch.linspace(-0.1, 0.1, 200), torch.tensor([30.0])]).double())
    d = spectral_density(A, num_iters=40, num_probes=2)
    ax = Figure().subplots()
    plot_spectral_density(d, ax=ax)
    lo, hi = ax.get_xlim()
    theta = d.ritz_values
    assert lo <= float(theta.min()) and hi >= float(theta.max())
    span = float(theta.max() - theta.min())
    assert hi - float(theta.max()) <= 0.05 * span and float(theta.min()) - lo <= 0.05 * span
    assert ax.get_legend()._loc == 0  # "best": the emptiest place


def test_residual_zero_is_explained():
    pytest.importorskip("bqplot")
    from jupyter_curvature.widgets import SpectrumPanel

    A = torch.diag(torch.tensor([1.0, 1.0, 2.0, 2.0, 5.0, 5.0], dtype=torch.float64))
    d = spectral_density(A, num_iters=6, num_probes=1)  # 3 distinct values: invariant after 3
    assert d.breakdown
    with SpectrumPanel(d) as panel:
        assert "exact: the Krylov space is invariant" in panel._top_table()


def test_per_layer_bars_fit_in_their_axis():
    pytest.importorskip("bqplot")
    from jupyter_curvature.widgets import StatsPanel

    st = tasks.statistics("mlp", "digits", num_samples=64, include=["layers"])
    with StatsPanel(st) as panel:
        values = panel.quantities["λ max"][1]
        assert panel.ys.max > values.max() and panel.ys.min <= min(0.0, values.min())


def test_an_undefined_training_result_says_to_run_curv_train_first():
    with pytest.raises(
        tasks.InputError,
        match=r"no variable 'run' yet: run the cell that defines it first \(for run.model: run %%curv_train \.\.\. --out run first",
    ):
        tasks.spectrum("run.model", "digits", namespace={})
