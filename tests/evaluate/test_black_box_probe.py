"""Refining stages (a black box after white-box attacks) probe the survivors in rounds, closest to
the decision boundary first, and go on only while they break samples (bastion.evaluate.curves)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
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
    # only the first round (32 closest + 32 random) was attacked
    assert square.attacked == 64 and square.broken == 0
    assert "did not run on the other 136" in square.note


def test_probe_that_breaks_a_sample_escalates_to_every_survivor() -> None:
    x, y = _data()
    result = robustness(_Linear(masked=True), (x, y), ThreatModel(eps=0.2), "pgd,square",
                        sanity=False, progress=False)
    pgd, square = result.attacks
    assert pgd.broken == 0  # zero gradients: PGD cannot move
    # every round breaks samples (masking hides them from PGD, not from Square): it reaches all
    assert square.attacked == 200
    assert "every survivor" in square.note
    # the eps-ball reaches across the boundary for every sample, and Square finds it
    assert result.robust_accuracy <= 0.05


def _near_boundary_data(
    n: int = 200, near: int = 30
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples at mean-pixel distance 0.12 from the boundary, but ``near`` of them (at random
    positions) only 0.02 away; returns x, y and the mask of the near ones."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (n,), generator=g)
    is_near = torch.zeros(n, dtype=torch.bool)
    is_near[torch.randperm(n, generator=g)[:near]] = True
    gap = torch.where(is_near, 0.02, 0.12)
    level = torch.where(y == 1, 0.5 + gap, 0.5 - gap).view(-1, 1, 1, 1)
    return level.expand(n, 1, 4, 4).clone(), y, is_near


def test_probe_rounds_follow_the_margin_and_find_every_breakable_sample() -> None:
    from bastion.attacks import PGD, Square

    # a white-box stage that cannot move (one step of 1e-6) still ranks samples by margin; the
    # black box then breaks exactly the near ones (distance 0.02 < eps 0.05 < 0.12)
    x, y, is_near = _near_boundary_data()
    stages = [lambda t: PGD(threat=t, steps=1, step_size=1e-6, random_start=False),
              lambda t: Square(threat=t, queries=200)]
    result = robustness(_Linear(masked=False), (x, y), ThreatModel(eps=0.05), stages,
                        sanity=False, progress=False)
    pgd, square = result.attacks
    assert pgd.broken == 0
    assert square.broken == int(is_near.sum()) == 30  # every breakable sample found
    assert result.robust_accuracy == pytest.approx(170 / 200)
    # a first round of the 32 closest (the 30 near, 2 far) and 32 random far ones, then one
    # round of 16 in margin order that breaks none: far fewer than the 200 survivors
    assert square.attacked == 80
    assert "until a round broke none" in square.note
    assert "did not run on the other 120" in square.note


def _fake_attack(breakable: torch.Tensor, log: list[torch.Tensor]):  # type: ignore[no-untyped-def]
    def attack(batch: torch.Tensor) -> torch.Tensor:
        log.append(batch)
        return batch[breakable[batch]]
    return attack


def test_a_break_far_from_the_boundary_sends_the_stage_to_every_survivor() -> None:
    from bastion.evaluate.curves import _probe

    closest = torch.arange(100, dtype=torch.float32)  # sample i has margin i
    log: list[torch.Tensor] = []
    note, near, head = _probe(_fake_attack(torch.arange(100) >= 50, log), torch.arange(100),
                              closest, 16, 0)
    assert sorted(torch.cat(log).tolist()) == list(range(100))  # each attacked exactly once
    assert len(log) == 2 and "far from the boundary" in note
    assert near == 0 and head == 32  # the 32 closest (margins 0-31) were not breakable


def test_rounds_stop_at_the_first_that_breaks_none() -> None:
    from bastion.evaluate.curves import _probe

    closest = torch.arange(100, dtype=torch.float32).flip(0)  # sample 99 is the closest
    log: list[torch.Tensor] = []
    note, near, head = _probe(_fake_attack(torch.arange(100) >= 80, log), torch.arange(100),
                              closest, 16, 0)
    assert near == 20 and head == 32  # the first round's 32 closest (99 to 68): 20 breakable
    seen = torch.cat(log)
    assert set(range(80, 100)) <= set(seen.tolist())  # every breakable sample reached
    assert seen.unique().numel() == seen.numel() < 100  # none twice, not all
    last = log[-1]
    assert not bool((last >= 80).any())  # the last round broke none ...
    assert bool((log[-2] >= 80).any())  # ... and the one before it did
    assert "until a round broke none" in note


def test_square_alone_breaks_exactly_the_near_samples() -> None:
    # the ground truth the margin-order test relies on: run on every sample, Square breaks the
    # same number as there are near ones (30)
    x, y, is_near = _near_boundary_data()
    result = robustness(_Linear(masked=False), (x, y), ThreatModel(eps=0.05), "square",
                        sanity=False, progress=False)
    assert result.attacks[0].attacked == 200  # a black box alone runs on every sample
    assert result.attacks[0].broken == 30


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


def test_black_box_check_leaves_out_breaks_next_to_the_boundary() -> None:
    from bastion.evaluate.sanity import black_box_check

    check = black_box_check(total=500, black_box_after_white_box=1, near_boundary=3)
    assert check.passed and "3 of those they left closest to the boundary" in check.detail
    assert not black_box_check(total=500, black_box_after_white_box=2, near_boundary=3).passed


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


@pytest.mark.parametrize(
    ("broken", "attacked", "total", "passed"),
    # 0.2% of 10,000 samples allows 20 breaks, but 3 of 64 attacked at a 0.2% rate has a
    # binomial tail of 3e-4 (< 1e-3); 2 of 64 (8e-3) and 3 of 1000 attacked (0.32) pass
    [(3, 64, 10_000, False), (2, 64, 10_000, True), (3, 1000, 10_000, True),
     (2, 64, 100, False)],
)
def test_black_box_check_judges_breaks_per_attacked_sample(
    broken: int, attacked: int, total: int, passed: bool
) -> None:
    from bastion.evaluate.sanity import black_box_check

    check = black_box_check(total=total, black_box_after_white_box=broken, attacked=attacked)
    assert check.passed is passed, check.detail
    assert f"of {attacked} at a 0.2% rate" in check.detail


class _Stealth(nn.Module):
    """A decoy for the white-box attacks: the trained MLP's decision, piecewise constant (a
    one-hot of its argmax, zero gradient), plus a small smooth random term whose gradient and
    margins say nothing about that decision (so the probe's closeness order is random)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        torch.manual_seed(7)  # a decoy the old 12-closest + 4-random probe missed entirely
        self.decoy = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)
        return 10 * F.one_hot(z.argmax(1).detach(), 10).float() + 1e-2 * self.decoy(x)


@pytest.mark.parametrize("stealth", [True, False])
def test_default_ensemble_flags_a_decoy_and_passes_the_honest_model(stealth: bool) -> None:
    from _helpers.models import trained_digits_mlp

    model, x, y = trained_digits_mlp()
    judged = _Stealth(model) if stealth else model
    result = robustness(judged, (x, y), ThreatModel(eps=0.1), progress=False, sanity_samples=40)
    check = {c.check: c for c in result.sanity}["black box"]
    assert check.passed is not stealth, check.detail
    assert result.gradient_masking_suspected is stealth
