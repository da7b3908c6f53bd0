"""fit: the loop's contract (overrides, errors before any work, determinism, metrics files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bastion import ThreatModel
from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.train import EpochMetrics, TrainConfig, TrainMethod, TrainResult, fit


@pytest.fixture(autouse=True)
def one_thread():
    """Two cores are shared: one intra-op thread avoids spinning against other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[0.2, 0.2, 0.5, 0.5], [0.8, 0.2, 0.5, 0.5], [0.5, 0.8, 0.5, 0.5]])
    x = (centres[y] + 0.08 * torch.randn(n, 4, generator=g)).clamp(0, 1)
    return x, y


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def test_overrides_make_the_config_and_the_run_learns() -> None:
    x, y = _blobs()
    model = _mlp()
    result = fit(model, (x, y), method="pgd", threat=ThreatModel(eps=0.05), epochs=3,
                 batch_size=32, lr=0.02, pgd_steps=3, progress=False)
    assert isinstance(result, TrainResult)
    assert result.config.method is TrainMethod.PGD and result.config.epochs == 3
    assert [m.epoch for m in result.history] == [1, 2, 3]
    assert all(isinstance(m, EpochMetrics) for m in result.history)
    assert result.history[-1].clean_accuracy > 0.9
    assert result.history[-1].robust_accuracy is not None
    assert result.model is model
    assert "model" not in result.to_dict()
    json.loads(result.to_json())


def test_unknown_override_is_named() -> None:
    with pytest.raises(ConfigurationError, match="epochz"):
        fit(_mlp(), _blobs(), epochz=3, progress=False)


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    x, y = _blobs()
    states = []
    for _ in range(2):
        model = _mlp()
        before = torch.get_rng_state()
        fit(model, (x, y), method="fgsm-rs", threat=ThreatModel(eps=0.05), epochs=2,
            batch_size=32, lr=0.02, progress=False, noise_sigma=0.05)
        assert torch.equal(before, torch.get_rng_state())
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    model = _mlp()
    fit(model, (x, y), method="fgsm-rs", threat=ThreatModel(eps=0.05), epochs=2, batch_size=32,
        lr=0.02, progress=False, noise_sigma=0.05, seed=1)
    assert not torch.equal(model.state_dict()["0.weight"], states[0]["0.weight"])


def test_metrics_jsonl_one_line_per_epoch(tmp_path: Path) -> None:
    fit(_mlp(), _blobs(), epochs=2, batch_size=64, out=tmp_path, progress=False)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert json.loads((tmp_path / "train.json").read_text())["config"]["epochs"] == 2


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "match"),
    [
        ((torch.rand(0, 4), torch.zeros(0, dtype=torch.long)), {}, InputValidationError,
         "no samples"),
        ((torch.rand(8, 4), torch.full((8,), 5)), {}, InputValidationError, "out of range"),
        ((torch.rand(8, 4) + 2, torch.zeros(8, dtype=torch.long)),
         {"method": "pgd", "threat": ThreatModel(eps=0.1)}, InputValidationError, "bounds"),
        ((torch.rand(8, 4), torch.zeros(7, dtype=torch.long)), {}, InputValidationError,
         "shape"),
        ((torch.rand(8, 4), torch.full((8, 3), 0.5)), {}, InputValidationError, "sums to 1.5"),
        ((torch.rand(8, 4), torch.full((8, 3), 1 / 3)),
         {"method": "pgd", "threat": ThreatModel(eps=0.1)}, ConfigurationError, "soft labels"),
        ((torch.rand(8, 5), torch.zeros(8, dtype=torch.long)), {}, InputValidationError,
         "cannot take inputs"),
        ("nonsense", {}, ConfigurationError, "data"),
    ],
)
def test_bad_inputs_fail_before_any_file(tmp_path: Path, data: object, kwargs: dict[str, object],
                                         error: type[Exception], match: str) -> None:
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        fit(model, data, epochs=1, out=tmp_path / "run", progress=False, **kwargs)
    assert not (tmp_path / "run").exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_config_object_and_resume_without_out() -> None:
    config = TrainConfig(epochs=1, batch_size=64)
    assert fit(_mlp(), _blobs(), config=config, progress=False).config == config
    with pytest.raises(ConfigurationError, match="out="):
        fit(_mlp(), _blobs(), config=config, resume=True, progress=False)
