"""Defensive distillation (Papernot et al. 2016, https://arxiv.org/abs/1511.04508) — shipped as a
NEGATIVE example: it hides gradients, it does not make a model robust.

The recipe, at a temperature T (the paper used up to T = 100 on MNIST):

1. train a *teacher* on the hard labels with the loss on ``softmax(z / T)``;
2. label the training data with the teacher's soft labels ``p_T(x) = softmax(z_teacher(x) / T)``;
3. train a *student* at the same T on those soft labels (soft cross-entropy
   ``-Σ_c p_T(x)_c log softmax(z_student(x) / T)_c``);
4. deploy the student at T = 1, i.e. its raw logits z.

Why it looks robust, and why it is not (Carlini & Wagner 2016, "Defensive Distillation is Not
Robust to Adversarial Examples", https://arxiv.org/abs/1607.04311): training at T makes the
student's logits about T times larger than a normally trained model's. At T = 1 its softmax is
saturated: the true class has probability 1 to float32 precision, so the cross-entropy gradient
``softmax(z) - onehot(y)`` is exactly zero at most clean points ("vanishing gradients", Athalye,
Carlini & Wagner 2018). FGSM and PGD on the cross-entropy loss then cannot even start, while the
decision boundary is where it was. Any loss that does not go through the saturated softmax
restores the attack:

* the CW margin ``max_{c≠y} z_c - z_y`` (``PGD(loss="margin")``, ``CarliniWagner``);
* the DLR loss of Croce & Hein 2020, invariant to scaling the logits (``APGD(loss="dlr")``,
  APGD-T in ``bastion.evaluate``'s default ensemble);
* dividing the logits by T before the cross-entropy (:class:`Temperature`).

bastion ships distillation so that users can watch an honest evaluation expose it: the DLR-based
attacks of ``bastion.evaluate.robustness`` bring the robust accuracy down to that of an
undefended model, and its ``gradients`` sanity check (share of clean points with a zero input
gradient) flags possible gradient masking. Do not deploy it as a defense; use adversarial
training (``fit(method="pgd")``) instead.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion.core.atomic import atomic_write_text
from bastion.core.errors import ConfigurationError
from bastion.core.modes import frozen_eval
from bastion.core.results import Result
from bastion.train.config import TrainMethod
from bastion.train.loop import fit
from bastion.train.results import TrainResult

__all__ = ["DEFAULT_TEMPERATURE", "DistillationResult", "Temperature", "distill", "soft_labels"]

#: The paper's MNIST temperature; high enough that float32 cross-entropy gradients vanish.
DEFAULT_TEMPERATURE = 100.0

_RESERVED = {
    "seed": "give seed= to distill itself",
    "epochs": "give epochs= (student) and teacher_epochs= to distill itself",
    "temperature": "give temperature= to distill itself",
    "config": "pass TrainConfig fields as keyword overrides",
}


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class DistillationResult(Result):
    """What :func:`distill` returns (the models themselves are trained in place).

    Attributes:
        temperature: T of both training runs (the student is deployed at T = 1).
        teacher: the teacher's :class:`~bastion.train.results.TrainResult` (hard labels, at T).
        student: the student's (the teacher's soft labels, at T).
        teacher_accuracy: the teacher's clean accuracy on ``evaluated_on`` data.
        student_accuracy: the deployed student's clean accuracy on the same data.
        agreement: share of those samples where student and teacher predict the same class.
        evaluated_on: ``"validation"`` (``val_data`` was given) or ``"training"``.
        seconds: wall time of the whole run.
    """

    temperature: float
    teacher: TrainResult
    student: TrainResult
    teacher_accuracy: float
    student_accuracy: float
    agreement: float
    evaluated_on: str
    seconds: float


class Temperature(nn.Module):
    """``model(x) / temperature``: the logits a distilled model was trained on.

    Attacking a distilled student through this wrapper (Carlini & Wagner 2016) undoes the
    softmax saturation: the predictions are the same (dividing by T > 0 keeps the argmax), but
    the cross-entropy gradient no longer vanishes.

    Example:
        >>> import torch
        >>> model = Temperature(torch.nn.Linear(2, 3), 100.0)
        >>> x = torch.rand(4, 2)
        >>> torch.equal(model(x).argmax(1), model.model(x).argmax(1))
        True
    """

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = _check_temperature(temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out / self.temperature


def soft_labels(
    model: nn.Module, x: torch.Tensor, temperature: float, *, batch_size: int = 512
) -> torch.Tensor:
    """The rows ``softmax(model(x) / T)`` (float32, on ``x``'s device), in eval mode.

    Example:
        >>> import torch
        >>> labels = soft_labels(torch.nn.Linear(2, 3), torch.rand(4, 2), 10.0)
        >>> labels.shape, bool(torch.allclose(labels.sum(1), torch.ones(4)))
        (torch.Size([4, 3]), True)
    """
    t = _check_temperature(temperature)
    device = _device_of(model, x)
    rows = []
    with frozen_eval(model), torch.no_grad():
        for xb in torch.split(x, batch_size):
            logits = model(xb.to(device)).float()
            rows.append(torch.softmax(logits / t, dim=1).to(x.device))
    return torch.cat(rows) if rows else torch.empty(0, 0)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    epochs: int = 10,
    teacher_epochs: int | None = None,
    seed: int = 0,
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    **fit_overrides: Any,
) -> DistillationResult:
    """Defensive distillation of ``teacher`` into ``student`` at ``temperature`` — a NEGATIVE
    example (see the module docstring): it masks gradients and an honest evaluation flags it.

    Both models are trained in place with :func:`~bastion.train.fit` (method ``none``): the
    teacher on the hard labels at T, the student on ``softmax(z_teacher / T)`` at T. Deploy
    ``student`` as it is (T = 1, its raw logits). Attack it with the CW margin or DLR loss, or
    through :class:`Temperature`, to see its real robustness (Carlini & Wagner 2016,
    https://arxiv.org/abs/1607.04311).

    Args:
        teacher: the model trained first, on the hard labels.
        student: the deployed model, distinct from ``teacher`` (same or another architecture)
            with the same number of outputs.
        data: the training ``(x, y)`` pair with int64 class labels.
        temperature: T, a finite number > 0. The default 100 (the paper's MNIST value) makes
            float32 cross-entropy gradients of the student vanish at most clean points.
        epochs: the student's epochs.
        teacher_epochs: the teacher's epochs (default: ``epochs``).
        seed: ``fit``'s seed for both runs (data order, dropout).
        val_data: an ``(x, y)`` pair for ``fit``'s per-epoch metrics and the accuracies of the
            result; without it they are measured on the training data.
        out: a directory: the runs go to ``teacher/`` and ``student/`` and the result to
            ``distillation.json``.
        progress: show ``fit``'s progress bars.
        **fit_overrides: other :class:`~bastion.train.config.TrainConfig` fields for both runs
            (``lr``, ``optimizer``, ``batch_size`` ...). ``method`` may only be ``none``.

    Returns:
        A :class:`DistillationResult` with both training results and the clean accuracies.

    Raises:
        ConfigurationError: T not finite and > 0, teacher and student the same object or with
            different output widths, labels that are not class indices, a reserved or
            adversarial fit option.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> x, y = torch.rand(64, 4), torch.randint(0, 3, (64,))
        >>> result = distill(nn.Linear(4, 3), nn.Linear(4, 3), (x, y), temperature=20.0,
        ...                  epochs=1, progress=False)
        >>> result.temperature, 0.0 <= result.student_accuracy <= 1.0
        (20.0, True)
    """
    start = time.perf_counter()
    t = _check_temperature(temperature)
    _check_overrides(fit_overrides)
    x, y = _check_data(data)
    _check_models(teacher, student, x, y)
    teacher_epochs = epochs if teacher_epochs is None else teacher_epochs
    root = None if out is None else Path(out)

    teacher_run = fit(teacher, (x, y), val_data=val_data, progress=progress,
                      out=None if root is None else root / "teacher", seed=seed,
                      epochs=teacher_epochs, temperature=t, **fit_overrides)
    labels = soft_labels(teacher, x, t)
    student_run = fit(student, (x, labels), val_data=val_data, progress=progress,
                      out=None if root is None else root / "student", seed=seed,
                      epochs=epochs, temperature=t, **fit_overrides)

    x_eval, y_eval = _check_data(val_data) if val_data is not None else (x, y)
    teacher_pred = _predict(teacher, x_eval)
    student_pred = _predict(student, x_eval)
    y_eval = y_eval.to(teacher_pred.device)
    result = DistillationResult(
        temperature=t,
        teacher=teacher_run,
        student=student_run,
        teacher_accuracy=float((teacher_pred == y_eval).float().mean()),
        student_accuracy=float((student_pred == y_eval).float().mean()),
        agreement=float((student_pred == teacher_pred).float().mean()),
        evaluated_on="validation" if val_data is not None else "training",
        seconds=time.perf_counter() - start,
    )
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / "distillation.json", result.to_json() + "\n")
    return result


def _check_temperature(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ConfigurationError(
            f"temperature: expected a finite number > 0 (Papernot et al. used 1 to 100; "
            f"{DEFAULT_TEMPERATURE:g} is the default), got {value!r}")
    return float(value)


def _check_overrides(overrides: dict[str, Any]) -> None:
    for name, fix in _RESERVED.items():
        if name in overrides:
            raise ConfigurationError(f"{name}: not a fit override of distill; {fix}")
    method = overrides.get("method", TrainMethod.NONE)
    if TrainMethod.parse(method) is not TrainMethod.NONE:
        raise ConfigurationError(
            f"method: distillation trains teacher and student with method 'none' (soft labels), "
            f"got {TrainMethod.parse(method).value!r}; for adversarial training call "
            "bastion.train.fit(model, data, method=...) instead")


def _check_data(data: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)):
        raise ConfigurationError(
            f"data: expected an (x, y) pair of tensors, got {type(data).__name__}")
    x, y = data
    if y.dim() != 1 or y.dtype != torch.int64:
        raise ConfigurationError(
            f"data: the teacher trains on hard labels: expected y as int64 class indices of shape "
            f"(N,), got {y.dtype} of shape {tuple(y.shape)} (use y.argmax(1) for one-hot rows)")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ConfigurationError(
            f"data: expected as many labels as inputs (at least one), got {x.shape[0]} inputs "
            f"and {y.shape[0]} labels")
    return x, y


def _check_models(teacher: object, student: object, x: torch.Tensor, y: torch.Tensor) -> None:
    for name, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, nn.Module):
            raise ConfigurationError(
                f"{name}: expected a torch.nn.Module, got {type(model).__name__}")
    assert isinstance(teacher, nn.Module) and isinstance(student, nn.Module)
    if teacher is student:
        raise ConfigurationError(
            "student: must be a different module from the teacher (build a second instance of "
            "the architecture); training the teacher on its own soft labels is not distillation")
    shared = {id(p) for p in teacher.parameters()} & {id(p) for p in student.parameters()}
    if shared:
        raise ConfigurationError(
            f"student: shares {len(shared)} parameter tensor(s) with the teacher; give it its own "
            "weights")
    widths = []
    for name, model in (("teacher", teacher), ("student", student)):
        with frozen_eval(model), torch.no_grad():
            out = model(x[:2].to(_device_of(model, x)))
        if out.dim() != 2:
            raise ConfigurationError(
                f"{name}: must map N inputs to logits of shape (N, classes), returned "
                f"{tuple(out.shape)}")
        widths.append(out.shape[1])
    if widths[0] != widths[1]:
        raise ConfigurationError(
            f"student: returns {widths[1]} logits but the teacher returns {widths[0]}; both "
            "models must output the same number of classes")
    top = int(y.max())
    if int(y.min()) < 0 or top >= widths[0]:
        raise ConfigurationError(
            f"data: labels must lie in [0, {widths[0] - 1}] for models with {widths[0]} outputs, "
            f"got [{int(y.min())}, {top}]")


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    device = _device_of(model, x)
    with frozen_eval(model), torch.no_grad():
        preds = [model(xb.to(device)).argmax(1) for xb in torch.split(x, batch_size)]
    return torch.cat(preds)


def _device_of(model: nn.Module, x: torch.Tensor) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return x.device
