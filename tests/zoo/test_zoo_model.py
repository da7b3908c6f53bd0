"""DemoCNN and its training recipe: shape, learning, determinism, full quality (slow)."""

from __future__ import annotations

import pytest
import torch

from bastion.core.errors import ConfigurationError
from bastion.data import load_digits
from bastion.zoo import DemoCNN, accuracy, train_demo


def test_demo_cnn_maps_images_to_ten_logits_and_is_small() -> None:
    model = DemoCNN()
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) < 100_000


def test_short_training_learns_and_is_deterministic() -> None:
    global_state = torch.random.get_rng_state()
    first = train_demo(seed=1, epochs=2)
    second = train_demo(seed=1, epochs=2)
    other = train_demo(seed=2, epochs=2)
    assert torch.equal(torch.random.get_rng_state(), global_state)  # global RNG untouched
    assert first.test_accuracy >= 0.85  # chance is 0.10
    assert not first.model.training
    assert first.test_accuracy == second.test_accuracy
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert not torch.equal(
        first.model.state_dict()["features.0.weight"], other.model.state_dict()["features.0.weight"]
    )


def test_accuracy_matches_manual_count_and_keeps_mode() -> None:
    model = torch.nn.Flatten()
    model.train()
    x = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    assert accuracy(model, x, torch.tensor([0, 0, 0]), batch_size=2) == pytest.approx(2 / 3)
    assert model.training


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"epochs": 0}, "epochs=0"), ({"learning_rate": -1.0}, "learning_rate=-1.0")],
)
def test_bad_arguments_are_refused(kwargs: dict[str, float], pattern: str) -> None:
    with pytest.raises(ConfigurationError, match=pattern):
        train_demo(**kwargs)  # type: ignore[arg-type]


def test_wrong_dataset_shape_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"input shape \(1, 8, 8\)"):
        train_demo(data=load_digits(), epochs=1)


@pytest.mark.slow
def test_default_recipe_reaches_97_percent() -> None:
    trained = train_demo()
    assert trained.test_accuracy >= 0.97, trained
