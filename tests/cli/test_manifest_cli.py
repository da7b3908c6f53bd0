"""`bastion manifest`: record and check, with exit codes 0/1/2 through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.core.errors import ConfigurationError, IntegrityError

runner = CliRunner()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.txt").write_text("alpha")
    (root / "b.txt").write_text("beta")
    return root


def test_record_and_check(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "m.json"
    done = runner.invoke(app, ["manifest", str(data), "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert [f["path"] for f in json.loads(out.read_text())["files"]] == ["a.txt", "b.txt"]
    done = runner.invoke(app, ["manifest", "--check", str(out)])
    assert done.exit_code == 0 and "2 files match" in done.output
    (data / "b.txt").unlink()
    done = runner.invoke(app, ["manifest", "--check", str(out), "--root", str(data)])
    assert isinstance(done.exception, IntegrityError)
    assert "missing: b.txt" in str(done.exception)


def test_usage_errors(tmp_path: Path, data: Path) -> None:
    for args in (
        ["manifest", str(data)],  # no -o
        ["manifest", "--check", str(tmp_path / "m.json"), str(data)],
        ["manifest", str(data), "-o", str(tmp_path / "m.json"), "--root", str(data)],
    ):
        done = runner.invoke(app, args)
        assert isinstance(done.exception, ConfigurationError), args
    assert "--check" in runner.invoke(app, ["manifest", "--help"]).output


def test_exit_codes_through_main(tmp_path: Path, data: Path) -> None:
    out = data / "MANIFEST.json"
    cmd = [sys.executable, "-m", "bastion.cli.main", "manifest"]

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*cmd, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
        )
        done.stderr = " ".join(done.stderr.split())  # rich wraps at the terminal width
        return done

    assert run(data, "-o", out).returncode == 0
    assert run("--check", out).returncode == 0
    (data / "a.txt").write_text("ALPHA")
    done = run("--check", out)
    assert done.returncode == 1 and "changed: a.txt" in done.stderr
    out.write_text("{corrupt")
    done = run("--check", out)
    assert done.returncode == 1 and "not valid JSON" in done.stderr
    done = run("--check", tmp_path / "missing.json")
    assert done.returncode == 2 and "manifest not found" in done.stderr


def test_manifest_never_overwrites_a_data_file(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bastion.cli.main import main

    victim = next(p for p in sorted(data.rglob("*")) if p.is_file())
    before = victim.read_bytes()
    for out, match in [(victim, "would overwrite a file inside the dataset directory"),
                       (data, "is the dataset directory itself")]:
        with pytest.raises(SystemExit) as exc:
            main(["manifest", str(data), "-o", str(out)])
        assert exc.value.code == 2
        assert match in " ".join(capsys.readouterr().err.split())
    assert victim.read_bytes() == before
    inside = data / "MANIFEST.json"
    for _ in range(2):  # a new file inside, then the earlier manifest itself, may be written
        assert runner.invoke(app, ["manifest", str(data), "-o", str(inside)]).exit_code == 0
