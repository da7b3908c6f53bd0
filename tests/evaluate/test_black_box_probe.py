"""The black-box attack after white-box ones: a probe of the survivors first, all of them only
when the probe breaks one (bastion.evaluate.curves)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion import ThreatModel
from bastion.evaluate import robustness


class _Linear(nn.Module):
    """Two classes split by the sign of the mean pixel; ``masked`` rounds the input first, so
    every input gradient is zero and only a gradient-free attack can move it."""

    def __init__(self, masked: bool) -> None:
        super().__init__()
        self.masked = masked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)
        if self.masked:
            z = torch.round(z * 16) / 16  # piecewise constant: zero gradient almost everywhere
        score = 8 * (z.mean(dim=1) - 0.5)
        return torch.stack([-score, score], dim=1)


def _data(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    level = torch.where(y == 1, 0.62, 0.38).view(-1, 1, 1, 1)
    x = (level + 0.02 * torch.rand(n, 1, 4, 4, generator=g)).clamp(0, 1)
    return x, y


def test_probe_that_breaks_nothing_spares_the_other_survivors() -> None:
    x, y = _data()
    result = robustness(_Linear(masked=False), (x, y), ThreatModel(eps=0.05), "pgd,square",
                        sanity=False, progress=False)
    assert result.clean_accuracy == 1.0 and result.robust_accuracy == 1.0  # margin 0.12 > eps
    square = result.attacks[1]
    assert square.attacked == 64 and square.broken == 0  # only the probe was attacked
    assert "did not run on the other 136" in square.note


def test_probe_that_breaks_a_sample_escalates_to_every_survivor() -> None:
    x, y = _data()
    result = robustness(_Linear(masked=True), (x, y), ThreatModel(eps=0.2), "pgd,square",
                        sanity=False, progress=False)
    pgd, square = result.attacks
    assert pgd.broken == 0  # zero gradients: PGD cannot move
    assert square.attacked == 200  # probe broke some, so it ran on all
    assert "so it ran on all" in square.note
    # the eps-ball reaches across the boundary for every sample, and Square finds it
    assert result.robust_accuracy <= 0.05


def test_black_box_alone_runs_on_every_sample() -> None:
    x, y = _data()
    result = robustness(_Linear(masked=False), (x, y), ThreatModel(eps=0.05), "square",
                        sanity=False, progress=False)
    assert result.attacks[0].attacked == 200 and result.attacks[0].note == ""


def test_the_default_ensemble_probes_its_tails_and_full_does_not() -> None:
    from bastion.evaluate.ensemble import default_ensemble

    threat = ThreatModel(eps=0.1)
    fast = [f(threat) for f in default_ensemble(10)[0]]
    full = [f(threat) for f in default_ensemble(10, full=True)[0]]
    assert [getattr(a, "targeted_classes", 0) for a in fast] == [0, 3, 6, 0]
    assert [getattr(a, "skip_targets", 0) for a in fast] == [0, 0, 3, 0]
    assert [getattr(a, "targeted_classes", 0) for a in full] == [0, 9, 0]
    # together the two APGD-T stages try exactly AutoAttack's 9 targets
    x, y = _data()
    result = robustness(_Linear(masked=False), (x, y), ThreatModel(eps=0.05), "full",
                        sanity=False, progress=False)
    assert all(a.attacked == 200 for a in result.attacks)  # no probe anywhere


@pytest.mark.parametrize(
    ("broken", "total", "passed"),
    [(0, 100, True), (1, 100, True), (2, 100, False), (2, 1000, True), (3, 1000, False),
     (1, 10, True)],
)
def test_black_box_check_follows_autoattack_but_forgives_one_sample(
    broken: int, total: int, passed: bool
) -> None:
    from bastion.evaluate.sanity import black_box_check

    check = black_box_check(total=total, black_box_after_white_box=broken)
    assert check.passed is passed
    assert ("not trusted" in check.detail) is not passed
