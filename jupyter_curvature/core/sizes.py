"""Memory sizes as people write them (``8GB``, ``512MiB``, ``8e9``), read once for every layer.

Plain Python, no torch: the CLI's parser uses it without importing the engine.
"""

from __future__ import annotations

import argparse
import re

__all__ = ["SIZES", "UNITS", "parse_bytes", "size_argument"]

#: the units of a size: powers of 1000 (kB, MB, GB, TB) and of 1024 (KiB, MiB, GiB, TiB)
UNITS = {
    "b": 1,
    **{p + "b": 1000**i for i, p in enumerate("kmgt", 1)},
    **{p + "ib": 1024**i for i, p in enumerate("kmgt", 1)},
}
#: the accepted forms, as the error messages list them
SIZES = (
    "bytes (8e9, 8000000000) or a size with a unit: 8GB, 512MB (powers of 1000), "
    "512MiB, 1.5GiB (powers of 1024)"
)
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_bytes(text: str) -> float:
    """A size: ``"8GB"``, ``"512 MiB"``, ``"1.5GiB"``, ``"8e9"``, ``"8000000000"`` -> bytes.

    kB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024 (IEC 80000-13); units
    are read without regard to case.

    Raises:
        ValueError: not a size, or not positive and finite (the message lists the forms).

    Example:
        >>> parse_bytes("512MiB"), parse_bytes("8GB"), parse_bytes("8e9")
        (536870912.0, 8000000000.0, 8000000000.0)
    """
    match = _SIZE.fullmatch(text) if isinstance(text, str) else None
    unit = match.group(2).lower() if match else ""
    if match is None or (unit and unit not in UNITS):
        raise ValueError(f"{text!r} is not a size: give {SIZES}")
    value = float(match.group(1)) * UNITS.get(unit, 1)
    if not 0 < value < float("inf"):
        raise ValueError(f"{text!r} is not a positive size: give {SIZES}")
    return value


def size_argument(text: str) -> float:
    """An argparse ``type`` (the CLI's and the magics' ``--memory-budget``): a bad size is
    refused when the line is parsed, before any work, with the forms it takes."""
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
