"""Atomic writes: the old content or the new, never half; permissions as asked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bastion.core.atomic import atomic_open, atomic_write_bytes, atomic_write_text


def test_write_replaces_whole_file_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_bytes(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(target.parent) == ["f.txt"], "no temporary file left behind"


def test_failure_mid_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_unwritable_targets_are_configuration_errors_before_any_write(tmp_path: Path) -> None:
    from bastion.core.errors import ConfigurationError

    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"keep")
    cases = [
        (tmp_path / "dir", "it is a directory"),
        (tmp_path / "file" / "out.json", "its folder .*file cannot be created"),
        (Path("/proc/no-such-dir/out.json"), "its folder /proc/no-such-dir cannot be created"),
    ]
    for target, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            with atomic_open(target):
                pytest.fail("the caller must not get to write")  # pragma: no cover
    assert (tmp_path / "file").read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path)) == ["dir", "file"]


def test_a_name_near_the_length_limit_still_gets_a_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / ("a" * 250 + ".pt")  # 253 characters: '.<name>.XXXX.tmp' would not fit
    atomic_write_bytes(target, b"x")
    assert target.read_bytes() == b"x" and os.listdir(tmp_path) == [target.name]


def test_errors_of_the_caller_pass_through_unchanged(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="the caller's own"):
        with atomic_open(tmp_path / "f"):
            raise OSError("the caller's own")
    assert os.listdir(tmp_path) == []
