"""`bastion apikey create` and `bastion serve` through the real entry point (subprocesses)."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bastion.serve.auth import create_key

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


def _fails_cleanly(result: subprocess.CompletedProcess[str], match: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert re.search(match, result.stderr), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1  # one line


@pytest.mark.parametrize(
    ("where", "match"),
    [
        (".", "key file . is a directory"),
        ("file/k.json", "cannot create the folder of key file .*k.json: File exists"),
        ("/proc/k.json", "cannot write key file /proc/k.json: No such file"),
        ("deep.json", "key file .*deep.json is not valid JSON: nested too deeply"),
    ],
)
def test_apikey_create_reports_os_and_file_errors_in_one_line(tmp_path: Path, where: str,
                                                              match: str) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "deep.json").write_text("[" * 100_000)
    keys = where if where.startswith(("/", ".")) else str(tmp_path / where)
    _fails_cleanly(_run("apikey", "create", "--keys", keys, "--name", "a"), match)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (["--rate", "inf"], "rate_per_second must be a finite number > 0, got inf"),
        (["--host", "not a host"], "--host 'not a host' is not an address or a name"),
        (["--schema", "s.toml"], r"schema .*s.toml \(shape \(batch, 3\), dtype float32\) does "
         r"not fit the model: .*RuntimeError"),
        (["--reference", "ref.npz"], r"reference data .*ref.npz \(array 'x'\) has shape "
         r"\(20, 3\), dtype float32; the model expects shape \(N, 1, 28, 28\)"),
    ],
)
def test_serve_refuses_bad_options_before_serving(tmp_path: Path, options: list[str],
                                                  match: str) -> None:
    keys = tmp_path / "keys.json"
    create_key(keys, "a")
    (tmp_path / "s.toml").write_text('shape = ["batch", 3]')
    np.savez(tmp_path / "ref.npz", x=np.zeros((20, 3), np.float32))
    paths = [str(tmp_path / o) if o.endswith((".toml", ".npz")) else o for o in options]
    result = _run("serve", "--keys", str(keys), "--audit-log", str(tmp_path / "a.db"), *paths)
    _fails_cleanly(result, match)
    assert "serving" not in result.stderr and not (tmp_path / "a.db").exists()
