"""Pick the adaptive attack a model needs, from what it declares and how it behaves.

Athalye, Carlini & Wagner 2018 (https://arxiv.org/abs/1802.00420) broke 7 of 9 defenses by
adapting the attack to the defense: EOT against randomness ("stochastic gradients"), BPDA against
non-differentiable steps ("shattered gradients"). :func:`plan_adaptive` decides, for one model:

* **EOT** when a module declares ``AttackHint.EOT`` (:mod:`bastion.defenses` randomization,
  :func:`~bastion.attacks.mark_randomized`) or when the model is randomized without saying so:
  5 clean passes disagree or their logits differ by more than 1e-4 (AutoAttack's flag, Croce &
  Hein 2020). Every gradient attack is wrapped in :class:`ConsensusEOT` over k passes, and the
  randomized model is *judged* over repeated passes (REFERENCES: "Randomized models must be
  judged over repeated forward passes, not one"): its prediction, clean and adversarial, is the
  argmax of the logits averaged over k fresh passes (:class:`ExpectedLogits`),

      pred(x) = argmax_c (1/k) sum_i f_c(t_i(x)),     t_i the i-th draw of the randomness.

  Black-box attacks (Square) query that average as well.
* **BPDA** when a module declares ``AttackHint.BPDA``: the module carries its own backward
  approximation (:class:`~bastion.attacks.BPDA`), so the attacks need no change; the result's
  notes say that the gradients were approximated.

Why :class:`ConsensusEOT` rather than plain EOT. bastion's attacks stop per sample at the first
success. On a randomized model, success judged on one k-pass average happens right at the
decision boundary, where a fresh set of passes still classifies the point correctly about half
of the time, and the attack stops there. ConsensusEOT counts a sample as broken only once every
one of the k passes misclassifies it, so the attack goes on until the point is adversarial for
the randomness, not for one draw of it; the final judgement is the evaluator's, on fresh passes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from bastion.attacks import EOT, Attack, AttackHint
from bastion.attacks._base import AttackContext, LossFn
from bastion.attacks.eot import HINT_ATTRIBUTE
from bastion.core.errors import ConfigurationError
from bastion.core.modes import frozen_eval
from bastion.evaluate.ensemble import AttackFactory, is_black_box

__all__ = [
    "RANDOMNESS_PASSES",
    "RANDOMNESS_TOLERANCE",
    "AdaptivePlan",
    "ConsensusEOT",
    "ExpectedLogits",
    "logit_spread",
    "plan_adaptive",
]

#: Clean passes compared to detect an undeclared randomized model (AutoAttack's check).
RANDOMNESS_PASSES = 5
#: Largest logit difference between those passes that still counts as deterministic.
RANDOMNESS_TOLERANCE = 1e-4


class ExpectedLogits(nn.Module):
    """A randomized model judged over repeated passes: logits averaged over ``passes`` calls.

    Example:
        >>> import torch
        >>> from bastion.defenses import GaussianNoise
        >>> noisy = torch.nn.Sequential(GaussianNoise(0.5), torch.nn.Flatten())
        >>> x = torch.full((1, 1, 1, 4), 0.5)
        >>> one = noisy(x).std().item()
        >>> many = ExpectedLogits(noisy, passes=400)(x).std().item()
        >>> many < one / 5
        True
    """

    def __init__(self, model: nn.Module, passes: int) -> None:
        super().__init__()
        if not isinstance(passes, int) or isinstance(passes, bool) or passes < 1:
            raise ConfigurationError(f"passes must be a positive integer, got {passes!r}")
        self.model = model
        self.passes = passes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor = self.model(x).float()
        for _ in range(self.passes - 1):
            total = total + self.model(x).float()
        return total / self.passes

    def extra_repr(self) -> str:
        return f"passes={self.passes}"


class _ConsensusContext(AttackContext):
    """Model calls averaged over k passes; a sample counts as broken only when q of them agree."""

    def __init__(self, ctx: AttackContext, model: nn.Module, samples: int, consensus: float):
        super().__init__(model, **ctx.settings())
        self.samples = samples
        self.consensus = consensus
        # the averaged logits last returned, and the k single-pass predictions behind them
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def _remember(self, outs: list[torch.Tensor]) -> torch.Tensor:
        mean = torch.stack(outs).mean(dim=0)
        self._last = (mean, torch.stack([o.argmax(dim=1) for o in outs]))
        return mean

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        single = super().logits  # bound here: zero-argument super() fails in a comprehension
        return self._remember([single(x) for _ in range(self.samples)])

    def logits_and_grad(
        self, x: torch.Tensor, loss_fn: LossFn, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # separate passes: a module may draw its randomness once per forward call
        outs, grad = [], torch.zeros_like(x)
        for _ in range(self.samples):
            logits, g = super().logits_and_grad(x, loss_fn, y)
            outs.append(logits)
            grad = grad + g
        return self._remember(outs), grad / self.samples

    def is_adversarial(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
        by_mean = super().is_adversarial(logits, y, targeted)
        if self._last is None or self._last[0] is not logits:
            return by_mean  # logits this context did not just compute: judge the mean alone
        preds = self._last[1]
        fooled = (preds == y) if targeted else (preds != y)
        return by_mean & (fooled.float().mean(dim=0) >= self.consensus)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConsensusEOT(EOT):
    """EOT whose inner attack counts a sample as broken only when the k passes agree.

    Gradients and logits are EOT's averages over ``samples`` passes. In addition, a sample is
    broken, for the inner attack's early stop and bookkeeping, only when the averaged logits
    misclassify it *and* at least a share ``consensus`` of the k single passes do (see the
    module docstring). On :class:`ExpectedLogits` it attacks the inner model, so each call costs
    exactly k passes.

    Attributes:
        consensus: the share of the k passes that must be fooled, in (0, 1]; 1 = all of them.

    Example:
        >>> import torch
        >>> from bastion import ThreatModel
        >>> from bastion.attacks import PGD
        >>> from bastion.defenses import GaussianNoise
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(GaussianNoise(0.1), torch.nn.Flatten(),
        ...                             torch.nn.Linear(4, 2))
        >>> x, y = torch.rand(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)
        >>> attack = ConsensusEOT(attack=PGD(threat=ThreatModel(eps=0.1), steps=5), samples=4)
        >>> x_adv, stats = attack.run_with_stats(model, x, y)
        >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6), attack.name
        (True, 'eot')
    """

    consensus: float = 1.0

    name: ClassVar[str] = "eot"

    def __post_init__(self) -> None:
        q = self.consensus
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
            raise ConfigurationError(f"consensus must be a number in (0, 1], got {q!r}")
        super().__post_init__()

    def params(self) -> dict[str, Any]:
        """EOT's parameters and the consensus share."""
        return {**super().params(), "consensus": self.consensus}

    def _run(
        self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor
    ) -> torch.Tensor:
        model = ctx.model.model if isinstance(ctx.model, ExpectedLogits) else ctx.model
        consensus = _ConsensusContext(ctx, model, self.samples, float(self.consensus))
        # the base's clean logits are one call; decisions need the k passes behind them
        return self.attack._run(consensus, x, y, consensus.logits(x))


