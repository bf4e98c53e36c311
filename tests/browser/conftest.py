"""Fixtures of the browser suite: Chromium, a private JupyterLab, the artifacts folder.

Everything started here is stopped in ``finally`` blocks, also when a check fails or the run
is interrupted: the browser (Playwright), JupyterLab and its kernels (the whole process
group). Prerequisites are installed by ``tests/browser/install.sh`` (``tests/run.sh`` runs it;
this file runs it too when something is missing, so plain ``python -m pytest`` works on a
clean checkout). The tests skip, with the reason, only when Chromium cannot be installed on
the machine (no root or no apt-get); with ``JC_BROWSER_REQUIRED=1`` (or ``CI`` set) they fail
instead, and any other failed install fails them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ARTIFACTS = Path(os.environ.get("JC_BROWSER_ARTIFACTS", ROOT / "test-artifacts" / "browser"))

sys.path.insert(0, str(HERE))  # labdriver, wherever pytest's rootdir is

from labdriver import CHROMIUM, CHROMIUM_ARGS, LabServer  # noqa: E402


def _missing() -> list[str]:
    missing = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing.append(CHROMIUM)
    for module in ("playwright", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the Python package {module}")
    return missing


def _required() -> bool:
    return os.environ.get("JC_BROWSER_REQUIRED", "") not in ("", "0") or bool(os.environ.get("CI"))


@pytest.fixture(scope="session")
def browser_prerequisites() -> None:
    """Install what is missing (install.sh), then skip or fail if it is still missing."""
    missing = _missing()
    if not missing:
        return
    proc = subprocess.run(
        ["bash", str(HERE / "install.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable},
    )
    import importlib

    importlib.invalidate_caches()
    still = _missing()
    if not still:
        return
    reason = (
        f"browser tests need {', '.join(still)}; tests/browser/install.sh could not install it "
        f"(exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()[-600:]}"
    )
    # skip only when this machine cannot install Chromium at all (no root, no apt-get);
    # anything else that is still missing after install.sh is a failure CI must show
    cannot = still == [CHROMIUM] and not (os.geteuid() == 0 and shutil.which("apt-get"))
    if cannot and not _required():
        pytest.skip(reason)
    pytest.fail(reason, pytrace=False)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``test-artifacts/browser`` (git-ignored), emptied at the start of the session."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def lab(browser_prerequisites, tmp_path_factory, artifacts):
    """A private JupyterLab (127.0.0.1, free port, token, throw-away folders)."""
    server = LabServer(tmp_path_factory.mktemp("jupyterlab"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if server.log_path.exists():  # evidence for a failed run
            shutil.copy(server.log_path, artifacts / "jupyter-lab.log")


@pytest.fixture(scope="session")
def browser(browser_prerequisites):
    """Headless Debian Chromium driven by Playwright (closed at the end, whatever happened)."""
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=120_000
        )
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        pw.stop()
