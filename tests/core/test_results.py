"""Result dataclasses serialise to plain JSON values with a schema version."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from pathlib import Path

import numpy as np
import torch

from bastion.core.results import Result, to_jsonable


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sample(Result):
    path: Path
    colour: Colour
    values: tuple[float, ...]
    scalar: object


def test_to_dict_is_json_with_version() -> None:
    r = Sample(path=Path("a/b"), colour=Colour.RED, values=(1.0, math.inf), scalar=np.float32(2))
    d = r.to_dict()
    assert d == {"schema_version": 1, "path": "a/b", "colour": "red", "values": [1.0, None],
                 "scalar": 2.0}
    assert json.loads(r.to_json()) == d
    assert to_jsonable(torch.tensor(3)) == 3
