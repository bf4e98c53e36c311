"""docs/vocabulary.md's table names, for each flag, the commands that take it: checked here
against the CLI's and the magics' parsers (the table once said "everywhere" for flags that
some front ends lack)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

TABLE = (Path(__file__).resolve().parents[1] / "docs" / "vocabulary.md").read_text()
CLI = ("train", "spectrum", "stats", "landscape")
MAGICS = ("%%curv_train", "%curv_spectrum", "%curv_stats", "%curv_landscape")


def options() -> dict[str, set[str]]:
    """The long options of each CLI command and each magic."""
    from jupyter_curvature.cli import build_parser
    from jupyter_curvature.magics import landscape, spectrum, stats, train

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = {f"cli {c}": set(sub.choices[c]._option_string_actions) for c in CLI}
    for name, fn in zip(MAGICS, (train.curv_train, spectrum.curv_spectrum, stats.curv_stats,
                                 landscape.curv_landscape)):  # fmt: skip
        out[name] = set(fn.parser._option_string_actions)
    return out


def rows() -> list[tuple[str, set[str]]]:
    """(flag, the commands the table says take it) for each row of one flag and its list."""
    out = []
    for line in TABLE.splitlines():
        cells = re.split(r"(?<!\\)\|", line)
        if len(cells) < 6 or not cells[3].strip().startswith("`--"):
            continue
        match = re.fullmatch(r"\s*`(--[a-z-]+)[^`]*` \(([^()]*)\)\s*", cells[3])
        if match is None:  # several flags in one cell: not checked here
            continue
        flag, where = match.groups()
        takers: set[str] = set()
        for part in where.split(";"):
            part = part.strip()
            if part == "all":
                takers |= {f"cli {c}" for c in CLI} | set(MAGICS)
            elif ":" in part or "none" in part:  # says who lacks it, or a note
                continue
            else:
                if part.startswith("every CLI command"):
                    takers |= {f"cli {c}" for c in CLI}
                if part.startswith("every magic"):
                    takers |= set(MAGICS)
                names = re.findall(r"`([^`]+)`", part)
                cli = part.startswith("CLI")
                takers |= {n for n in names if n.startswith("%")}
                takers |= {f"cli {n}" for n in names if cli and n in CLI}
        out.append((flag, takers))
    return out


def test_the_table_lists_the_flags():
    assert len(rows()) >= 25, "the table's flag column lost its format"


@pytest.mark.parametrize("flag, takers", rows(), ids=[r[0] for r in rows()])
def test_each_flag_is_taken_by_the_commands_the_table_names(flag, takers):
    have = {name for name, opts in options().items() if flag in opts}
    assert have == takers, f"{flag}: take it {sorted(have)}; the table says {sorted(takers)}"
