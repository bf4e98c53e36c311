"""The one JSON policy of the package: how results become plain data and files.

Every result record, history and report is written through :func:`write_json`, so that
every file the package writes reads the same way:

- NaN and infinities become ``null`` (JSON has no NaN; ``null`` means "not computed" or
  "not finite", and the record's own fields say which);
- numpy and torch scalars and arrays become Python numbers and lists;
- dataclasses and objects with ``to_dict()`` become dicts; other objects their ``str``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from .files import atomic_write_text

__all__ = ["jsonable", "to_json", "write_json"]


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data under the package's policy (NaN/inf -> ``None``)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "to_dict"):
        return jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return str(value)


def to_json(value: Any, indent: int | None = 2) -> str:
    """The JSON text of ``value`` (strict: no NaN literals ever reach the file)."""
    return json.dumps(jsonable(value), indent=indent, allow_nan=False)


def write_json(path: str | Path, value: Any) -> Path:
    """Write ``value`` as JSON to ``path`` atomically (see :func:`.files.atomic_write`)."""
    return atomic_write_text(path, to_json(value) + "\n")
