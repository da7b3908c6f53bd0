"""The harden loop: the ladder of strengthening steps, rounds kept, the target and the budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _helpers.models import digits_mlp
from bastion import ThreatModel
from bastion.core.errors import ConfigurationError
from bastion.data import load_digits
from bastion.train import TrainConfig, TrainMethod, fit
from bastion.train.harden import harden, strengthen

THREAT = ThreatModel(norm="linf", eps=0.1)




@pytest.fixture(scope="module")
def digits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    split = load_digits()
    return (split.x_train, split.y_train), (split.x_test, split.y_test)


@pytest.fixture(scope="module")
def plain(digits: tuple) -> torch.nn.Module:  # type: ignore[type-arg]
    torch.manual_seed(0)
    model = digits_mlp()
    fit(model, digits[0], epochs=15, lr=1e-2, progress=False)
    return model.eval()


def test_the_ladder_climbs_one_rung_at_a_time() -> None:
    threat = ThreatModel(norm="linf", eps=0.3)
    config, steps = TrainConfig(), []
    for _ in range(7):
        config, why = strengthen(config, threat, overfitted=False)
        steps.append((config.method.value, config.pgd_steps, config.epochs, why))
    assert [s[:3] for s in steps] == [
        ("fgsm-rs", 10, 10), ("pgd", 10, 10), ("pgd", 20, 10), ("pgd", 40, 10),
        ("trades", 40, 10), ("trades", 40, 20), ("trades", 40, 40),
    ]
    # a smaller training eps grows by half up to the threat model's, before any method change
    small = TrainConfig(method="fgsm-rs", threat=threat.with_eps(0.15))
    grown, why = strengthen(small, threat, overfitted=False)
    assert grown.method is TrainMethod.FGSM_RS and grown.threat is not None
    assert grown.threat.eps == pytest.approx(0.225) and "0.225" in why
    capped, _ = strengthen(grown, threat, overfitted=False)
    assert capped.threat is not None and capped.threat.eps == pytest.approx(0.3)
    # catastrophic overfitting skips straight to PGD-AT at the full eps
    jumped, why = strengthen(small, threat, overfitted=True)
    assert jumped.method is TrainMethod.PGD and "overfitted" in why
    assert jumped.threat is not None and jumped.threat.eps == 0.3


def test_rounds_raise_robust_accuracy_and_are_all_kept(
    digits: tuple, plain: torch.nn.Module, tmp_path: Path  # type: ignore[type-arg]
) -> None:
    before = [p.detach().clone() for p in plain.parameters()]
    best, result = harden(
        plain, digits[0], digits[1], threat=THREAT, target_robust_accuracy=0.99, rounds=2,
        epochs=4, start=TrainConfig(method="fgsm-rs", threat=THREAT, epochs=4, lr=1e-2),
        attacks="apgd-ce,apgd-t", eval_samples=200, out=tmp_path, progress=False,
    )
    assert all(torch.equal(a, b) for a, b in zip(before, plain.parameters(), strict=True))
    assert [r.round for r in result.rounds] == [0, 1, 2] and not result.met
    assert result.stopped == "all 2 rounds spent"
    base, first, second = result.rounds
    assert base.config is None and first.config is not None and second.config is not None
    assert first.config["method"] == "fgsm-rs" and second.config["method"] == "pgd"
    # adversarial training raised robust accuracy over the plain baseline, measured by PGD
    assert max(first.robust_accuracy, second.robust_accuracy) > base.robust_accuracy + 0.2
    assert result.best_round in (1, 2)
    # the best model is the one the result names, and every round's files exist
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in best.state_dict().items())
    for r in result.rounds:
        assert r.model_path is not None and Path(r.model_path).is_file()
    summary = json.loads((tmp_path / "harden.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert (tmp_path / "round-01" / "train" / "metrics.jsonl").is_file()


def test_stops_when_the_target_is_met(digits: tuple, plain: torch.nn.Module) -> None:  # type: ignore[type-arg]
    _, result = harden(
        plain, digits[0], digits[1], threat=THREAT, target_robust_accuracy=0.55, rounds=3,
        start=TrainConfig(method="pgd", threat=THREAT, epochs=4, lr=1e-2), attacks="apgd-ce,apgd-t",
        eval_samples=200, progress=False,
    )
    assert result.met and result.stopped == "target met in round 1"
    base, first = result.rounds
    assert first.robust_accuracy >= 0.55 > base.robust_accuracy


def test_a_spent_time_budget_starts_no_round(digits: tuple, plain: torch.nn.Module) -> None:  # type: ignore[type-arg]
    _, result = harden(plain, digits[0], digits[1], threat=THREAT, target_robust_accuracy=0.99,
                       budget_seconds=1e-9, attacks="fgsm", eval_samples=50, progress=False)
    assert len(result.rounds) == 1 and "time budget" in result.stopped


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_robust_accuracy": 1.5}, "share in \\[0, 1\\]"),
        ({"rounds": 0}, "rounds must be a positive integer"),
        ({"budget_seconds": -1.0}, "budget_seconds must be positive"),
        ({"eval_samples": 0}, "eval_samples must be a positive integer"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(
    digits: tuple, kwargs: dict, match: str, tmp_path: Path  # type: ignore[type-arg]
) -> None:
    args = {"threat": THREAT, "target_robust_accuracy": 0.5, "out": tmp_path / "h"} | kwargs
    with pytest.raises(ConfigurationError, match=match):
        harden(digits_mlp(), digits[0], digits[1], **args)
    assert not (tmp_path / "h").exists()
