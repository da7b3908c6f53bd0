"""Every hyperparameter of a training run, in one frozen, validated, JSON-serialisable dataclass.

:class:`TrainConfig` is what :func:`bastion.train.fit` trains with, what ``state.json`` records
(so that a resumed run can refuse a changed configuration) and what ``train.json`` reports. The
learning-rate schedule and the eps warm-up are pure functions of the global step, so resuming a
run needs no scheduler object, only the step count.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any

from bastion.core.enums import parse_enum
from bastion.core.errors import ConfigurationError
from bastion.core.threat import ThreatModel

__all__ = ["GuardFallback", "LRSchedule", "OptimizerKind", "TrainConfig", "TrainMethod"]


class TrainMethod(enum.Enum):
    """How each batch is turned into a training loss (see :mod:`bastion.train.methods`)."""

    NONE = "none"
    PGD = "pgd"
    FGSM_RS = "fgsm-rs"
    TRADES = "trades"

    @classmethod
    def parse(cls, value: TrainMethod | str) -> TrainMethod:
        """The method named ``value``: ``none``, ``pgd``, ``fgsm-rs`` or ``trades``.

        Example:
            >>> TrainMethod.parse("FGSM_RS")
            <TrainMethod.FGSM_RS: 'fgsm-rs'>
        """
        return parse_enum(cls, value, "training method")


class OptimizerKind(enum.Enum):
    """The optimizer: SGD with momentum, or Adam."""

    SGD = "sgd"
    ADAM = "adam"


class LRSchedule(enum.Enum):
    """Learning rate over the run, evaluated at every iteration (see :meth:`TrainConfig.lr_at`)."""

    CONSTANT = "constant"
    CYCLIC = "cyclic"  # Wong et al. 2020: 0 -> lr at 40% of the run -> 0, linear, per iteration
    STEP = "step"  # lr, x0.1 after 50% of the epochs, x0.1 again after 75%
    COSINE = "cosine"  # lr * (1 + cos(pi t / T)) / 2, per iteration


class GuardFallback(enum.Enum):
    """What the catastrophic-overfitting guard does after restoring the best weights."""

    STOP = "stop"
    PGD = "pgd"
    CONTINUE = "continue"


_ADVERSARIAL = (TrainMethod.PGD, TrainMethod.FGSM_RS, TrainMethod.TRADES)


def _int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name}: expected an integer >= {low}, got {value!r}")
    if value < low:
        raise ConfigurationError(f"{name}: expected an integer >= {low}, got {value!r}")
    return value


def _float(name: str, value: object, *, low: float, high: float = math.inf,
           strict_low: bool = False, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    expect = f"a finite number {'>' if strict_low else '>='} {low:g}" + (
        f" and <= {high:g}" if math.isfinite(high) else "")
    if optional:
        expect += " (or null)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name}: expected {expect}, got {value!r}")
    number = float(value)
    ok = math.isfinite(number) and (number > low if strict_low else number >= low) and (
        number <= high)
    if not ok:
        raise ConfigurationError(f"{name}: expected {expect}, got {value!r}")
    return number


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyperparameters of :func:`~bastion.train.fit`; validated on construction.

    Attributes:
        method: ``none``, ``pgd`` (Madry et al. 2018), ``fgsm-rs`` (Wong et al. 2020) or
            ``trades`` (Zhang et al. 2019).
        threat: the perturbation set to train against; required by the adversarial methods, and
            used by every method for the per-epoch robust accuracy when given.
        epochs: passes over the training data.
        batch_size: samples per optimisation step, summed over all processes under DDP.
        optimizer: ``adam`` or ``sgd`` (with ``momentum``).
        lr: the (maximum) learning rate.
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 weight decay.
        schedule: ``constant``, ``cyclic`` (Wong et al.'s triangle, per iteration), ``step`` or
            ``cosine``.
        pgd_steps: attack iterations of PGD-AT and TRADES.
        pgd_step_size: their step size; None means ``2.5 * eps / pgd_steps``.
        fgsm_alpha: the FGSM-RS step; None means ``1.25 * eps``.
        trades_beta: weight of the TRADES KL term.
        mix: share of each batch replaced by adversarial examples (0 = plain training).
        eps_warmup: epochs over which eps grows linearly from 0 to ``threat.eps``.
        noise_sigma: standard deviation of Gaussian noise added to every training input (then
            clipped to the bounds), e.g. for randomized smoothing.
        temperature: the loss sees ``logits / temperature`` (defensive distillation).
        guard: the catastrophic-overfitting guard; None means on for ``fgsm-rs`` only.
        guard_samples: size of the fixed batch the guard (and the robust accuracy) uses.
        guard_fallback: after a collapse: ``stop``, switch to ``pgd``, or ``continue``.
        seed: seeds data order, random starts, noise and dropout.
        clip_grad: clip the gradient's global L2 norm to this value (None: no clipping).

    Raises:
        ConfigurationError: a value is invalid; the message says what was expected.

    Example:
        >>> config = TrainConfig(method="pgd", threat=ThreatModel(eps=0.3), epochs=2)
        >>> config.method, config.step_size(0.3)
        (<TrainMethod.PGD: 'pgd'>, 0.075)
        >>> TrainConfig.from_dict(config.to_dict()) == config
        True
    """

    method: TrainMethod = TrainMethod.NONE
    threat: ThreatModel | None = None
    epochs: int = 10
    batch_size: int = 128
    optimizer: OptimizerKind = OptimizerKind.ADAM
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: LRSchedule = LRSchedule.CONSTANT
    pgd_steps: int = 10
    pgd_step_size: float | None = None
    fgsm_alpha: float | None = None
    trades_beta: float = 6.0
    mix: float = 1.0
    eps_warmup: int = 0
    noise_sigma: float = 0.0
    temperature: float = 1.0
    guard: bool | None = None
    guard_samples: int = 256
    guard_fallback: GuardFallback = GuardFallback.STOP
    seed: int = 0
    clip_grad: float | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "method", TrainMethod.parse(self.method))
        put(self, "optimizer", parse_enum(OptimizerKind, self.optimizer, "optimizer"))
        put(self, "schedule", parse_enum(LRSchedule, self.schedule, "lr schedule"))
        put(self, "guard_fallback",
            parse_enum(GuardFallback, self.guard_fallback, "guard fallback"))
        if isinstance(self.threat, Mapping):
            put(self, "threat", _threat_from_dict(self.threat))
        if self.threat is not None and not isinstance(self.threat, ThreatModel):
            raise ConfigurationError(
                f"threat: expected a bastion.ThreatModel or None, got {type(self.threat).__name__}")
        _int("epochs", self.epochs, 1)
        _int("batch_size", self.batch_size, 1)
        _int("pgd_steps", self.pgd_steps, 1)
        _int("eps_warmup", self.eps_warmup, 0)
        _int("guard_samples", self.guard_samples, 1)
        _int("seed", self.seed, 0)
        put(self, "lr", _float("lr", self.lr, low=0.0, strict_low=True))
        put(self, "momentum", _float("momentum", self.momentum, low=0.0, high=1.0))
        put(self, "weight_decay", _float("weight_decay", self.weight_decay, low=0.0))
        put(self, "pgd_step_size", _float("pgd_step_size", self.pgd_step_size, low=0.0,
                                          strict_low=True, optional=True))
        put(self, "fgsm_alpha", _float("fgsm_alpha", self.fgsm_alpha, low=0.0, strict_low=True,
                                       optional=True))
        put(self, "trades_beta", _float("trades_beta", self.trades_beta, low=0.0))
        put(self, "mix", _float("mix", self.mix, low=0.0, high=1.0))
        put(self, "noise_sigma", _float("noise_sigma", self.noise_sigma, low=0.0))
        put(self, "temperature", _float("temperature", self.temperature, low=0.0,
                                        strict_low=True))
        put(self, "clip_grad", _float("clip_grad", self.clip_grad, low=0.0, strict_low=True,
                                      optional=True))
        if self.guard is not None and not isinstance(self.guard, bool):
            raise ConfigurationError(f"guard: expected true, false or null, got {self.guard!r}")
        if self.method in _ADVERSARIAL and (self.threat is None or self.threat.eps <= 0):
            got = "no threat" if self.threat is None else f"eps={self.threat.eps:g}"
            raise ConfigurationError(
                f"threat: expected a ThreatModel with eps > 0 for method {self.method.value!r}, "
                f"got {got} (e.g. threat=ThreatModel(norm='linf', eps=0.3))")
        if self.guard and (self.threat is None or self.threat.eps <= 0):
            raise ConfigurationError(
                "guard: expected a threat with eps > 0 to measure PGD accuracy, got "
                f"{'no threat' if self.threat is None else f'eps={self.threat.eps:g}'}")

    # -- derived values ------------------------------------------------------------------------

    @property
    def adversarial(self) -> bool:
        """True for the methods that train on adversarial examples."""
        return self.method in _ADVERSARIAL

    @property
    def guard_enabled(self) -> bool:
        """Whether the catastrophic-overfitting guard runs (``guard=None``: fgsm-rs only)."""
        if self.guard is None:
            return self.method is TrainMethod.FGSM_RS
        return self.guard

    def step_size(self, eps: float) -> float:
        """The PGD/TRADES step at radius ``eps`` (an explicit step scales with the warm-up)."""
        full = self.threat.eps if self.threat is not None else eps
        if self.pgd_step_size is None:
            return 2.5 * eps / self.pgd_steps
        return self.pgd_step_size * (eps / full if full > 0 else 1.0)

    def alpha(self, eps: float) -> float:
        """The FGSM-RS step at radius ``eps`` (default 1.25 eps, Wong et al. 2020)."""
        full = self.threat.eps if self.threat is not None else eps
        if self.fgsm_alpha is None:
            return 1.25 * eps
        return self.fgsm_alpha * (eps / full if full > 0 else 1.0)

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """Learning rate of global iteration ``step`` (0-based) of a run of ``epochs`` epochs.

        Example:
            >>> config = TrainConfig(epochs=5, lr=0.1, schedule="cyclic")
            >>> [round(config.lr_at(s, 1), 3) for s in range(5)]
            [0.05, 0.1, 0.067, 0.033, 0.0]
        """
        total = self.epochs * steps_per_epoch
        if self.schedule is LRSchedule.CYCLIC:
            t = (step + 1) / steps_per_epoch  # epochs done after this step
            peak = 0.4 * self.epochs
            if t <= peak:
                return self.lr * t / peak
            return self.lr * max(0.0, (self.epochs - t) / (self.epochs - peak))
        if self.schedule is LRSchedule.COSINE:
            return self.lr * 0.5 * (1 + math.cos(math.pi * step / total))
        if self.schedule is LRSchedule.STEP:
            epoch = step // steps_per_epoch
            marks = (math.ceil(self.epochs / 2), math.ceil(3 * self.epochs / 4))
            return self.lr * 0.1 ** sum(epoch >= m for m in marks if m < self.epochs)
        return self.lr

    def eps_at(self, step: int, steps_per_epoch: int) -> float:
        """Training radius at global iteration ``step``: a linear ramp over ``eps_warmup`` epochs.

        Example:
            >>> config = TrainConfig(method="pgd", threat=ThreatModel(eps=0.4), eps_warmup=2)
            >>> [round(config.eps_at(s, 2), 3) for s in range(5)]
            [0.1, 0.2, 0.3, 0.4, 0.4]
        """
        eps = 0.0 if self.threat is None else self.threat.eps
        if self.eps_warmup == 0:
            return eps
        return eps * min(1.0, (step + 1) / (self.eps_warmup * steps_per_epoch))

    # -- JSON -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON values: enums as their strings, the threat as ``{norm, eps, bounds}``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, ThreatModel):
                value = {"norm": value.norm.value, "eps": value.eps, "bounds": list(value.bounds)}
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """The config that :meth:`to_dict` wrote; unknown keys are refused by name."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"config: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigurationError(f"config: unknown field(s) {', '.join(unknown)}")
        return cls(**dict(data))

    def differences(self, other: TrainConfig, *, ignore: tuple[str, ...] = ()) -> list[str]:
        """Names of the fields whose JSON values differ between ``self`` and ``other``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in ignore and mine[k] != theirs[k]]


def _threat_from_dict(data: Mapping[str, Any]) -> ThreatModel:
    unknown = sorted(set(data) - {"norm", "eps", "bounds"})
    if unknown:
        raise ConfigurationError(f"threat: unknown field(s) {', '.join(unknown)}")
    bounds = data.get("bounds", (0.0, 1.0))
    if not isinstance(bounds, (list, tuple)):
        raise ConfigurationError(f"threat.bounds: expected a [lower, upper] pair, got {bounds!r}")
    try:
        return ThreatModel(norm=data.get("norm", "linf"), eps=data.get("eps", 0.3),
                           bounds=tuple(bounds))
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"threat: {error}") from None
