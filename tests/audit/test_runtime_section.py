"""The audit's Runtime guard section: measured calibration, shift detection, the server's schema,
and its rendering (HTML escaped, JSON with stable keys)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bastion.audit import AuditReport, CheckStatus, RuntimeGuardSection, runtime_guard_section
from bastion.audit.model_file import Check
from bastion.audit.runtime_guard import MonitorAudit, ProbeResult, _checks, _probes
from bastion.guard.schema import TensorSchema
from bastion.report import render_html, render_json


@pytest.fixture(scope="module")
def section(demo_cache: Path) -> RuntimeGuardSection:
    return runtime_guard_section(cache_dir=demo_cache)


def test_measured_false_alarm_rate_is_near_the_target(section: RuntimeGuardSection) -> None:
    assert {m.name for m in section.monitors} == {
        "input_mmd", "input_psi", "prediction_classes", "prediction_confidence"}
    for m in section.monitors:
        assert m.windows == 200 and m.window == 200 and m.test_every == 20
        assert m.target_false_alarm_rate == 0.05
        # within three binomial standard deviations of the target, on either side
        assert abs(m.measured_false_alarm_rate - m.target_false_alarm_rate) <= (
            m.tolerance - m.target_false_alarm_rate), m
    assert section.status is CheckStatus.PASS, section.checks


def test_false_alarm_rate_through_the_streaming_path(demo_cache: Path,
                                                     section: RuntimeGuardSection) -> None:
    """An independent check: fresh monitors, fed held-out clean windows through ``update``."""
    from bastion.data import load_mnist5k
    from bastion.serve.build import ModelSpec, guard_stages, load_model

    model = load_model(ModelSpec.parse("demo"), cache_dir=demo_cache)
    stages = guard_stages(model, ModelSpec.parse("demo"))
    x = load_mnist5k().x_train
    with torch.no_grad():
        logits = model(x)
    gen = torch.Generator().manual_seed(123)  # other windows than the section's
    alarms = {m.name: 0 for m in stages.monitors.monitors}
    trials = 60
    for _ in range(trials):
        stages.monitors.reset()
        idx = torch.randperm(len(x), generator=gen)[:200]
        for result in stages.monitors.update(x[idx], logits[idx]):
            assert result.evaluated
            alarms[result.name] += result.alarm
    measured = {m.name: m for m in section.monitors}
    for name, count in alarms.items():
        # the same calibration (up to float reductions: the section runs torch on one thread)
        assert measured[name].threshold == pytest.approx(stages.monitors[name].threshold, rel=1e-3)
        assert count / trials <= 0.05 + 3 * (0.05 * 0.95 / trials) ** 0.5 + 0.05, (name, count)


def test_shifted_streams_are_detected(section: RuntimeGuardSection) -> None:
    shifts = {s.name: s for s in section.shifts}
    assert set(shifts) == {"inverted", "noise", "one_class"}
    assert shifts["inverted"].schema_rejected == 1.0  # the z-score rule refuses every one
    assert shifts["noise"].schema_rejected < 0.05  # passes the schema...
    assert {"input_mmd", "input_psi"} <= set(shifts["noise"].monitors_fired)  # ...not the monitors
    assert shifts["one_class"].schema_rejected < 0.05
    assert "prediction_classes" in shifts["one_class"].monitors_fired
    detection = {m.name: m.detection for m in section.monitors}
    assert detection["prediction_classes"]["one_class"] == 1.0
    assert all(s.caught for s in section.shifts)


def test_the_schema_rejects_what_the_server_would_reject(section: RuntimeGuardSection,
                                                         demo_cache: Path) -> None:
    from bastion.data import load_mnist5k
    from bastion.serve.build import assemble
    from bastion.serve.limits import Refusal

    pipeline = assemble(model="demo", audit_log=None, cache_dir=demo_cache)
    assert TensorSchema.from_dict(section.schema) == pipeline.schema
    assert section.schema["shape"] == ["batch", 1, 28, 28]
    assert (section.schema["min"], section.schema["max"], section.schema["finite"]) == (
        0.0, 1.0, True)
    probes = _probes(load_mnist5k().x_test)
    assert [p.name for p in section.probes] == [name for name, _, _ in probes]
    for (name, x, _), probe in zip(probes, section.probes, strict=True):
        try:
            pipeline.infer(x)
            served = "accept"
        except Refusal as refusal:
            assert refusal.status == 422, name
            served = "reject"
        assert served == probe.verdict == probe.expected, name
    assert [p.verdict for p in section.probes] == ["accept"] + ["reject"] * 7
    assert section.clean_rejected == 0.0


def test_a_wrong_verdict_or_a_noisy_monitor_changes_the_status() -> None:
    def probe(status: CheckStatus) -> ProbeResult:
        return ProbeResult(name="one NaN pixel", samples=8, expected="reject", verdict="accept",
                           invalid=0.125, rules=("non_finite",), status=status)

    def monitor(rate: float) -> MonitorAudit:
        return MonitorAudit(name="m", kind="MMDDrift", watches="inputs", window=200,
                            test_every=20, target_false_alarm_rate=0.05, threshold=1.0,
                            measured_false_alarm_rate=rate, tolerance=0.1, windows=200,
                            detection={})

    ok = {c.name: c.status for c in _checks([probe(CheckStatus.PASS)], [monitor(0.05)], [], True)}
    assert set(ok.values()) == {CheckStatus.PASS}
    bad = {c.name: c for c in _checks([probe(CheckStatus.FAIL)], [monitor(0.2)], [], True)}
    assert bad["input schema"].status is CheckStatus.FAIL
    assert "one NaN pixel" in bad["input schema"].detail
    assert bad["monitor calibration"].status is CheckStatus.WARN
    assert "20.0%" in bad["monitor calibration"].detail


def _report(section: Any) -> AuditReport:
    return AuditReport(subject="demo", created="2026-11-23T00:00:00+00:00",
                       bastion_version="test", sections=(section,))


def test_html_and_json_show_the_section_escaped(section: RuntimeGuardSection) -> None:
    hostile = dataclasses.replace(
        section,
        model="<script>alert(1)</script>",
        advice=("<img src=x onerror=alert(1)>",),
        checks=(*section.checks, Check(name="x", status=CheckStatus.PASS, detail="a<b>c")),
    )
    html = render_html(_report(hostile))
    assert "Runtime guard" in html and "input_mmd" in html and "prediction_classes" in html
    assert "<script>alert(1)" not in html and "<img src=x" not in html and "a<b>c" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x" in html and "a&lt;b&gt;c" in html
    first = section.monitors[0]
    assert f"{100 * first.measured_false_alarm_rate:.1f}%" in html
    data = json.loads(render_json(_report(section)))
    part = data["sections"][0]
    assert part["kind"] == "runtime_guard" and part["status"] == "pass"
    assert part["title"] == "Runtime guard"
    assert part["monitors"][0]["measured_false_alarm_rate"] == first.measured_false_alarm_rate
    assert [r["name"] for r in part["alert_rules"]] == ["monitor_alarm"]
    assert part["output_checks"]["min_confidence"] == 0.5
    assert TensorSchema.from_dict(part["schema"]).shape == ("batch", 1, 28, 28)