def logit_spread(model: nn.Module, x: torch.Tensor, passes: int = RANDOMNESS_PASSES) -> float:
    """Largest absolute logit difference between ``passes`` clean passes (eval mode, no grad).

    Example:
        >>> import torch
        >>> logit_spread(torch.nn.Linear(3, 2), torch.rand(4, 3))
        0.0
    """
    with frozen_eval(model), torch.no_grad():
        first = model(x).float()
        spread = 0.0
        for _ in range(passes - 1):
            spread = max(spread, float((model(x).float() - first).abs().max()))
    return spread


def _declared_by(model: nn.Module, hint: AttackHint) -> list[str]:
    """Class names of the outermost modules declaring ``hint`` (submodules of one are skipped)."""
    names: list[str] = []
    prefixes: list[str] = []
    for path, module in model.named_modules():
        value = getattr(module, HINT_ATTRIBUTE, None)
        if value is None or AttackHint.parse(value) is not hint:
            continue
        if any(path.startswith(p + ".") for p in prefixes):
            continue
        prefixes.append(path)
        if type(module).__name__ not in names:
            names.append(type(module).__name__)
    return names


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaptivePlan:
    """How one model is attacked and judged, and why (see :func:`plan_adaptive`).

    Attributes:
        eot_samples: k, the passes EOT averages and predictions are judged over; 0 = no EOT.
        declared: the attack hints the model's modules declare.
        spread: the largest logit difference between clean passes, when it was measured.
        notes: what was adapted and why, for the result's notes.
    """

    eot_samples: int
    declared: frozenset[AttackHint]
    spread: float | None
    notes: tuple[str, ...]

    @property
    def uses_eot(self) -> bool:
        """Whether gradient attacks are wrapped in EOT and predictions averaged over passes."""
        return self.eot_samples > 0

    def wrap(self, attack: Attack) -> Attack:
        """``attack`` as the plan runs it: gradient attacks in :class:`ConsensusEOT` under EOT.

        Black-box attacks and attacks that already are EOT are returned unchanged.
        """
        if not self.uses_eot or isinstance(attack, EOT) or is_black_box(attack):
            return attack
        return ConsensusEOT(attack=attack, samples=self.eot_samples)

    def wrap_factory(self, factory: AttackFactory) -> AttackFactory:
        """A factory building ``wrap(factory(threat))``."""
        if not self.uses_eot:
            return factory
        return lambda threat: self.wrap(factory(threat))

    def judge(self, model: nn.Module) -> nn.Module:
        """The model predictions are judged on: :class:`ExpectedLogits` under EOT, else itself."""
        return ExpectedLogits(model, self.eot_samples) if self.uses_eot else model


