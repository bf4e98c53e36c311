"""The spectrum task: the SLQ spectral density of the Hessian or the GGN and its certified
largest eigenpairs (``%curv_spectrum``, ``jupyter-curvature spectrum``).

The density is :func:`~jupyter_curvature.spectral.spectral_density` (stochastic Lanczos
quadrature: Ubaru, Chen & Saad, SIAM J. Matrix Anal. Appl. 2017; for networks Ghorbani,
Krishnan & Xiao, ICML 2019); the eigenpairs are :func:`~jupyter_curvature.spectral.eigenpairs`
(``which="LA"``), each with its residual ``||H v - lambda v||``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.progress import Cancelled, Progress
from ..core.vocabulary import accepts_aliases
from .names import InputError, resolve_setup
from .outputs import is_writer, output_folder, save_figure, save_json

__all__ = ["CURVATURES", "SpectrumResult", "make_operator", "spectrum"]

#: the curvature matrices a task can use
CURVATURES = ("hessian", "ggn")


def check_curvature(curvature: str) -> str:
    """``curvature`` if it is ``"hessian"`` or ``"ggn"``, else a one-line :class:`InputError`."""
    if curvature not in CURVATURES:
        raise InputError(f"--curvature {curvature!r}: choose hessian or ggn")
    return curvature


def make_operator(model: Any, loss_fn: Any, data: Any, *, curvature: str = "hessian",
                  params: Any = None, batchnorm: str = "eval"):  # fmt: skip
    """``HessianOperator`` or ``GGNOperator`` of ``loss_fn`` over ``data``."""
    from ..operators import GGNOperator, HessianOperator

    cls = {"hessian": HessianOperator, "ggn": GGNOperator}[check_curvature(curvature)]
    kwargs = {} if batchnorm == "eval" else {"batchnorm": batchnorm}
    return cls(model, loss_fn, data, params=params, **kwargs)


def _block_spec(blocks: Any) -> Any:
    """``"auto"``, a dict or a list as they are; ``"a,b"`` (a flag's text) as ``["a", "b"]``."""
    if isinstance(blocks, str) and blocks != "auto":
        return [name.strip() for name in blocks.split(",") if name.strip()]
    return blocks


@dataclass
class SpectrumResult:
    """What :func:`spectrum` returns.

    Attributes:
        density: the :class:`~jupyter_curvature.spectral.SpectralDensity`.
        eigen: the :class:`~jupyter_curvature.spectral.EigenpairsResult` (``top_k > 0``) or None.
        curvature: ``"hessian"`` or ``"ggn"``.
        params: the parameter selection.
        num_params: the operator's dimension.
        num_matvecs: operator products used.
        seconds: wall time of the computation.
        cancelled: cancelled before the end: ``density`` holds the Lanczos steps done, and
            ``eigen`` the current (uncertified) Ritz pairs or None.
        blocks: the per-block spectra (:class:`~jupyter_curvature.spectral.BlockSpectra`,
            with ``blocks=``) or None.
    """

    density: Any
    eigen: Any = None
    curvature: str = "hessian"
    params: Any = None
    num_params: int = 0
    num_matvecs: int = 0
    seconds: float = 0.0
    cancelled: bool = False
    blocks: Any = None

    def to_dict(self) -> dict[str, Any]:
        """The summary (JSON-ready through :func:`jupyter_curvature.core.records.jsonable`)."""
        eig = self.eigen
        converged = None
        if eig is not None:
            c = eig.converged
            converged = bool(c.all()) if hasattr(c, "all") else bool(c)
        return {
            "curvature": self.curvature,
            "num_parameters": self.num_params,
            "stats": self.density.stats.to_dict(),
            "top_eigenvalues": None if eig is None else eig.eigenvalues.tolist(),
            "top_residuals": None if eig is None else eig.residuals.tolist(),
            "top_converged": converged,
            "num_matvecs": self.num_matvecs,
            "seconds": self.seconds,
            "cancelled": self.cancelled,
            "blocks": None if self.blocks is None else self.blocks.rows(),
        }

    def plot(self, ax: Any = None) -> Any:
        """The density on ``ax`` (a new figure if None); returns the axes."""
        from ..plotting import curvature_label, plot_spectral_density

        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(6.4, 3.6))
        plot_spectral_density(
            self.density, ax=ax, title=f"{curvature_label(self.curvature)} spectral density"
        )
        return ax

    def save(self, out: str | Path) -> Path:
        """``<curvature>_density.npz`` / ``.png`` and ``<curvature>_spectrum.json`` in ``out``
        (and ``<curvature>_blocks.json`` / ``.png`` with per-block spectra)."""
        out = output_folder(out)
        if is_writer():
            self.density.save(out / f"{self.curvature}_density.npz")
            if self.blocks is not None:
                self.blocks.save(out / f"{self.curvature}_blocks.json")
        save_figure(self.plot(), out / f"{self.curvature}_density.png")
        if self.blocks is not None:
            save_figure(self.blocks.plot(), out / f"{self.curvature}_blocks.png")
        save_json(out / f"{self.curvature}_spectrum.json", self.to_dict())
        return out

    def __repr__(self) -> str:
        return (
            f"SpectrumResult(curvature={self.curvature!r}, n={self.num_params}, "
            f"density={self.density!r})"
        )


