"""FeatureStats: every bad mean, std or z_limit is a ConfigurationError naming the key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.core.errors import ConfigurationError
from bastion.guard import FeatureStats


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mean": "abc"}, r"'mean' must be a list of numbers, got 'abc'"),
        ({"mean": [[0.0], [0.0, 1.0]]}, r"'mean' must be a list of finite numbers"),
        ({"mean": [10**400]}, r"'mean' must be a list of finite numbers"),
        ({"mean": [1e39]}, r"'mean' must be finite"),  # beyond float32
        ({"std": None}, r"'std' must be a list of finite numbers"),
        ({"std": [0.0]}, r"every 'std' must be finite and > 0"),
        ({"z_limit": 10**400}, r"'z_limit' must be a finite number > 0, got an int of 1329 bits"),
        ({"z_limit": True}, r"'z_limit' must be a finite number > 0, got True"),
        ({"z_limit": "3"}, r"'z_limit' must be a finite number > 0, got '3'"),
        ({"z_limit": float("nan")}, r"'z_limit' must be a finite number > 0, got nan"),
    ],
)
def test_bad_values_name_the_key(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        FeatureStats(**{"mean": [0.0], "std": [1.0], "z_limit": 3, **kwargs})  # type: ignore[arg-type]


def test_large_ints_and_big_endian_arrays_are_read_as_their_values() -> None:
    stats = FeatureStats(mean=[10**30, -2], std=np.array([0.5, 2.0], dtype=">f8"), z_limit=10)
    assert stats.mean.tolist() == [np.float32(1e30), -2.0] and stats.mean.dtype == torch.float32
    assert stats.std.tolist() == [0.5, 2.0] and stats.z_limit == 10.0
