"""JupyterLab server and page helpers for the browser suite (no pytest in here).

:class:`LabServer` starts ``jupyter lab`` on 127.0.0.1, on a free port, with a random token
and throw-away config, settings, workspace, runtime and root folders, and stops it (the whole
process group, kernels included) in :meth:`LabServer.stop`. :class:`NotebookPage` drives one
notebook in one browser page through ``window.jupyterapp`` (exposed by
``--LabApp.expose_app_in_browser``) and records the page's console errors.

Background: ``docs/browser-tests.md``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("JC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # a page that is not in front must keep rendering (bqplot draws on animation frames)
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]

# JupyterLab user settings written into the throw-away settings folder.
LAB_SETTINGS = {
    # no news, no update check: nothing pops up over the notebook, nothing reaches the network
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    # every cell in the DOM: with windowing, cells out of view are not rendered at all
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "windowingMode": "none",
    },
    # the notebook under test is a copy; never write it back while the test reads it
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {
        "autosave": False,
    },
    # "Save Widget State Automatically": a saved notebook reopens with its panels
    "@jupyter-widgets/jupyterlab-manager/plugin.jupyterlab-settings": {
        "saveState": True,
    },
}

#: the handshake gates of each dedicated notebook (released together when its test ends)
TRAIN_GATES = ("train_middle", "train_end")
PROGRESS_GATES = ("live_first", "live_second", "cancel_here")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25
) -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class LabServer:
    """A private JupyterLab server in ``base`` (a fresh folder)."""

    def __init__(self, base: Path, startup_timeout: float = 120.0) -> None:
        self.base = Path(base)
        self.root = self.base / "root"  # the notebooks under test are copied here
        self.gates = self.base / "gates"  # handshake files of browser_checks.ipynb
        self.log_path = self.base / "jupyter-lab.log"
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self._log: Any = None

    # ------------------------------------------------------------------ lifecycle
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        folders = {
            "JUPYTER_CONFIG_DIR": "config",
            "JUPYTER_RUNTIME_DIR": "runtime",
            "JUPYTERLAB_SETTINGS_DIR": "settings",
            "JUPYTERLAB_WORKSPACES_DIR": "workspaces",
            "IPYTHONDIR": "ipython",
        }
        for var, name in folders.items():
            path = self.base / name
            path.mkdir(parents=True, exist_ok=True)
            env[var] = str(path)
        env["JC_BROWSER_GATES"] = str(self.gates)
        # the kernels share 2 cores with the browser and the server: keep them single-threaded
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("MKL_NUM_THREADS", "1")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _write_settings(self) -> None:
        for rel, values in LAB_SETTINGS.items():
            path = self.base / "settings" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values, indent=2))

    def start(self) -> LabServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.gates.mkdir(parents=True, exist_ok=True)
        env = self._env()
        self._write_settings()
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.root}",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.terminals_enabled=False",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.extension_manager=readonly",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends the kernels too
        )
        try:
            wait_for(self._ready, self.startup_timeout, "JupyterLab to answer /api/status")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"jupyter lab exited with code {self.proc.returncode}:\n{self.log_tail()}"
            )
        try:
            self.api("GET", "/api/status")
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """Stop the server and everything it started (SIGTERM, then SIGKILL after 10 s)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LabServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def api(self, method: str, path: str) -> Any:
        req = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Stop every kernel of the server (frees the CPU between tests)."""
        try:
            for kernel in self.api("GET", "/api/kernels"):
                self.api("DELETE", f"/api/kernels/{kernel['id']}")
        except OSError:
            pass

    def add_notebook(self, source: Path, name: str | None = None) -> str:
        """Copy ``source`` into the server's root without outputs or execution counts."""
        import nbformat

        nb = nbformat.read(source, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = []
                cell.execution_count = None
        nb.metadata.pop("widgets", None)  # stale widget state from a previous run
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
        }
        name = name or source.name
        nbformat.write(nb, self.root / name)
        return name

    def gate_reached(self, name: str) -> bool:
        return (self.gates / f"{name}.reached").exists()

    def release_gate(self, name: str) -> None:
        (self.gates / f"{name}.release").touch()

    def release_all_gates(self, names: tuple[str, ...] = TRAIN_GATES) -> None:
        """Release ``names`` (one notebook's gates: another notebook's must stay closed)."""
        for name in names:
            self.release_gate(name)

    def lab_url(self, notebook: str, workspace: str) -> str:
        return f"{self.url}/lab/workspaces/{workspace}/tree/{notebook}?token={self.token}"


