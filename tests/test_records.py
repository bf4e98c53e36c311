"""The one JSON policy (core.records): NaN -> null, arrays -> lists, atomic files."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import torch

from jupyter_curvature.core.records import jsonable, to_json, write_json


@dataclasses.dataclass
class _Record:
    value: float
    values: np.ndarray


class _WithToDict:
    def to_dict(self):
        return {"x": float("inf")}


def test_jsonable_policy():
    data = {
        "nan": float("nan"),
        "inf": -math.inf,
        "np": np.float32(1.5),
        "t": torch.tensor([1.0, float("nan")]),
        "rec": _Record(2.0, np.array([np.nan, 3.0])),
        "obj": _WithToDict(),
        1: (np.int64(4), True, None, "s"),
    }
    assert jsonable(data) == {
        "nan": None,
        "inf": None,
        "np": 1.5,
        "t": [1.0, None],
        "rec": {"value": 2.0, "values": [None, 3.0]},
        "obj": {"x": None},
        "1": [4, True, None, "s"],
    }


def test_to_json_is_strict_json(tmp_path):
    text = to_json({"a": [float("nan"), 1.0]})
    assert "NaN" not in text and json.loads(text) == {"a": [None, 1.0]}
    path = write_json(tmp_path / "r.json", {"a": np.arange(3)})
    assert json.loads(path.read_text()) == {"a": [0, 1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left
