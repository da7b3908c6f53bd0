"""`bastion apikey create` and `bastion serve` through the real entry point (subprocesses)."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
from pathlib import Path

BASTION = [sys.executable, "-m", "bastion.cli.main"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BASTION, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_apikey_create_prints_once_stores_hash_owner_only_and_appends(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    first = _run("apikey", "create", "--keys", str(keys), "--name", "ci")
    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert key and "\n" not in key
    text = keys.read_text()
    assert key not in text  # only its digest is stored
    assert hashlib.sha256(key.encode()).hexdigest() in text
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    second = _run("apikey", "create", "--keys", str(keys), "--name", "ops")
    assert second.returncode == 0, second.stderr
    other = second.stdout.strip()
    assert other != key
    stored = json.loads(keys.read_text())
    entries = stored["keys"] if isinstance(stored, dict) else stored
    assert sorted(e["name"] for e in entries) == ["ci", "ops"]
    assert key not in keys.read_text() and other not in keys.read_text()


def test_apikey_create_without_a_name_exits_2(tmp_path: Path) -> None:
    result = _run("apikey", "create", "--keys", str(tmp_path / "k.json"))
    assert result.returncode == 2 and "--name" in result.stderr
    assert not (tmp_path / "k.json").exists()


def test_serve_without_keys_exits_2_with_the_hint(tmp_path: Path) -> None:
    result = _run("serve", "--model", "demo", "--keys", str(tmp_path / "missing.json"),
                  "--audit-log", str(tmp_path / "a.db"))
    assert result.returncode == 2, result.stderr
    assert "bastion apikey create" in result.stderr
    assert not (tmp_path / "a.db").exists()
