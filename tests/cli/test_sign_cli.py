"""`bastion keygen/sign/verify`: CliRunner for behaviour, real subprocesses for exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.core.errors import ConfigurationError, IntegrityError, SignatureError

runner = CliRunner()


def _bastion(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # rich wraps messages at the terminal width; compare on single-spaced text
    done.stderr = " ".join(done.stderr.split())
    return done


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    root.mkdir()
    (root / "weights.bin").write_bytes(bytes(range(256)) * 8)
    (root / "config.json").write_text("{}")
    return root


def test_keygen_sign_verify_roundtrip(tmp_path: Path, model: Path) -> None:
    key = tmp_path / "k.pem"
    done = runner.invoke(app, ["keygen", str(key)])
    assert done.exit_code == 0, done.output
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert (tmp_path / "k.pub.pem").is_file()
    done = runner.invoke(app, ["sign", str(model), "--key", str(key)])
    assert done.exit_code == 0, done.output
    assert (model / "model.sig").is_file()
    done = runner.invoke(
        app, ["verify", str(model), "--key", str(tmp_path / "k.pub.pem"), "--json"]
    )
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert sorted(result["files"]) == ["config.json", "weights.bin"]
    assert result["key"] == str(tmp_path / "k.pub.pem")


def test_cli_errors_are_bastion_errors(tmp_path: Path, model: Path) -> None:
    key = tmp_path / "k.pem"
    assert runner.invoke(app, ["keygen", str(key)]).exit_code == 0
    again = runner.invoke(app, ["keygen", str(key)])
    assert isinstance(again.exception, ConfigurationError)
    assert runner.invoke(app, ["keygen", str(key), "--force"]).exit_code == 0
    sig = tmp_path / "out.sig"
    assert runner.invoke(app, ["sign", str(model), "-k", str(key), "-s", str(sig)]).exit_code == 0
    pub = str(tmp_path / "k.pub.pem")
    (model / "weights.bin").write_bytes(b"tampered")
    done = runner.invoke(app, ["verify", str(model), "-k", pub, "-s", str(sig)])
    assert isinstance(done.exception, IntegrityError)
    assert "weights.bin" in str(done.exception)
    other = tmp_path / "other.pem"
    assert runner.invoke(app, ["keygen", str(other)]).exit_code == 0
    done = runner.invoke(
        app, ["verify", str(model), "-k", str(tmp_path / "other.pub.pem"), "-s", str(sig)]
    )
    assert isinstance(done.exception, SignatureError)
    assert runner.invoke(app, ["sign", str(model)]).exit_code == 2  # --key is required


def test_help_documents_every_option() -> None:
    for command in ("keygen", "sign", "verify"):
        done = runner.invoke(app, [command, "--help"])
        assert done.exit_code == 0
        assert "Example" in done.output
    assert "--force" in runner.invoke(app, ["keygen", "--help"]).output


def test_exit_codes_through_main(tmp_path: Path, model: Path) -> None:
    key = tmp_path / "k.pem"
    done = _bastion("keygen", key)
    assert done.returncode == 0, done.stderr
    done = _bastion("keygen", key)
    assert done.returncode == 2 and "refusing to overwrite" in done.stderr
    assert _bastion("sign", model, "--key", key).returncode == 0
    pub = tmp_path / "k.pub.pem"
    done = _bastion("verify", model, "--key", pub)
    assert done.returncode == 0 and "verified" in done.stdout
    (model / "config.json").write_text('{"evil": true}')
    done = _bastion("verify", model, "--key", pub)
    assert done.returncode == 1
    assert "config.json" in done.stderr and "Traceback" not in done.stderr
    (model / "model.sig").write_text("garbage")
    done = _bastion("verify", model, "--key", pub)
    assert done.returncode == 1 and "not a valid OpenSSF Model Signing bundle" in done.stderr
    done = _bastion("verify", model, "--key", pub, "--signature", tmp_path / "missing.sig")
    assert done.returncode == 2 and "signature file not found" in done.stderr


def test_signature_never_overwrites_an_input(tmp_path: Path, model: Path) -> None:
    key = tmp_path / "k.pem"
    assert runner.invoke(app, ["keygen", str(key)]).exit_code == 0
    single = model / "weights.bin"
    other = tmp_path / "other.pt"
    other.write_bytes(b"another model")
    cases = [
        ([str(single), "-k", str(key), "-s", str(key)], "is the private key itself"),
        ([str(single), "-k", str(key), "-s", str(single)], "is the model itself"),
        ([str(single), "-k", str(key), "-s", str(other)], "not a signature bundle"),
        ([str(model), "-k", str(key), "-s", str(model / "config.json")], "inside the model"),
    ]
    before = {p: p.read_bytes() for p in (key, single, other, model / "config.json")}
    for args, match in cases:
        done = runner.invoke(app, ["sign", *args])
        assert isinstance(done.exception, ConfigurationError), args
        assert match in str(done.exception), (args, str(done.exception))
    assert {p: p.read_bytes() for p in before} == before
    sig = tmp_path / "m.sig"
    for _ in range(2):  # an earlier signature may be replaced
        done = runner.invoke(app, ["sign", str(model), "-k", str(key), "-s", str(sig)])
        assert done.exit_code == 0, done.output


def test_verify_escapes_control_characters_in_names(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    assert runner.invoke(app, ["keygen", str(key)]).exit_code == 0
    odd = tmp_path / "a\x1b]0;PWNED\x07b.bin"
    odd.write_bytes(b"weights")
    assert runner.invoke(app, ["sign", str(odd), "-k", str(key)]).exit_code == 0
    done = runner.invoke(app, ["verify", str(odd), "-k", str(tmp_path / "k.pub.pem")])
    assert done.exit_code == 0, done.output
    assert "\x1b" not in done.output and "\x07" not in done.output
    assert "a\\x1b]0;PWNED\\x07b.bin" in done.output
