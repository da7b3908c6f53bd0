"""The catastrophic-overfitting guard: it fires on a real collapse and restores better weights,
stays quiet on a well-behaved run, and each fallback (stop, pgd, continue) does what it says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bastion import ThreatModel
from bastion.train import EpochMetrics, fit
from bastion.train.overfit import Monitor, collapsed


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = (0.3 + 0.4 * y[:, None] + 0.1 * torch.randn(n, 4, generator=g)).clamp(0, 1)
    return x, y


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_collapse_rule() -> None:
    assert collapsed(0.05, 0.62) and collapsed(0.41, 0.62)
    assert not collapsed(0.42, 0.62) and not collapsed(0.9, 0.62)


def _scripted(robust: list[float]):  # type: ignore[no-untyped-def]
    """A stand-in for ``Monitor.measure`` returning a scripted PGD accuracy per epoch (the
    weights still train for real)."""
    queue = list(robust)

    def measure(self: Monitor, model: nn.Module, ctx: object) -> tuple[float, float]:
        return 0.9, queue.pop(0)

    return measure


def _run(monkeypatch: pytest.MonkeyPatch, fallback: str, robust: list[float],
         **extra: object) -> tuple[object, list[dict[str, torch.Tensor]]]:
    monkeypatch.setattr(Monitor, "measure", _scripted(robust))
    states: list[dict[str, torch.Tensor]] = []

    def keep(metrics: EpochMetrics) -> None:
        states.append({k: v.clone() for k, v in model.state_dict().items()})

    model = _mlp()
    result = fit(model, _blobs(), method="fgsm-rs", threat=ThreatModel(eps=0.1), epochs=4,
                 batch_size=32, lr=0.05, guard_fallback=fallback, progress=False,
                 on_epoch_end=keep, **extra)
    return result, states


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_fallback_stop_restores_the_best_epoch_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    result, states = _run(monkeypatch, "stop", [0.5, 0.6, 0.1, 0.6])
    assert result.stopped_reason == (
        "catastrophic overfitting at epoch 3 (PGD accuracy 60.0% -> 10.0%)")
    assert len(result.history) == 3 and result.best_epoch == 2
    assert _equal(states[2], states[1])  # after epoch 3: the weights of epoch 2
    assert _equal(result.model.state_dict(), states[1])


def test_fallback_pgd_switches_method_and_survives_resume(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result, _ = _run(monkeypatch, "pgd", [0.5, 0.6, 0.1, 0.6])
    assert result.stopped_reason is None
    assert [m.method for m in result.history] == ["fgsm-rs", "fgsm-rs", "fgsm-rs", "pgd"]
    assert len(result.guard_events) == 1 and "restored epoch 2, pgd" in result.guard_events[0]

    def interrupt(metrics: EpochMetrics) -> None:
        if metrics.epoch == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Monitor, "measure", _scripted([0.5, 0.6, 0.1]))
    cut = _mlp()
    with pytest.raises(KeyboardInterrupt):
        fit(cut, _blobs(), method="fgsm-rs", threat=ThreatModel(eps=0.1), epochs=4,
            batch_size=32, lr=0.05, guard_fallback="pgd", progress=False, out=tmp_path,
            on_epoch_end=interrupt)
    monkeypatch.setattr(Monitor, "measure", _scripted([0.6]))
    resumed = fit(_mlp(), _blobs(), method="fgsm-rs", threat=ThreatModel(eps=0.1), epochs=4,
                  batch_size=32, lr=0.05, guard_fallback="pgd", progress=False, out=tmp_path,
                  resume=True)
    assert resumed.history[-1].method == "pgd"
    assert _equal(resumed.model.state_dict(), result.model.state_dict())


def test_fallback_continue_restores_and_keeps_training(monkeypatch: pytest.MonkeyPatch) -> None:
    result, states = _run(monkeypatch, "continue", [0.5, 0.6, 0.1, 0.6])
    assert result.stopped_reason is None and len(result.history) == 4
    assert [m.method for m in result.history] == ["fgsm-rs"] * 4
    assert _equal(states[2], states[1]) and not _equal(states[3], states[2])


def test_guard_off_never_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    result, states = _run(monkeypatch, "stop", [0.5, 0.6, 0.1, 0.6], guard=False)
    assert result.stopped_reason is None and result.guard_events == ()
    assert not _equal(states[2], states[1])
