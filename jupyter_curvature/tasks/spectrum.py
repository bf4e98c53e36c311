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
from .names import InputError, resolve_device, resolve_setup
from .outputs import is_writer, output_folder, save_figure, save_json

__all__ = ["BASIS_DTYPES", "CURVATURES", "SpectrumResult", "basis_options", "make_operator",
           "spectrum"]  # fmt: skip

#: the curvature matrices a task can use
CURVATURES = ("hessian", "ggn")
#: the Lanczos basis dtypes a task can ask for (``basis_dtype``, ``--basis-dtype``)
BASIS_DTYPES = ("float64", "float32")


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


def basis_options(
    *,
    memory_budget: Any = None,
    basis_dtype: Any = None,
    basis_device: Any = None,
    reorthogonalize: str = "full",
    top_k: int = 0,
    blocks: Any = None,
) -> dict[str, Any]:
    """The engine's Lanczos-basis keywords of a spectrum, checked before any work.

    Args:
        memory_budget: bytes (a number) or a size (``"8GB"``, ``"512MiB"``) for the Lanczos
            vectors of each run, or ``None``.
        basis_dtype: ``"float64"``, ``"float32"`` (or the torch dtype), or ``None``.
        basis_device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or a torch device), or ``None``.
        reorthogonalize: ``"full"`` or ``"none"`` (density only: no stored basis).
        top_k, blocks: the spectrum's other requests; both need a stored basis.

    Returns:
        ``memory_budget`` (float bytes or None), ``basis_dtype`` (torch dtype or None),
        ``basis_device`` (torch device or None) and ``reorthogonalize``.

    Raises:
        InputError: a bad value (naming its flag and the accepted forms), or
            ``reorthogonalize="none"`` with a request that needs a stored basis.
    """
    import torch

    from ..spectral.memory import check_budget

    try:
        budget = check_budget(memory_budget)
    except ValueError as exc:
        raise InputError(f"--memory-budget: {str(exc).removeprefix('memory_budget: ')}") from None
    dtype = basis_dtype
    if isinstance(dtype, str) and dtype in BASIS_DTYPES:
        dtype = getattr(torch, dtype)
    if dtype not in (None, torch.float64, torch.float32):
        raise InputError(f"--basis-dtype {basis_dtype!r}: choose float64 or float32")
    device = resolve_device(basis_device, flag="--basis-device")
    if reorthogonalize not in ("full", "none"):
        raise InputError(
            f"--reorthogonalize {reorthogonalize!r}: choose full (a stored, reorthogonalised "
            "basis) or none (the density only, no stored basis)"
        )
    if reorthogonalize == "none":
        needs = [f"--top-k {top_k} (eigenpairs)"] if top_k else []
        needs += ["--blocks (per-block spectra)"] if blocks is not None else []
        if needs:
            remedy = " and ".join(
                ["pass --top-k 0"] * bool(top_k) + ["drop --blocks"] * (blocks is not None)
            )
            raise InputError(
                "--reorthogonalize none keeps no Lanczos basis and gives the density only, but "
                f"{' and '.join(needs)} {'needs' if len(needs) == 1 else 'need'} a stored "
                f"basis: {remedy}, or use --reorthogonalize full (with --basis-dtype float32 "
                "or a --memory-budget that holds a basis)"
            )
    return {"memory_budget": budget, "basis_dtype": dtype, "basis_device": device,
            "reorthogonalize": reorthogonalize}  # fmt: skip