@accepts_aliases
def spectrum(
    model: Any = "small_cnn",
    data: Any = "digits",
    *,
    loss_fn: Any = None,
    curvature: str = "hessian",
    num_iters: int = 80,
    num_probes: int = 4,
    top_k: int = 0,
    tol: float = 1e-3,
    params: Any = None,
    blocks: Any = None,
    batchnorm: str = "eval",
    num_samples: int | None = None,
    batch_size: int = 128,
    data_root: str | None = None,
    device: Any = None,
    seed: int = 0,
    out: str | Path | None = None,
    namespace: dict[str, Any] | None = None,
    warn: bool = False,
    progress: Any = None,
    cancel: Any = None,
) -> SpectrumResult:
    """SLQ spectral density of the Hessian (or the GGN) and, with ``top_k=k``, its ``k``
    largest eigenpairs certified by their residuals.

    Args:
        model, data: objects or names (see :func:`.names.resolve_setup`).
        loss_fn: the criterion (default cross-entropy) or its name.
        curvature: ``"hessian"`` or ``"ggn"``.
        num_iters: Lanczos steps per probe (at most the number of parameters).
        num_probes: SLQ probe vectors.
        top_k: eigenpairs to compute (0: none); fewer than the number of parameters.
        tol: eigenpair residual tolerance, relative to the largest ``|eigenvalue|``.
        params: parameter selection (glob, module prefix or ``re:<regex>``).
        blocks: also the spectrum of every block (``"auto"``: embeddings, each attention, MLP
            and norm group, head; CNN stages; or module names, a list or comma-separated),
            with the same steps, probes and tolerance, passes over the data shared between
            blocks (:func:`~jupyter_curvature.spectral.block_spectra`); ``None``: no blocks.
        batchnorm: ``"eval"`` or ``"train"``: BatchNorm mode during the products.
        num_samples: use only this many samples.
        out: a folder: the result is also saved there (:meth:`SpectrumResult.save`).
        namespace: where names are looked up first (the magics' user namespace).
        warn: warn when an eigenpair does not converge.
        progress: ``True`` (``tqdm.auto`` bars), or a callable receiving each
            :class:`~jupyter_curvature.core.progress.ProgressEvent` (phases ``"setup"``,
            ``"density"``, ``"eigenpairs"``).
        cancel: a :class:`~jupyter_curvature.core.progress.CancelToken`: checked before each
            product; the result then holds what was done, with ``cancelled=True``.

    Old keywords (``ggn=True``, ``iters``, ``probes``, ``top``, ``subsample``, ...) still work
    and warn (``docs/vocabulary.md``).

    Raises:
        InputError: unusable names, settings or ``top_k``.
        Cancelled: cancelled before the first product.
    """
    from ..spectral import block_spectra, eigenpairs, spectral_density

    check_curvature(curvature)
    for name, value in (("num_iters", num_iters), ("num_probes", num_probes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(
                f"--{name.replace('_', '-')} must be a positive integer, got {value!r}"
            )
    if out is not None:
        out = output_folder(out)
    tracker = Progress.of(progress, cancel, "setup")
    tracker.step(0)
    setup = resolve_setup(model, data, namespace=namespace, loss_fn=loss_fn, batch_size=batch_size,
                          num_samples=num_samples, data_root=data_root, device=device, seed=seed)  # fmt: skip
    op = make_operator(setup.model, setup.loss_fn, setup.data, curvature=curvature,
                       params=params, batchnorm=batchnorm)  # fmt: skip
    n = op.shape[0]
    if top_k and top_k >= n:
        raise InputError(f"--top-k {top_k}: must be smaller than the number of parameters ({n})")
    tracker.finish()
    start = time.perf_counter()
    density = spectral_density(op, num_iters=min(num_iters, n), num_probes=num_probes, seed=seed,
                               progress=tracker)  # fmt: skip
    eig = None
    if top_k and not density.cancelled:
        with contextlib.suppress(Cancelled):
            eig = eigenpairs(op, k=top_k, which="LA", tol=tol, seed=seed, warn=warn,
                             progress=tracker)  # fmt: skip
    cancelled = density.cancelled or bool(top_k and (eig is None or eig.cancelled))
    per_block = None
    if blocks is not None and not cancelled:
        per_block = block_spectra(setup.model, setup.loss_fn, setup.data, _block_spec(blocks),
                                  curvature=curvature, num_iters=num_iters, num_probes=num_probes,
                                  seed=seed, tol=tol, params=params, batchnorm=batchnorm)  # fmt: skip
    result = SpectrumResult(density, eig, curvature, params, n, op.num_matvecs,
                            time.perf_counter() - start, cancelled, per_block)  # fmt: skip
    if out is not None:
        result.save(out)
    return result
