"""Defensive distillation reproduces the literature's facts, and the evaluation flags it.

Papernot et al. 2016: at T = 100 the deployed student's cross-entropy gradients vanish and
FGSM/PGD-CE fail. Carlini & Wagner 2016: logit-based losses (CW margin, DLR) or dividing the logits
by T break it like an undefended model. bastion.evaluate must report the low robust accuracy and
flag possible gradient masking instead of crediting the defense.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks import APGD, FGSM, PGD
from bastion.core.errors import ConfigurationError
from bastion.core.threat import ThreatModel
from bastion.data import load_dataset
from bastion.evaluate import MASKING_FLAG, robustness
from bastion.train.distill import (
    DEFAULT_TEMPERATURE,
    DistillationResult,
    Temperature,
    distill,
    soft_labels,
)
from bastion.train.loop import fit

THREAT = ThreatModel(eps=0.3)  # MNIST Linf
OPTIONS = {"lr": 1e-2, "batch_size": 64, "progress": False}




def _mlp(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.fixture(scope="module")
def models() -> dict[str, object]:
    """An undistilled MLP and a student distilled at T = 100, on 1,000 MNIST images; ~3 s."""
    split = load_dataset("mnist5k")
    x, y = split.x_train[:1000], split.y_train[:1000]
    x_test, y_test = split.x_test[:200], split.y_test[:200]
    plain = _mlp(0)
    fit(plain, (x, y), epochs=10, seed=0, **OPTIONS)
    result = distill(_mlp(1), _mlp(2), (x, y), epochs=10, val_data=(x_test, y_test), **OPTIONS)
    return {"plain": plain.eval(), "student": result.student.model, "result": result,
            "x": x_test, "y": y_test}


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _ce_input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xg).float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xg)
    return grad.flatten(1)


def test_the_student_keeps_the_teachers_clean_accuracy(models) -> None:
    result: DistillationResult = models["result"]
    assert result.temperature == DEFAULT_TEMPERATURE == 100.0
    assert result.teacher.config.temperature == result.student.config.temperature == 100.0
    assert result.evaluated_on == "validation"
    assert result.student_accuracy == pytest.approx(
        _accuracy(models["student"], models["x"], models["y"]))
    assert result.teacher_accuracy > 0.9 and result.student_accuracy > 0.9
    assert result.agreement > 0.95
    assert _accuracy(models["plain"], models["x"], models["y"]) > 0.9
    data = json.loads(result.to_json())
    assert data["temperature"] == 100.0 and "model" not in data["student"]


def test_plain_cross_entropy_gradients_vanish_on_the_student(models) -> None:
    x, y = models["x"], models["y"]
    student_grad = _ce_input_gradients(models["student"], x, y)
    plain_grad = _ce_input_gradients(models["plain"], x, y)
    zero_student = float((student_grad == 0).all(1).float().mean())
    zero_plain = float((plain_grad == 0).all(1).float().mean())
    assert zero_student >= 0.8  # float32 softmax saturated: softmax(z) - onehot(y) == 0 exactly
    assert zero_plain == 0.0
    assert float(student_grad.norm(dim=1).median()) < 1e-3 * float(plain_grad.norm(dim=1).median())
    # the gradients were hidden, not removed: at temperature T they are back
    at_t = _ce_input_gradients(Temperature(models["student"], 100.0), x, y)
    assert float((at_t == 0).all(1).float().mean()) == 0.0


def test_cross_entropy_attacks_fail_on_the_student_but_not_on_the_plain_model(models) -> None:
    x, y = models["x"], models["y"]
    for attack in (FGSM(THREAT), PGD(threat=THREAT, steps=40)):
        plain = _accuracy(models["plain"], attack(models["plain"], x, y), y)
        student = _accuracy(models["student"], attack(models["student"], x, y), y)
        assert plain <= 0.05, attack
        assert student >= 0.6, attack  # apparent "robustness": the attack cannot start


@pytest.mark.parametrize("name", ["pgd-margin", "apgd-dlr", "pgd-ce-at-T"])
def test_logit_attacks_break_the_student_like_the_plain_model(models, name) -> None:
    x, y, student = models["x"], models["y"], models["student"]
    attacked: nn.Module = student
    if name == "pgd-margin":
        attack = PGD(threat=THREAT, steps=40, loss="margin")
    elif name == "apgd-dlr":
        attack = APGD(threat=THREAT, steps=50, loss="dlr")
    else:  # Carlini & Wagner 2016: divide the logits by T, then plain cross-entropy works
        attack, attacked = PGD(threat=THREAT, steps=40), Temperature(student, 100.0)
    plain = _accuracy(models["plain"], attack(models["plain"], x, y), y)
    broken = _accuracy(student, attack(attacked, x, y), y)
    assert broken <= plain + 0.05
    assert broken <= 0.05


def test_the_evaluation_breaks_the_student_and_flags_gradient_masking(models) -> None:
    x, y = models["x"][:100], models["y"][:100]
    result = robustness(models["student"], (x, y), THREAT, progress=False)
    assert result.clean_accuracy > 0.9
    assert result.robust_accuracy <= 0.05
    by_name = {a.name: a for a in result.attacks}
    assert by_name["apgd-ce"].robust_accuracy >= 0.5  # CE alone would have credited it
    assert by_name["apgd-t"].broken >= 0.9 * by_name["apgd-t"].attacked  # DLR breaks it
    assert result.gradient_masking_suspected and MASKING_FLAG in result.flags
    failed = {c.check for c in result.sanity if not c.passed}
    assert "gradients" in failed  # most clean points have an exactly zero CE gradient
    assert "chance at large eps" in failed  # PGD-CE cannot bring it down to chance
    # the flag is specific: the undistilled model passes every check
    plain = robustness(models["plain"], (x, y), THREAT, progress=False)
    assert not plain.gradient_masking_suspected
    assert plain.robust_accuracy <= 0.05


# -- arguments -------------------------------------------------------------------------------


def _tiny() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(32, 4, generator=gen), torch.randint(0, 3, (32,), generator=gen)


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), True, "100"])
def test_bad_temperatures_are_refused(temperature) -> None:
    with pytest.raises(ConfigurationError, match="temperature: expected a finite number > 0"):
        distill(nn.Linear(4, 3), nn.Linear(4, 3), _tiny(), temperature=temperature,
                progress=False)


def test_models_must_differ_and_agree_on_the_number_of_classes() -> None:
    model = nn.Linear(4, 3)
    with pytest.raises(ConfigurationError, match="different module from the teacher"):
        distill(model, model, _tiny(), progress=False)
    with pytest.raises(ConfigurationError, match="student: returns 5 logits but the teacher "
                       "returns 3"):
        distill(nn.Linear(4, 3), nn.Linear(4, 5), _tiny(), progress=False)
    shared = nn.Linear(4, 3)
    with pytest.raises(ConfigurationError, match="shares 2 parameter tensor"):
        distill(nn.Sequential(shared), nn.Sequential(shared), _tiny(), progress=False)
    with pytest.raises(ConfigurationError, match="student: expected a torch.nn.Module"):
        distill(nn.Linear(4, 3), "student", _tiny(), progress=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "pgd", "threat": ThreatModel(eps=0.1)}, "method 'none'"),
        ({"config": None}, "config: not a fit override of distill"),
        ({"fit_seed": 1}, "unknown fit option"),
    ],
)
def test_fit_options_are_checked(kwargs, match) -> None:
    with pytest.raises(ConfigurationError, match=match):
        distill(nn.Linear(4, 3), nn.Linear(4, 3), _tiny(), epochs=1, progress=False, **kwargs)


def test_labels_must_be_class_indices_within_the_output_width() -> None:
    x, y = _tiny()
    with pytest.raises(ConfigurationError, match="hard labels: expected y as int64"):
        distill(nn.Linear(4, 3), nn.Linear(4, 3), (x, F.one_hot(y, 3).float()), progress=False)
    with pytest.raises(ConfigurationError, match=r"labels must lie in \[0, 2\]"):
        distill(nn.Linear(4, 3), nn.Linear(4, 3), (x, y + 5), progress=False)
    with pytest.raises(ConfigurationError, match=r"\(x, y\) pair of tensors"):
        distill(nn.Linear(4, 3), nn.Linear(4, 3), x, progress=False)  # type: ignore[arg-type]


def test_soft_labels_are_the_tempered_softmax_and_runs_are_written(tmp_path) -> None:
    x, y = _tiny()
    teacher = nn.Linear(4, 3)
    with torch.no_grad():
        expected = torch.softmax(teacher(x) / 7.0, dim=1)
    torch.testing.assert_close(soft_labels(teacher, x, 7.0), expected)
    result = distill(teacher, nn.Linear(4, 3), (x, y), temperature=7.0, epochs=1,
                     teacher_epochs=2, out=tmp_path, progress=False)
    assert len(result.teacher.history) == 2 and len(result.student.history) == 1
    assert result.evaluated_on == "training"
    saved = json.loads((tmp_path / "distillation.json").read_text())
    assert saved["temperature"] == 7.0 and saved["schema_version"] == 1
    assert (tmp_path / "teacher" / "train.json").is_file()
    assert (tmp_path / "student" / "train.json").is_file()
