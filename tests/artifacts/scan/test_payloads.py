"""Every malicious sample really runs under its loader, and the scanner refuses it."""

from __future__ import annotations

from pathlib import Path

import pytest

from _helpers import payloads
from bastion.artifacts.scan import Severity, Verdict, scan_file

from ._cli import run_cli

#: Kinds whose only import is outside the allowlist without being known-dangerous.
_UNKNOWN_ONLY = {"pickle-unknown-callable"}


@pytest.mark.parametrize("kind", payloads.ALL_KINDS)
def test_payload_fires_under_its_loader(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = payloads.build(kind, tmp_path, marker)
    assert not marker.exists()
    payloads.fire(kind, path, marker)
    assert marker.exists(), f"{kind}: the payload did not run under {payloads.LOADERS[kind]}"


@pytest.mark.parametrize("kind", payloads.ALL_KINDS)
def test_scanner_refuses_payload(kind: str, tmp_path: Path) -> None:
    path = payloads.build(kind, tmp_path, tmp_path / "MARKER")
    report = scan_file(path)
    expected = Verdict.UNKNOWN if kind in _UNKNOWN_ONLY else Verdict.UNSAFE
    assert report.verdict is expected, report.problems
    assert any(f.severity >= Severity.WARNING and f.kind.endswith(("import", "opcode"))
               for f in report.findings)
    assert run_cli("scan", str(path), "--format", "json") == 1
    assert not (tmp_path / "MARKER").exists()  # scanning never runs anything
