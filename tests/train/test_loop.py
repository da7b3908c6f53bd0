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


# -- TrainConfig validation: a property test -----------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_JUNK = st.one_of(
    st.text(max_size=8), st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_INVALID: dict[str, st.SearchStrategy[object]] = {
    "method": st.text(max_size=8).filter(
        lambda s: s.strip().lower().replace("_", "-") not in {"none", "pgd", "fgsm-rs", "trades"}),
    "epochs": st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), st.text()),
    "batch_size": st.one_of(st.integers(max_value=0), st.floats(), st.none()),
    "lr": st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.just(float("inf")),
                    st.text(), st.none()),
    "momentum": st.one_of(st.floats(min_value=1.0001), st.floats(max_value=-1e-9),
                          st.just(float("nan"))),
    "mix": st.one_of(st.floats(min_value=1.0001), st.floats(max_value=-1e-9), st.text()),
    "noise_sigma": st.one_of(st.floats(max_value=-1e-9), st.just(float("inf"))),
    "temperature": st.one_of(st.floats(max_value=0.0), st.just(float("nan"))),
    "pgd_step_size": st.one_of(st.floats(max_value=0.0), st.text(min_size=1)),
    "clip_grad": st.one_of(st.floats(max_value=0.0), st.lists(st.floats(), min_size=1)),
    "guard": st.one_of(st.integers(), st.text(), st.floats()),
    "guard_fallback": st.text(max_size=8).filter(
        lambda s: s.strip().lower() not in {"stop", "pgd", "continue"}),
    "optimizer": _JUNK.filter(lambda v: not (isinstance(v, str)
                                             and v.strip().lower() in {"sgd", "adam"})),
    "seed": st.one_of(st.integers(max_value=-1), st.floats(), st.text()),
    "threat": st.one_of(st.integers(), st.text(), st.lists(st.floats(), max_size=2),
                        st.fixed_dictionaries({"eps": st.floats(max_value=-1e-9)}),
                        st.fixed_dictionaries({"bounds": st.just([1.0, 0.0])}),
                        st.fixed_dictionaries({"norm": st.just("l7")})),
}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_INVALID)).flatmap(
    lambda name: st.tuples(st.just(name), _INVALID[name])))
def test_invalid_config_values_always_raise_configuration_error(case: tuple[str, object]) -> None:
    name, value = case
    base: dict[str, object] = {"method": "pgd", "threat": ThreatModel(eps=0.1)}
    with pytest.raises(ConfigurationError, match=name.split("_")[0] if name != "method"
                       else "method"):
        TrainConfig(**{**base, name: value})  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(
    method=st.sampled_from(["none", "pgd", "fgsm-rs", "trades"]),
    eps=st.floats(min_value=1e-3, max_value=1.0),
    lr=st.floats(min_value=1e-6, max_value=1.0),
    mix=st.floats(min_value=0.0, max_value=1.0),
    schedule=st.sampled_from(["constant", "cyclic", "step", "cosine"]),
    epochs=st.integers(1, 50),
)
def test_valid_configs_round_trip_through_json(method: str, eps: float, lr: float, mix: float,
                                               schedule: str, epochs: int) -> None:
    config = TrainConfig(method=method, threat=ThreatModel(eps=eps), lr=lr, mix=mix,
                         schedule=schedule, epochs=epochs)
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    steps = 3
    rates = [config.lr_at(s, steps) for s in range(epochs * steps)]
    assert all(0.0 <= r <= lr * (1 + 1e-12) for r in rates)


def test_unknown_config_fields_and_guard_without_threat() -> None:
    with pytest.raises(ConfigurationError, match="unknown field.*colour"):
        TrainConfig.from_dict({"colour": "red"})
    with pytest.raises(ConfigurationError, match="threat"):
        TrainConfig(method="fgsm-rs")
    with pytest.raises(ConfigurationError, match="guard"):
        TrainConfig(guard=True)
    assert TrainConfig(method="fgsm-rs", threat=ThreatModel(eps=0.1)).guard_enabled
    assert not TrainConfig(method="pgd", threat=ThreatModel(eps=0.1)).guard_enabled


# -- schema, validation data, progress ---------------------------------------------------------


def _dirty() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _blobs(96)
    x[3, 1] = float("nan")
    x[10, 0] = 7.0
    return x, y


def test_schema_reject_drops_the_invalid_samples_and_counts_them(tmp_path: Path) -> None:
    from bastion.guard import InputGuard, TensorSchema

    schema = TensorSchema(shape=("batch", 4), min=0.0, max=1.0)
    result = fit(_mlp(), _dirty(), schema=schema, epochs=1, batch_size=32, progress=False)
    assert (result.samples, result.rejected_samples, result.repaired_samples) == (94, 2, 0)
    repaired = fit(_mlp(), _dirty(), schema=InputGuard(schema, policy="repair"), epochs=1,
                   batch_size=32, progress=False)
    assert (repaired.samples, repaired.rejected_samples, repaired.repaired_samples) == (96, 0, 2)
    # without the schema the same data is refused before training
    with pytest.raises(InputValidationError, match="sample 3"):
        fit(_mlp(), _dirty(), method="pgd", threat=ThreatModel(eps=0.1), epochs=1,
            progress=False)
    wrong = TensorSchema(shape=("batch", 5))
    with pytest.raises(InputValidationError, match="schema"):
        fit(_mlp(), _dirty(), schema=wrong, epochs=1, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigurationError, match="schema"):
        fit(_mlp(), _dirty(), schema="not a schema", epochs=1, progress=False)


def test_val_data_feeds_the_per_epoch_accuracy() -> None:
    x, y = _blobs()
    flipped = (x[:64], (y[:64] + 1) % 3)  # labels that the training data contradicts
    result = fit(_mlp(), (x, y), val_data=flipped, epochs=3, batch_size=32, lr=0.02,
                 progress=False)
    plain = fit(_mlp(), (x, y), epochs=3, batch_size=32, lr=0.02, progress=False)
    assert plain.history[-1].clean_accuracy > 0.9
    assert result.history[-1].clean_accuracy < 0.1


def test_progress_bar_runs_when_forced_on(capsys: pytest.CaptureFixture[str]) -> None:
    from bastion.core import progress

    progress.set_progress(True)
    try:
        result = fit(_mlp(), _blobs(), epochs=2, batch_size=64)
    finally:
        progress.set_progress(None)
    assert len(result.history) == 2