# --------------------------------------------------------------------------------------
# the page

# Console errors that are not the product's. Each entry: (substring, why it is harmless).
# Keep this empty unless a message is proven to come from outside the code under test.
BENIGN_CONSOLE_ERRORS: list[tuple[str, str]] = []

# JavaScript run in the page. `P` is the notebook panel the test opened (kept on window).
_JS_PANEL = "window.__jcPanel"

JS_STATE = f"""() => {{
  const panel = {_JS_PANEL};
  const model = panel.content.model;
  const cells = [];
  for (let i = 0; i < model.cells.length; i++) {{
    const c = model.cells.get(i);
    const outputs = c.type === 'code' ? c.outputs.toJSON() : [];
    cells.push({{
      type: c.type,
      count: c.type === 'code' ? c.executionCount : null,
      errors: outputs.filter(o => o.output_type === 'error')
                     .map(o => `${{o.ename}}: ${{o.evalue}}`),
    }});
  }}
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return {{cells, kernel: kernel ? kernel.status : 'none'}};
}}"""

# A summary of every bqplot figure under `root`: title, points per line, dots, heat map.
JS_FIGURES = """(root) => Array.from(root.querySelectorAll('.bqplot.figure')).map(fig => {
  const title = (fig.querySelector('text.mainheading') || {}).textContent || '';
  const lines = Array.from(fig.querySelectorAll('g.curve path.line')).map(p => {
    const d = p.getAttribute('d') || '';
    return {points: (d.match(/[ML]/g) || []).length, nan: /NaN|undefined/.test(d)};
  });
  const dots = Array.from(fig.querySelectorAll('g.object_grp')).map(g => g.getAttribute('transform'));
  const heat = Array.from(fig.querySelectorAll('image.heatmap'))
      .map(im => (im.getAttribute('href') || '').length);
  const box = fig.getBoundingClientRect();
  return {title, lines, dots, heat, width: box.width, height: box.height};
})"""

# What the front end shows as a widget failure (ipywidgets' own error views, panel errors).
JS_WIDGET_PROBLEMS = """(root) => {
  const out = [];
  for (const el of root.querySelectorAll('.jupyter-widgets, .jp-OutputArea-output')) {
    const t = el.textContent || '';
    if (/Error displaying widget|Error rendering widget|Failed to load model class/.test(t)
        && el.children.length <= 3) out.push(t.slice(0, 300));
  }
  // the panels' error areas are Output widgets: anything written to stderr there is an error
  for (const el of root.querySelectorAll('.widget-output [data-mime-type="application/vnd.jupyter.stderr"]'))
    out.push('panel error area: ' + (el.textContent || '').slice(0, 500));
  return out;
}"""

JS_KERNEL_EXEC = f"""async ([code, ms]) => {{
  const kernel = {_JS_PANEL}.sessionContext.session.kernel;
  const future = kernel.requestExecute({{code, store_history: false}});
  let out = '';
  future.onIOPub = (msg) => {{
    const t = msg.header.msg_type;
    if (t === 'stream') out += msg.content.text;
    if (t === 'error') out += `KERNEL ERROR ${{msg.content.ename}}: ${{msg.content.evalue}}`;
  }};
  const timeout = new Promise((_, reject) =>
      setTimeout(() => reject(new Error(`kernel request took more than ${{ms}} ms`)), ms));
  await Promise.race([future.done, timeout]);
  return out;
}}"""


