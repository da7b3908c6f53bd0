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
