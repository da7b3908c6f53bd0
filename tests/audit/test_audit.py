"""bastion audit: the Model file section on the demo and on a user's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from _helpers.payloads import build
from bastion.artifacts.keys import generate_keypair
from bastion.artifacts.sign import sign
from bastion.audit import CheckStatus, run_audit
from bastion.report import render_html, write_report


def _checks(file: object) -> dict[str, CheckStatus]:
    return {c.name: c.status for c in file.checks}  # type: ignore[attr-defined]


def test_demo_audit_signs_scans_and_loads_both_formats(tmp_path: Path, demo_cache: Path) -> None:
    from bastion.zoo import demo_model

    demo_state = demo_model(cache_dir=demo_cache).state_dict()
    report = run_audit(workdir=tmp_path / "audit", cache_dir=demo_cache)
    assert report.status is CheckStatus.PASS
    assert [s.title for s in report.sections] == ["Model file", "Runtime guard"]
    section = report.sections[0]
    formats = sorted(f.format for f in section.files)
    assert formats == ["safetensors", "torch-zip"]
    for file in section.files:
        assert _checks(file) == {"signature": CheckStatus.PASS, "scan": CheckStatus.PASS,
                                 "safe load": CheckStatus.PASS}
        assert file.tensors == len(demo_state)
    assert report.model_info["test_accuracy"] >= 0.9
    json_path, html_path = write_report(report, tmp_path / "audit")
    data = json.loads(json_path.read_text())
    assert data["status"] == "pass" and data["sections"][0]["title"] == "Model file"
    assert "Model file" in html_path.read_text()


def test_tampered_signed_file_fails_the_audit(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    torch.save({"w": torch.ones(3)}, model)
    keys = generate_keypair(tmp_path / "k.pem")
    sig = sign(model, keys.private_key)
    ok = run_audit(model, signature=sig, public_keys=keys.public_key)
    assert ok.status is CheckStatus.PASS
    data = bytearray(model.read_bytes())
    data[-40] ^= 1
    model.write_bytes(bytes(data))
    bad = run_audit(model, signature=sig, public_keys=keys.public_key)
    assert bad.status is CheckStatus.FAIL
    assert _checks(bad.sections[0].files[0])["signature"] is CheckStatus.FAIL


def test_unsigned_file_warns_and_malicious_file_fails(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    torch.save({"w": torch.ones(3)}, model)
    warn = run_audit(model)
    assert warn.status is CheckStatus.WARN
    assert any("Sign" in a for a in warn.sections[0].advice)
    marker = tmp_path / "MARKER"
    evil = build("torch-zip-extra-member", tmp_path, marker)
    bad = run_audit(evil)
    file = bad.sections[0].files[0]
    assert bad.status is CheckStatus.FAIL and file.verdict == "unsafe"
    assert _checks(file)["safe load"] is CheckStatus.SKIPPED
    assert not marker.exists()


def test_report_html_escapes_hostile_names(tmp_path: Path) -> None:
    model = tmp_path / "<img src=x onerror=alert(1)>.pkl"
    # an import whose module name is markup: it must come out as text
    model.write_bytes(b"\x80\x02c<script>alert(1)</script>\nNet\n)\x81.")
    report = run_audit(model)
    assert report.sections[0].files[0].verdict != "safe"
    html = render_html(report)
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x" in html


def test_cli_audit_demo_end_to_end(tmp_path: Path, demo_cache: Path) -> None:
    env = {**os.environ, "BASTION_CACHE_DIR": str(demo_cache)}
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", "audit", "--out", str(out),
         "--robustness", "20"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert (out / "report.json").exists() and (out / "report.html").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "pass"
    titles = [section["title"] for section in report["sections"]]
    assert titles == ["Model file", "Robustness", "Runtime guard"]
    robust = report["sections"][1]["result"]
    assert robust["clean_accuracy"] >= 0.9
    assert [p["eps"] for p in robust["curve"]] == [0.1, 0.2, 0.3]
    # an undefended CNN: the curve falls, and at eps 0.3 almost nothing survives
    assert robust["curve"][-1]["robust_accuracy"] <= 0.1 < robust["clean_accuracy"]
    assert "Robustness" in (out / "report.html").read_text()
    assert "Runtime guard" in run.stdout and "input_mmd" in run.stdout


def test_cli_audit_exit_codes(tmp_path: Path) -> None:
    evil = build("pickle-p4", tmp_path, tmp_path / "MARKER")
    run = subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", "audit", "--model", str(evil),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 1
    missing = subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", "audit", "--model", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=300,
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr
