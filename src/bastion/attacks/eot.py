"""Expectation over transformation (Athalye, Engstrom, Ilyas & Kwok 2018,
https://arxiv.org/abs/1707.07397; Athalye, Carlini & Wagner 2018,
https://arxiv.org/abs/1802.00420): attack a randomized model through its expectation.

A randomized defense answers each forward pass with a fresh draw of its randomness t, so one
pass gives a single noisy sample of the gradient and of the prediction. EOT replaces both by
their average over k independent passes,

    ∇_x E_t[L(f(t(x)), y)] ≈ (1/k) Σ_i ∇_x L(f(t_i(x)), y),      Z(x) ≈ (1/k) Σ_i f(t_i(x)),

and gives them to any attack unchanged: :class:`EOT` wraps the attack and hands its ``_run`` a
context whose ``logits`` and ``logits_and_grad`` are these averages (k counted passes each).

Adaptive-attack hints. A module can declare how it must be attacked with the attribute
``bastion_attack_hint`` (an :class:`AttackHint`, or its string value): ``"eot"`` for modules
whose forward pass is random, ``"bpda"`` for non-differentiable modules that carry their own
backward approximation (:class:`~bastion.attacks.BPDA`). :func:`attack_hints` collects them
over a whole model, so an evaluator can wrap its attacks in EOT where needed and report that
gradients were approximated; :func:`mark_randomized` tags a module that does not say so itself.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, ClassVar

import torch
from torch import nn

from bastion.attacks._base import Attack, AttackContext, LossFn
from bastion.core.enums import parse_enum
from bastion.core.errors import ConfigurationError
from bastion.core.threat import ThreatModel

__all__ = ["EOT", "HINT_ATTRIBUTE", "AttackHint", "attack_hints", "mark_randomized"]

#: The attribute a module sets to declare its adaptive attack.
HINT_ATTRIBUTE = "bastion_attack_hint"


class AttackHint(enum.Enum):
    """How a module must be attacked for an honest evaluation."""

    EOT = "eot"  # the forward pass is random: average gradients and logits over passes
    BPDA = "bpda"  # non-differentiable: the backward pass is an approximation

    @classmethod
    def parse(cls, value: AttackHint | str) -> AttackHint:
        return parse_enum(cls, value, "attack hint")


def attack_hints(model: nn.Module) -> frozenset[AttackHint]:
    """Every hint declared by ``model`` or one of its submodules.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(mark_randomized(nn.Dropout(0.1)), nn.Linear(2, 2))
        >>> sorted(h.value for h in attack_hints(model))
        ['eot']
    """
    found: set[AttackHint] = set()
    for module in model.modules():
        value = getattr(module, HINT_ATTRIBUTE, None)
        if value is not None:
            found.add(AttackHint.parse(value))
    return frozenset(found)


def mark_randomized(module: nn.Module) -> nn.Module:
    """Tag ``module`` (in place, and return it) as random at inference: attack it with EOT."""
    setattr(module, HINT_ATTRIBUTE, AttackHint.EOT)
    return module


class _ExpectationContext(AttackContext):
    """An attack context whose model calls are averages over ``samples`` passes."""

    def __init__(self, ctx: AttackContext, samples: int) -> None:
        super().__init__(ctx.model, **ctx.settings())
        self.samples = samples

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        total = super().logits(x)
        for _ in range(self.samples - 1):
            total = total + super().logits(x)
        return total / self.samples

    def logits_and_grad(
        self, x: torch.Tensor, loss_fn: LossFn, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # separate passes, not one batch of k copies: a module may draw its randomness once
        # per forward call, and k copies in one call would then share one draw
        logits, grad = super().logits_and_grad(x, loss_fn, y)
        for _ in range(self.samples - 1):
            more_logits, more_grad = super().logits_and_grad(x, loss_fn, y)
            logits, grad = logits + more_logits, grad + more_grad
        return logits / self.samples, grad / self.samples


@dataclasses.dataclass(frozen=True, kw_only=True)
class EOT(Attack):
    """Run ``attack`` with every gradient and every logit averaged over ``samples`` passes.

    ``threat``, ``targeted``, ``seed`` and ``autocast`` are the inner attack's: leave them out
    (or pass the same values). A forward or backward pass costs ``samples`` counted passes.

    Attributes:
        attack: the attack to run through the expectation (any :class:`Attack`).
        samples: k, the passes averaged per model call.

    Example:
        >>> import torch
        >>> from bastion import ThreatModel
        >>> from bastion.attacks import PGD
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x, y = torch.rand(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)
        >>> eot = EOT(attack=PGD(threat=ThreatModel(norm="linf", eps=0.1), steps=5), samples=4)
        >>> x_adv, stats = eot.run_with_stats(model, x, y)
        >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6), stats.forward % 4
        (True, 0)
    """

    threat: ThreatModel = None  # type: ignore[assignment]  # taken from the inner attack
    attack: Attack
    samples: int = 10

    name: ClassVar[str] = "eot"

    def __post_init__(self) -> None:
        inner = self.attack
        if not isinstance(inner, Attack):
            raise ConfigurationError(f"attack must be a bastion Attack, got {type(inner).__name__}")
        if not isinstance(self.samples, int) or isinstance(self.samples, bool) or self.samples < 1:
            raise ConfigurationError(f"samples must be a positive integer, got {self.samples!r}")
        if self.threat is not None and self.threat != inner.threat:
            raise ConfigurationError(
                f"EOT's threat model must be the inner attack's: expected "
                f"{inner.threat.describe()}, got {self.threat.describe()}"
            )
        own = {"targeted": (self.targeted, False), "seed": (self.seed, 0),
               "autocast": (self.autocast, None)}  # fmt: skip
        for field, (value, default) in own.items():
            if value != default and value != getattr(inner, field):
                raise ConfigurationError(
                    f"EOT's {field} is the inner attack's: expected {getattr(inner, field)!r} "
                    f"(set it on the inner attack), got {value!r}"
                )
        object.__setattr__(self, "threat", inner.threat)
        for field in own:
            object.__setattr__(self, field, getattr(inner, field))
        super().__post_init__()

    def params(self) -> dict[str, Any]:
        """The inner attack's name and parameters, and the number of samples."""
        return {"attack": self.attack.name, "attack_params": self.attack.params(),
                "samples": self.samples}  # fmt: skip

    def _run(
        self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor
    ) -> torch.Tensor:
        expected = _ExpectationContext(ctx, self.samples)
        # the base's clean logits are one pass; decisions must use the expectation
        clean = expected.logits(x) if self.samples > 1 else clean_logits
        return self.attack._run(expected, x, y, clean)
