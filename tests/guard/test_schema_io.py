"""Schema files from untrusted hands: a TensorSchema or a ConfigurationError naming the file."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.core.errors import ConfigurationError
from bastion.guard import TensorSchema

_BIG = "1" + "0" * 400  # a JSON / TOML integer beyond a float's range


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("schema.json", '{"shape": ["b"], "min": ' + _BIG + "}",
         r"schema\.json: schema: key 'min' must be a finite number"),
        ("schema.json", '{"shape": ["b", 1], "stats": {"mean": [' + _BIG
         + '], "std": [1], "z_limit": 3}}', r"schema\.json: stats: 'mean'"),
        ("schema.json", '{"shape": ["b", 1], "stats": {"mean": [0], "std": [1], "z_limit": '
         + _BIG + "}}", r"schema\.json: stats: 'z_limit'"),
        ("schema.toml", 'shape = ["b", 1]\n[stats]\nmean = [0]\nstd = [0]\nz_limit = 3\n',
         r"schema\.toml: stats: every 'std' must be finite and > 0"),
        ("schema.toml", 'shape = ["b", 1]\nmax = 1\n[stats]\nmean = [5]\nstd = [1]\n'
         "z_limit = 3\n", r"schema\.toml: schema: 'stats' mean lies outside"),
        ("schema.json", "[" * 100_000 + "]" * 100_000,
         r"schema\.json is not valid JSON: nested too deeply"),
        ("schema.toml", "a = " + "[" * 100_000 + "]" * 100_000,
         r"schema\.toml is not valid TOML: nested too deeply"),
        ("schema.json", '{"shape": ["b"], "min": 1' + "0" * 5000 + "}",
         r"schema\.json is not valid JSON: Exceeds the limit"),
    ],
)
def test_errors_while_loading_name_the_file(
    tmp_path: Path, name: str, text: str, match: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=match):
        TensorSchema.load(path)


_KEYS = ("name", "dtype", "shape", "min", "max", "finite", "stats", "mean", "std", "z_limit")
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(10**500), 10**500)
    | st.floats() | st.text(max_size=6) | st.sampled_from(["float16", "uint8", "*", "batch"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=4), inner, max_size=5),
    max_leaves=16,
)
_schemas = st.fixed_dictionaries(
    {}, optional={key: _json_values for key in _KEYS[:7]}
) | st.builds(
    lambda shape, stats: {"shape": shape, "stats": stats},
    st.lists(st.integers(0, 3) | st.just("b"), min_size=1, max_size=3),
    st.fixed_dictionaries({}, optional={key: _json_values for key in _KEYS[7:]}),
)
_numbers = st.integers(-3, 3) | st.floats() | st.integers(-(10**500), 10**500)
_near_valid = st.integers(0, 3).flatmap(lambda n: st.fixed_dictionaries(
    {"shape": st.just(["batch", n])},
    optional={
        "dtype": st.sampled_from(["float32", "float16", "bfloat16", "uint8", "int64", "bool"])
        | st.lists(st.sampled_from(["float16", "int8", "float64"]), max_size=3),
        "min": _numbers, "max": _numbers, "finite": st.booleans(),
        "stats": st.fixed_dictionaries({
            "mean": st.lists(_numbers, min_size=n, max_size=n),
            "std": st.lists(_numbers | st.floats(0.1, 1e6), min_size=n, max_size=n),
            "z_limit": _numbers,
        }),
    },
))
_DIR = Path(tempfile.mkdtemp(prefix="schema-fuzz-"))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=st.one_of(_json_values, _schemas, _near_valid).map(json.dumps)
    | st.text(max_size=200),
    suffix=st.sampled_from([".json", ".toml"]),
)
def test_any_file_is_a_schema_or_a_configuration_error(content: str, suffix: str) -> None:
    path = _DIR / f"fuzz{suffix}"
    path.write_text(content, encoding="utf-8")
    try:
        schema = TensorSchema.load(path)
    except ConfigurationError as error:
        assert str(path) in str(error)
    else:
        assert isinstance(schema, TensorSchema)
