"""The one reader of user TOML/JSON files: every failure is a ConfigurationError naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.core.config_files import read_config_file
from bastion.core.errors import ConfigurationError


def test_reads_toml_and_json_by_suffix(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('name = "x"\n[[rules]]\nvalue = 2\n')
    (tmp_path / "a.json").write_text('{"name": "x", "rules": [{"value": 2}]}')
    expected = {"name": "x", "rules": [{"value": 2}]}
    assert read_config_file(tmp_path / "a.toml", "alerts") == expected
    assert read_config_file(tmp_path / "a.json", "alerts") == expected


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("rules.yaml", b"a: 1", "schema file .*rules.yaml: unknown format '.yaml'"),
        ("missing.toml", None, "schema file .*missing.toml does not exist"),
        ("bad.toml", b"a = [", "schema file .*bad.toml is not valid TOML"),
        ("bad.json", b"{", "schema file .*bad.json is not valid JSON"),
        ("latin.toml", b'a = "\xe9"', "schema file .*latin.toml cannot be read"),
        ("dir.json", "dir", "schema file .*dir.json cannot be read"),
        ("deep.json", b"[" * 100_000, "schema file .*deep.json is not valid JSON: nested too"),
        ("deep.toml", b"a = " + b"[" * 100_000, "schema file .*deep.toml is not valid TOML"),
        ("huge.json", b'{"min": 1' + b"0" * 5000 + b"}", "schema file .*huge.json is not valid"),
        ("huge.toml", b"min = 1" + b"0" * 5000, "schema file .*huge.toml is not valid TOML"),
    ],
)
def test_every_failure_names_the_file(
    tmp_path: Path, name: str, content: bytes | str | None, message: str
) -> None:
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigurationError, match=message):
        read_config_file(path, "schema")


def test_toml_only_ignores_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "policy.cfg"
    path.write_text('allow = ["a.b"]')
    assert read_config_file(path, "policy", json_allowed=False) == {"allow": ["a.b"]}
    path.write_text('{"allow": []}')  # JSON is not TOML
    with pytest.raises(ConfigurationError, match="policy file .* is not valid TOML"):
        read_config_file(path, "policy", json_allowed=False)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".toml", ".json"]))
def test_arbitrary_bytes_parse_or_raise_a_configuration_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, suffix: str
) -> None:
    path = tmp_path_factory.mktemp("cfg") / f"f{suffix}"
    path.write_bytes(data)
    try:
        read_config_file(path, "alerts")
    except ConfigurationError as err:
        assert str(path) in str(err)
