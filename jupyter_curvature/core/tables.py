"""Fixed-width text tables of results (the ``table()`` of every result record)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["format_table", "format_value"]


def format_value(value: Any, digits: int = 6) -> str:
    """One cell: ``-`` for None, yes/no for booleans, floats to ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}"
    return str(value)


def format_table(headers: list[str], rows: list[list[Any]], title: str | None = None) -> str:
    """A fixed-width text table: text columns left-aligned, numbers right-aligned."""
    cells = [[format_value(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[j], (int, float)) or row[j] is None for row in rows) and bool(rows)
        for j in range(len(headers))
    ]
    widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out.append(line(headers))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells)
    return "\n".join(out)
