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
        ("dir.json", "dir", "schema file .*dir.json is not a regular file"),
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


def test_special_and_huge_files_are_refused_without_reading_them(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "rules.toml"
    os.mkfifo(fifo)  # nobody writes: a blocking open or read would hang the test
    with pytest.raises(ConfigurationError, match="rules.toml is not a regular file"):
        read_config_file(fifo, "alerts")
    with pytest.raises(ConfigurationError, match="/dev/zero is not a regular file"):
        read_config_file("/dev/zero", "policy", json_allowed=False)
    big = tmp_path / "big.json"
    big.write_bytes(b"[" + b"0," * (9 << 20) + b"0]")  # 18 MiB of valid JSON
    with pytest.raises(ConfigurationError, match="big.json is larger than 16 MiB"):
        read_config_file(big, "schema")


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
