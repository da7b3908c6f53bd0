"""Prediction and detector monitors: definitions, functional/class agreement, the suite."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

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


@pytest.mark.parametrize(
    ("kind", "space"),
    [("confidence", "logits"), ("ENTROPY", "probabilities"), ("entropy", "Logits")],
)
def test_confidence_drift_options_by_name_are_the_options(kind: str, space: str) -> None:
    """Names are parsed at construction: same quantity, same reference and verdicts as the
    members (``space="logits"`` used to be read as probabilities, reference mean 0.89 vs
    0.61, and ``kind="confidence"`` to fit the entropy)."""
    g = torch.Generator().manual_seed(4)
    out = torch.randn(400, 3, generator=g)
    if space.lower() == "probabilities":
        out = torch.softmax(out, dim=1)
    x = out[:50] * 0.5
    members = (Uncertainty(kind.lower()), OutputSpace(space.lower()))
    by_name = ConfidenceDrift(kind=kind, space=space, calibration=CAL).fit(out)
    by_member = ConfidenceDrift(kind=members[0], space=members[1], calibration=CAL).fit(out)
    assert (by_name.kind, by_name.space) == members
    assert by_name.reference_mean == by_member.reference_mean
    assert by_name.threshold == by_member.threshold
    assert by_name.update(x).to_dict() == by_member.update(x).to_dict()
    assert torch.equal(uncertainty(out, kind, space), uncertainty(out, *members))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ConfidenceDrift(kind="margin"),
         "unknown uncertainty kind 'margin': use one of confidence, entropy"),
        (lambda: ConfidenceDrift(space="softmax"),
         "unknown output space 'softmax': use one of logits, probabilities"),
        (lambda: ConfidenceDrift(space=None), "unknown output space None"),
        (lambda: uncertainty(torch.zeros(1, 2), "variance"), "unknown uncertainty kind"),
        (lambda: ConfidenceDrift(max_reference=0), "max_reference must be an integer >= 2, got 0"),
        (lambda: ConfidenceDrift(max_reference=-1), "max_reference must be an integer >= 2"),
        (lambda: ConfidenceDrift(max_reference=True), "max_reference must be an integer"),
        (lambda: ClassDrift(num_classes=1), r"num_classes must be an integer in 2\.\.1048576"),
        (lambda: ClassDrift(num_classes="3"), "num_classes must be an integer .* got '3'"),
        (lambda: ClassDrift(num_classes=2.5), "num_classes must be an integer .* got 2.5"),
        (lambda: ClassDrift(num_classes=10**12), "num_classes must be an integer in 2"),
        (lambda: class_drift(torch.zeros(5), torch.zeros(5), num_classes=0), "num_classes"),
        (lambda: DetectorMonitor(None), "score_fn must be a callable .* got NoneType"),
        (lambda: DetectorMonitor(lambda x: x, false_positive_rate="0.1"),
         r"false_positive_rate must be a number in \(0, 1\), got '0.1'"),
        (lambda: DetectorMonitor(lambda x: x, false_positive_rate=math.nan),
         "false_positive_rate must be a number"),
        (lambda: MonitorSuite(["a"]), "item 0 is a str, not a monitor"),
        (lambda: MonitorSuite([KSDrift(), None]), "item 1 is a NoneType, not a monitor"),
        (lambda: MonitorSuite(KSDrift()), "takes a list of monitors, got KSDrift"),
        (lambda: MonitorSuite("ks"), "takes a list of monitors, got str"),
    ],
)
def test_prediction_monitor_arguments_are_checked_at_construction(
    make: Callable[[], object], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        make()


def test_a_suite_refuses_inputs_and_outputs_of_different_batches() -> None:
    g = torch.Generator().manual_seed(1)
    suite = MonitorSuite([KSDrift(calibration=CAL), ClassDrift(calibration=CAL)])
    with pytest.raises(InputValidationError, match="inputs have 600 samples but outputs 599"):
        suite.fit(torch.randn(600, 4, generator=g), torch.randn(599, 3, generator=g))
    suite.fit(torch.randn(600, 4, generator=g), torch.randn(600, 3, generator=g))
    before = suite.state()
    with pytest.raises(InputValidationError, match="inputs have 50 samples but outputs 49"):
        suite.update(torch.randn(50, 4, generator=g), torch.randn(49, 3, generator=g))
    assert suite.state() == before  # refused before any monitor saw the batch


def test_a_suite_of_a_generator_keeps_its_monitors() -> None:
    suite = MonitorSuite(m for m in [KSDrift(), ClassDrift()])  # read once, not twice
    assert [m.name for m in suite.monitors] == ["input_ks", "prediction_classes"]


@pytest.mark.parametrize(
    ("reference", "num_classes", "match"),
    [
        (torch.randint(-3, 0, (400,)), None, "labels must be >= 0, got -3"),
        (torch.full((400,), 10**12), None, r"label 1000000000000 is outside 0\.\.1048575"),
        (torch.arange(400) % 5, 4, r"label 4 is outside 0\.\.3 \(num_classes=4\)"),
        (torch.zeros(400, dtype=torch.long), None, "has 1 class"),
        (torch.randn(400, 1), None, "has 1 class"),
        (torch.randn(400, 3), 4, "have 3 columns, num_classes is 4"),
        (torch.full((400, 3), math.nan), None, "non-finite values"),
    ],
)
def test_class_drift_refuses_a_reference_it_cannot_count(
    reference: torch.Tensor, num_classes: int | None, match: str
) -> None:
    """Negative labels (bincount's RuntimeError), a label of 10**12 (an 8 TB allocation),
    a single class (silently num_classes=1), NaN logits: refused before anything is counted."""
    mon = ClassDrift(num_classes=num_classes, calibration=CAL)
    with pytest.raises(InputValidationError, match=match):
        mon.fit(reference)
    assert mon.num_classes == num_classes and not mon.fitted


def test_class_drift_refit_infers_the_class_count_again_unless_declared() -> None:
    g = torch.Generator().manual_seed(6)
    mon = ClassDrift(calibration=CAL).fit(torch.randn(400, 3, generator=g))
    assert mon.fit(torch.randn(400, 5, generator=g)).num_classes == 5
    assert mon.fit(torch.arange(400) % 4).num_classes == 4
    declared = ClassDrift(num_classes=6, calibration=CAL).fit(torch.arange(400) % 4)
    assert declared.num_classes == 6  # classes 4 and 5 are rare, not impossible
    with pytest.raises(InputValidationError, match="have 3 columns, the reference had 6"):
        declared.update(torch.randn(50, 3))
