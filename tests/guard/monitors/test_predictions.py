"""Prediction and detector monitors: definitions, functional/class agreement, the suite."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy import stats

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard.monitors import (
    Calibration,
    ClassDrift,
    ConfidenceDrift,
    Correction,
    DetectorMonitor,
    KSDrift,
    MonitorSuite,
    OutputSpace,
    Uncertainty,
    class_drift,
    exceedance_test,
    ks_drift,
    uncertainty,
)

CAL = Calibration(window=50, n_windows=40, test_every=50)


def test_uncertainty_definitions() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    p = torch.softmax(logits, dim=1)
    torch.testing.assert_close(uncertainty(logits), p.max(dim=1).values)
    entropy = torch.tensor([float(stats.entropy(row)) for row in p.numpy()])
    torch.testing.assert_close(uncertainty(logits, Uncertainty.ENTROPY), entropy)
    torch.testing.assert_close(
        uncertainty(p, Uncertainty.ENTROPY, OutputSpace.PROBABILITIES), entropy
    )
    with pytest.raises(InputValidationError, match=r"\(B, C\)"):
        uncertainty(torch.zeros(3))


def test_class_drift_matches_scipy_chisquare() -> None:
    ref = torch.arange(1000) % 4
    preds = torch.tensor([0] * 40 + [1] * 20 + [2] * 20 + [3] * 20)
    out = class_drift(ref, preds, num_classes=4)
    expected = stats.chisquare([40, 20, 20, 20], [25, 25, 25, 25])
    assert out.statistic == pytest.approx(expected.statistic, rel=1e-9)
    assert out.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert out.detail["most_changed_class"] == 0


def test_prediction_functional_and_class_forms_agree() -> None:
    g = torch.Generator().manual_seed(0)
    ref, x = torch.randn(400, 3, generator=g), torch.randn(50, 3, generator=g) * 0.5
    part = ref[CAL.split(400)[0]]
    cd = ClassDrift(calibration=CAL).fit(ref)
    assert cd.num_classes == 3
    assert float(cd.score(x)) == pytest.approx(class_drift(part, x, num_classes=3).statistic)
    cf = ConfidenceDrift(kind=Uncertainty.ENTROPY, calibration=CAL).fit(ref)
    direct = ks_drift(
        uncertainty(part, Uncertainty.ENTROPY)[:, None],
        uncertainty(x, Uncertainty.ENTROPY)[:, None],
        correction=Correction.NONE,
    )
    assert float(cf.score(x)) == pytest.approx(direct.statistic, rel=1e-12)
    with pytest.raises(InputValidationError, match=r"in 0\.\.1"):
        ClassDrift(num_classes=2, calibration=CAL).fit(torch.arange(400) % 2).update(
            torch.full((5,), 7)
        )


def test_detector_monitor_flags_at_the_chosen_false_positive_rate() -> None:
    g = torch.Generator().manual_seed(2)
    mon = DetectorMonitor(lambda x: x.norm(dim=1), false_positive_rate=0.1, calibration=CAL).fit(
        torch.randn(4000, 6, generator=g)
    )
    clean_rate = float(mon.flags(torch.randn(20000, 6, generator=g)).float().mean())
    assert abs(clean_rate - 0.1) < 0.02  # threshold estimated from 2000 reference scores
    assert mon.score(torch.randn(7, 6)).shape == (7,)
    assert mon.threshold == mon.sample_threshold and mon.window_threshold < 1.0
    res = exceedance_test(torch.tensor([0.0, 2.0, 3.0, 0.5]), 1.0, 0.1)
    assert res.statistic == 0.5 and res.p_value == pytest.approx(stats.binom.sf(1, 4, 0.1))
    with pytest.raises(InputValidationError, match="one score per sample"):
        DetectorMonitor(lambda x: x.sum(), calibration=CAL).fit(torch.randn(400, 2))
    with pytest.raises(ConfigurationError, match="false_positive_rate"):
        DetectorMonitor(lambda x: x, false_positive_rate=0.0)


def test_suite_routes_inputs_and_outputs_and_reports_state() -> None:
    g = torch.Generator().manual_seed(0)
    x, logits = torch.randn(600, 4, generator=g), torch.randn(600, 3, generator=g)
    suite = MonitorSuite(
        [KSDrift(calibration=CAL), ClassDrift(calibration=CAL), ConfidenceDrift(calibration=CAL)]
    ).fit(x, logits)
    results = suite.update(torch.randn(50, 4, generator=g) + 2, torch.randn(50, 3, generator=g))
    assert [r.name for r in results] == ["input_ks", "prediction_classes", "prediction_confidence"]
    assert results[0].alarm and all(r.evaluated for r in results)
    state = json.loads(json.dumps(suite.state(), allow_nan=False))
    assert "input_ks" in state["alarms"]
    ks = state["monitors"]["input_ks"]
    assert ks["window"] == 50 and ks["samples_seen"] == 50 and ks["last"]["alarm"] is True
    assert math.isfinite(ks["threshold"]) and suite.results() == results
    assert suite["prediction_classes"].num_classes == 3
    with pytest.raises(ConfigurationError, match="pass outputs"):
        suite.update(torch.randn(5, 4))
    with pytest.raises(ConfigurationError, match="unique"):
        MonitorSuite([KSDrift(), KSDrift()])
    suite.reset()
    assert suite.state()["monitors"]["input_ks"]["last"] is None