class NotebookPage:
    """One notebook of a :class:`LabServer`, open in its own browser context and page."""

    def __init__(self, browser: Any, lab: LabServer, notebook: str, workspace: str) -> None:
        self.lab = lab
        self.notebook = notebook
        self.context = browser.new_context(viewport={"width": 1400, "height": 1800})
        self.context.set_default_timeout(60_000)
        self.page = self.context.new_page()
        self.console_errors: list[str] = []
        self.console_log: list[str] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda exc: self.console_errors.append(f"uncaught: {exc}"))
        self.page.on("crash", lambda _p: self.console_errors.append("the page crashed"))
        self.workspace = workspace
        self.exception_stacks: list[str] = []
        if os.environ.get("JC_BROWSER_EXCEPTION_STACKS"):
            self._record_exception_stacks(os.environ["JC_BROWSER_EXCEPTION_STACKS"])

    def _record_exception_stacks(self, pattern: str) -> None:
        """Diagnostics: the stack of every exception, caught ones included, whose message
        contains ``pattern`` (libraries such as ipywidgets catch and log only the message)."""
        cdp = self.context.new_cdp_session(self.page)

        def paused(event: dict) -> None:
            try:
                data = event.get("data") or {}
                text = str(data.get("description", ""))
                if event.get("reason") in ("exception", "promiseRejection") and pattern in text:
                    frames = [
                        f"{f['functionName'] or '<anonymous>'} "
                        f"({f['url'].rsplit('/', 1)[-1]}:{f['location']['lineNumber'] + 1}:"
                        f"{f['location']['columnNumber'] + 1})"
                        for f in event["callFrames"][:25]
                    ]
                    self.exception_stacks.append(
                        text.splitlines()[0] + "\n    " + "\n    ".join(frames)
                    )
            finally:
                cdp.send("Debugger.resume")

        cdp.on("Debugger.paused", paused)
        cdp.send("Debugger.enable")
        cdp.send("Debugger.setPauseOnExceptions", {"state": "all"})

    def _on_console(self, msg: Any) -> None:
        text = msg.text
        self.console_log.append(f"[{msg.type}] {text}")
        if msg.type != "error":
            return
        if any(s in text for s, _why in BENIGN_CONSOLE_ERRORS):
            return
        self.console_errors.append(text)

    # ------------------------------------------------------------------ opening, running
    def open(self, timeout: float = 180.0) -> NotebookPage:
        """Load JupyterLab on the notebook and wait until its kernel is connected and idle."""
        self.page.goto(self.lab.lab_url(self.notebook, self.workspace), timeout=timeout * 1000)
        deadline = time.monotonic() + timeout
        js_ready = """(path) => {
          const app = window.jupyterapp;
          if (!app || !app.shell) return false;
          for (const w of app.shell.widgets('main')) {
            if (w.context && w.context.path === path && w.content && w.content.model) {
              window.__jcPanel = w;
              const k = w.sessionContext.session && w.sessionContext.session.kernel;
              return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
            }
          }
          return false;
        }"""

        def ready() -> bool:
            self.accept_dialogs()
            return bool(self.page.evaluate(js_ready, self.notebook))

        wait_for(
            ready, max(deadline - time.monotonic(), 1), f"JupyterLab to open {self.notebook}", 0.5
        )
        return self

    def accept_dialogs(self) -> None:
        """Accept a kernel-selection (or any other) modal dialog if one is up."""
        dialog = self.page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
        if dialog.count():
            dialog.first.click()

    def run_all(self) -> None:
        # do not return the promise: it resolves only when every cell has run
        self.page.evaluate(
            f"() => {{ {_JS_PANEL}.content.activate(); "
            "window.jupyterapp.commands.execute('notebook:run-all-cells'); }"
        )

    def state(self) -> dict:
        return self.page.evaluate(JS_STATE)

    def wait_until_run(self, timeout: float) -> dict:
        """Wait until every code cell has run (or one failed) and the kernel is idle."""

        def done() -> dict | None:
            self.accept_dialogs()
            st = self.state()
            code = [c for c in st["cells"] if c["type"] == "code"]
            failed = any(c["errors"] for c in code)
            finished = all(c["count"] is not None for c in code)
            if st["kernel"] == "idle" and (finished or failed):
                return st
            if st["kernel"] in ("dead", "unknown"):
                raise RuntimeError(f"the kernel is {st['kernel']}:\n{self.lab.log_tail()}")
            return None

        return wait_for(done, timeout, f"all cells of {self.notebook} to run", 1.0)

    def save(self) -> None:
        """Save the notebook (with the widget state, under the suite's settings)."""
        self.page.evaluate(f"async () => {{ await {_JS_PANEL}.context.save(); }}")

    def error_outputs(self) -> list[str]:
        return [f"cell {i}: {e}" for i, c in enumerate(self.state()["cells"]) for e in c["errors"]]

    def cell_index(self, startswith: str) -> int:
        """Index of the first cell whose source starts with ``startswith``."""
        i = self.page.evaluate(
            f"""(prefix) => {{
              const cells = {_JS_PANEL}.content.model.cells;
              for (let i = 0; i < cells.length; i++)
                if (cells.get(i).sharedModel.getSource().trimStart().startsWith(prefix)) return i;
              return -1;
            }}""",
            startswith,
        )
        if i < 0:
            raise LookupError(f"no cell of {self.notebook} starts with {startswith!r}")
        return i

    def cell(self, index: int) -> Any:
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def output(self, index: int) -> Any:
        return self.cell(index).locator(".jp-OutputArea").first

    def prompt(self, index: int) -> str:
        return self.cell(index).locator(".jp-InputPrompt").first.inner_text().strip()

    # ------------------------------------------------------------------ reading the page
    def figures(self, locator: Any) -> list[dict]:
        return locator.evaluate(JS_FIGURES)

    def figure(self, locator: Any, title_prefix: str) -> dict:
        figs = [f for f in self.figures(locator) if f["title"].startswith(title_prefix)]
        if not figs:
            titles = [f["title"] for f in self.figures(locator)]
            raise AssertionError(f"no bqplot figure titled {title_prefix!r}; figures: {titles}")
        return figs[0]

    def widget_problems(self) -> list[str]:
        return self.page.locator(".jp-Notebook").first.evaluate(JS_WIDGET_PROBLEMS)

    def kernel_exec(self, code: str, timeout: float = 60.0) -> str:
        """Run ``code`` in the notebook's kernel (outside any cell); returns its stdout."""
        return self.page.evaluate(JS_KERNEL_EXEC, [code, int(timeout * 1000)])

    def screenshot(self, locator: Any, path: Path) -> None:
        """Screenshot of ``locator`` (the page when None); never raises (it is evidence)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if locator is None:
                self.page.screenshot(path=str(path))
            else:
                locator.scroll_into_view_if_needed(timeout=10_000)
                locator.screenshot(path=str(path), timeout=30_000)
        except Exception as exc:  # noqa: BLE001 - a missing screenshot must not hide the check
            print(f"screenshot {path.name} failed: {exc}")

    def close(self) -> None:
        """Shut the notebook's kernel down and close the browser context (never raises)."""
        try:
            # fire and forget: the promise may never settle if the server is gone
            self.page.evaluate(f"() => {{ {_JS_PANEL} && {_JS_PANEL}.sessionContext.shutdown(); }}")
        except Exception:  # noqa: BLE001
            pass
        try:
            self.context.close()
        except Exception:  # noqa: BLE001
            pass