def plan_adaptive(
    model: nn.Module,
    x: torch.Tensor,
    *,
    adaptive: bool = True,
    eot_samples: int = 10,
) -> AdaptivePlan:
    """Decide the adaptive attack for ``model`` from its hints and a randomness check on ``x``.

    Args:
        model: the model to evaluate.
        x: a few clean inputs for the randomness check (5 passes; skipped when the model
            declares EOT or ``adaptive`` is False).
        adaptive: False attacks the model as it is: no EOT, single-pass predictions (the
            ``deterministic`` sanity check then flags a randomized model).
        eot_samples: k, passes per EOT estimate and per judged prediction.

    Returns:
        An :class:`AdaptivePlan`.

    Raises:
        ConfigurationError: ``eot_samples`` is not a positive integer.

    Example:
        >>> import torch
        >>> from bastion.defenses import BitDepth, GaussianNoise, defend
        >>> model = defend(torch.nn.Flatten(), BitDepth(4), GaussianNoise(0.1))
        >>> plan = plan_adaptive(model, torch.rand(4, 1, 2, 2), eot_samples=8)
        >>> plan.eot_samples, sorted(h.value for h in plan.declared)
        (8, ['bpda', 'eot'])
        >>> plan_adaptive(torch.nn.Flatten(), torch.rand(4, 3)).uses_eot
        False
    """
    if not isinstance(eot_samples, int) or isinstance(eot_samples, bool) or eot_samples < 1:
        raise ConfigurationError(f"eot_samples must be a positive integer, got {eot_samples!r}")
    from bastion.attacks import attack_hints

    declared = attack_hints(model)
    notes: list[str] = []
    if AttackHint.BPDA in declared:
        who = ", ".join(_declared_by(model, AttackHint.BPDA))
        notes.append(
            f"gradients approximated (BPDA): {who} is not differentiable and carries its own "
            "backward approximation; the white-box attacks used it, and the black-box attack "
            "and the sanity checks cross-check it"
        )
    if not adaptive:
        if AttackHint.EOT in declared:
            who = ", ".join(_declared_by(model, AttackHint.EOT))
            notes.append(
                f"adaptive=False: {who} declares randomness, yet the model was attacked without "
                "EOT and judged on single passes; its robust accuracy may be inflated"
            )
        return AdaptivePlan(eot_samples=0, declared=declared, spread=None, notes=tuple(notes))
    spread: float | None = None
    if AttackHint.EOT in declared:
        why = f"{', '.join(_declared_by(model, AttackHint.EOT))} declares randomness"
    else:
        spread = logit_spread(model, x)
        if spread <= RANDOMNESS_TOLERANCE:
            return AdaptivePlan(eot_samples=0, declared=declared, spread=spread, notes=tuple(notes))
        why = (
            f"{RANDOMNESS_PASSES} clean passes disagree (logits differ by up to {spread:.3g} > "
            f"{RANDOMNESS_TOLERANCE:g}) although no module declares randomness (AutoAttack's "
            "randomness flag; declare it with bastion.attacks.mark_randomized)"
        )
    notes.append(
        f"adaptive attack: EOT, because {why}. Every gradient attack averaged its gradients "
        f"over {eot_samples} passes and counted a sample as broken only when all {eot_samples} "
        f"were fooled; every prediction (clean and adversarial, black-box queries included) is "
        f"the argmax of the logits averaged over {eot_samples} fresh passes, and forward counts "
        "count such an average as one pass"
    )
    return AdaptivePlan(eot_samples=eot_samples, declared=declared, spread=spread,
                        notes=tuple(notes))  # fmt: skip
