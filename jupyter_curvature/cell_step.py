"""The cell body of ``%%curv_train`` as the training step, and tracebacks that point at it.

The body is compiled once (with the cell's own line numbers, the magic line being line 1)
and run in the notebook's namespace for every step with the batch bound; an exception in it
is shown from the user's line down, without the package's frames. Only ``magics.train``
imports this module, and it imports no Jupyter package: it uses the shell object it is given
and raises :class:`CellBodyError`, which the magic turns into its one-line ``UsageError``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CellBodyError", "cell_step", "point_at_user_code"]


class CellBodyError(ValueError):
    """The training cell body broke the contract: it does not compile, or did not set a
    scalar ``loss``."""


def cell_step(shell: Any, cell: str, line: str) -> tuple[Any, Any]:
    """Compile the cell body once; the step runs it in the user's namespace with the batch bound.

    Raises:
        CellBodyError: the body does not compile (the message names the line).
    """
    source = shell.transform_cell(cell)
    # line 1 of the cell is the magic line: keep the body's line numbers those of the cell
    text = f"# %%curv_train {line}\n{source}"
    filename = shell.compile.cache(text, shell.execution_count, raw_code=text)
    try:
        code = compile(text, filename, "exec")
    except SyntaxError as exc:
        raise CellBodyError(
            f"syntax error in the cell body, line {exc.lineno}: {exc.msg}"
        ) from None
    ns = shell.user_ns
    bound = ("x", "y", "batch", "model", "loss_fn", "optimizer", "step", "outputs", "loss")
    saved = {k: ns[k] for k in bound if k in ns}

    def step(model: Any, x: Any, y: Any, ctx: dict[str, Any]) -> Any:
        ns.update(
            x=x,
            y=y,
            batch=(x, y),
            model=model,
            loss_fn=ctx["loss_fn"],
            optimizer=ctx["optimizer"],
            step=ctx["trainer"].step + 1,
            outputs=None,
        )
        ns.pop("loss", None)
        exec(code, ns)
        loss = ns.get("loss")
        import torch

        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            got = "nothing" if loss is None else f"a {type(loss).__name__}"
            raise CellBodyError(
                f"the cell body must assign a scalar tensor to `loss` (it assigned {got})"
            )
        return loss.reshape(()), ns.get("outputs")

    step.filename = filename  # type: ignore[attr-defined]

    def restore() -> None:
        for k in bound:
            if k in saved:
                ns[k] = saved[k]
            elif k != "loss":
                ns.pop(k, None)

    return step, restore


def point_at_user_code(shell: Any, exc: BaseException, filename: str | None) -> None:
    """Make IPython show ``exc``'s traceback from the user's cell-body line down, not our frames."""
    if shell is None or filename is None:
        return
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    if tb is None:
        return
    user_tb = tb

    def render() -> list[str]:
        return shell.InteractiveTB.structured_traceback(type(exc), exc, user_tb, tb_offset=0)

    try:
        exc._render_traceback_ = render  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # exceptions without a __dict__ keep the full traceback
        pass