def _check_budget(op: Any, n: int, num_iters: int, num_probes: int, top_k: int,
                  basis: dict[str, Any], blocks: Any = None) -> None:  # fmt: skip
    """The density's basis mode, with the eigenpairs' and the per-block spectra's checked
    too (``blocks``: ``(model, spec, curvature, params)``): a budget that holds one of them
    fails here, before the first product, with the engine's message naming the flag."""
    from ..spectral.blocks import planned_blocks_basis
    from ..spectral.density import density_basis
    from ..spectral.eigenpairs import eigenpairs_basis
    from ..spectral.memory import format_bytes

    def checked(what: str, choose: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return choose(op, *args, **kwargs)
        except ValueError as exc:
            if basis["memory_budget"] is None:
                raise
            # the engine lists every mode on its own line; a task's message is one line
            first, *rest = str(exc).splitlines()
            listed = "; ".join(line.strip() for line in rest if line.startswith(" "))
            advice = " ".join(line for line in rest if not line.startswith(" "))
            raise InputError(
                f"--memory-budget {format_bytes(basis['memory_budget'])} ({what}): {first} "
                f"{listed}; {advice}"
            ) from None

    checked("the density", density_basis, min(num_iters, n), num_probes, **basis)
    if top_k:
        checked(f"the top {top_k} eigenpairs", eigenpairs_basis, top_k,
                basis_dtype=basis["basis_dtype"], basis_device=basis["basis_device"],
                memory_budget=basis["memory_budget"])  # fmt: skip
    if blocks is not None:
        model, spec, curvature, params = blocks
        checked("the per-block spectra", lambda _op: planned_blocks_basis(
            model, spec, curvature, num_iters, num_probes, params,
            basis_dtype=basis["basis_dtype"], memory_budget=basis["memory_budget"]))  # fmt: skip


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

    :attr:`basis` (also in :meth:`to_dict` and the saved JSON) says how each run held its
    Lanczos vectors: dtype, device, pinned, reorthogonalisation, bytes and the budget.
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

    @property
    def basis(self) -> dict[str, Any]:
        """``{"density": ..., "eigenpairs": ...}``: each run's Lanczos basis record
        (:meth:`~jupyter_curvature.spectral.memory.BasisMode.to_dict`; None without that run)."""
        eig = self.eigen
        return {
            "density": getattr(self.density, "basis", None),
            "eigenpairs": None if eig is None else getattr(eig, "basis", None),
        }

    def basis_summary(self) -> str:
        """One line: how the Lanczos vectors of each run were held."""
        parts = [f"{run}: {rec['description']}{' (pinned)' if rec['pinned'] else ''}"
                 for run, rec in self.basis.items() if rec]  # fmt: skip
        return "Lanczos vectors: " + ("; ".join(parts) or "not recorded")

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
            "basis": self.basis,
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
    memory_budget: float | str | None = None,
    basis_dtype: Any = None,
    basis_device: Any = None,
    reorthogonalize: str = "full",
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
        memory_budget: bytes (``8e9``) or a size (``"8GB"``, ``"512MiB"``) the Lanczos
            vectors of each run (the density, then the eigenpairs) may take on the operator's
            device: the most accurate basis that fits is chosen (float64, float32 with float64
            sums, a pinned CPU basis for a GPU model; ``docs/scale.md``). Checked against the
            memory model before the first product. ``None``: the memory free on the device
            (float32 with a warning when float64 does not fit there).
        basis_dtype: ``"float64"`` or ``"float32"`` (float64 sums): the Lanczos vectors'
            dtype; ``None``: float64, or what ``memory_budget`` allows. The per-block spectra
            (``blocks``) choose theirs under the same budget and ``basis_dtype``, on the
            operator's device.
        basis_device: where the Lanczos vectors live (``"cpu"`` for a GPU model); ``None``:
            the operator's device, or what ``memory_budget`` allows.
        reorthogonalize: ``"full"`` (default) or ``"none"``: the density by the three-term
            recurrence with no stored basis (memory independent of ``num_iters``; exact
            moments, ghost copies of converged Ritz values); it gives the density only, so
            ``top_k`` must be 0 and ``blocks`` None.
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
        InputError: unusable names, settings or ``top_k``; a ``memory_budget`` that holds
            no allowed basis (before any product; the message lists each mode's bytes).
        Cancelled: cancelled before the first product.
    """
    from ..spectral import block_spectra, eigenpairs, spectral_density

    check_curvature(curvature)
    for name, value in (("num_iters", num_iters), ("num_probes", num_probes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(
                f"--{name.replace('_', '-')} must be a positive integer, got {value!r}"
            )
    basis = basis_options(memory_budget=memory_budget, basis_dtype=basis_dtype,
                          basis_device=basis_device, reorthogonalize=reorthogonalize,
                          top_k=top_k, blocks=blocks)  # fmt: skip
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
    planned = None if blocks is None else (setup.model, _block_spec(blocks), curvature, params)
    _check_budget(op, n, num_iters, num_probes, top_k, basis, planned)
    tracker.finish()
    start = time.perf_counter()
    density = spectral_density(op, num_iters=min(num_iters, n), num_probes=num_probes, seed=seed,
                               progress=tracker, **basis)  # fmt: skip
    eig = None
    if top_k and not density.cancelled:
        with contextlib.suppress(Cancelled):
            eig = eigenpairs(op, k=top_k, which="LA", tol=tol, seed=seed, warn=warn,
                             progress=tracker, basis_dtype=basis["basis_dtype"],
                             basis_device=basis["basis_device"],
                             memory_budget=basis["memory_budget"])  # fmt: skip
    cancelled = density.cancelled or bool(top_k and (eig is None or eig.cancelled))
    per_block = None
    if blocks is not None and not cancelled:
        per_block = block_spectra(setup.model, setup.loss_fn, setup.data, _block_spec(blocks),
                                  curvature=curvature, num_iters=num_iters, num_probes=num_probes,
                                  seed=seed, tol=tol, params=params, batchnorm=batchnorm,
                                  basis_dtype=basis["basis_dtype"],
                                  memory_budget=basis["memory_budget"])  # fmt: skip
    result = SpectrumResult(density, eig, curvature, params, n, op.num_matvecs,
                            time.perf_counter() - start, cancelled, per_block)  # fmt: skip
    if out is not None:
        result.save(out)
    return result
