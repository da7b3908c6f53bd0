"""Which attacks an evaluation runs: the default ensemble, attacks by name, and rebuilding an
attack at another eps.

The default ensemble, cheapest first, each attack run only on the samples every earlier one
missed (and every attack stops per sample as soon as it breaks it):

1. **APGD-CE**, 100 steps, no restart: breaks almost every breakable sample of an undefended
   model within a few steps, so it decides the cost on most models.
2. **APGD-T** (targeted DLR, 100 steps each) on the **3** most likely wrong classes: the DLR loss
   is invariant to shifting and scaling the logits, so it defeats saturated softmax (defensive
   distillation) and catches the samples CE misses on adversarially trained models.
3. **APGD-T on targets 4 to 9**, on a *probe*: on adversarially trained MNIST models the top 3
   targets find nearly every sample the 9 find (measured: 8 of 9 breaks), at a third of the cost.
4. **Square**, 5,000 queries, margin loss, on a *probe*: a score-based black box that needs no
   gradient at all, so gradient masking cannot hide a sample from it.

A *probe* stage runs in rounds of 16 survivors, those the earlier attacks brought closest to the
decision boundary first (plus 4 random ones in the first round), and goes on only while its
rounds break samples (all of them at once if it breaks a random one): see
:mod:`bastion.evaluate.curves`; the report says what it did. Together this is
AutoAttack's standard version (Croce & Hein 2020) without FAB-T (which in AutoAttack's own reports
almost never breaks a sample APGD-CE and APGD-T missed), with the expensive tails run on every
sample only when they prove useful on the model at hand; each attack also stops per sample at
its first success instead of spending its full budget. ``attacks="full"`` runs all four stages
on every survivor (AutoAttack's budgets without FAB-T) when time is no object. Models with
fewer than 4 classes get APGD with the CW margin loss instead of APGD-T (targeted DLR needs 4
classes; AutoAttack skips it too).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Any

from bastion.attacks import APGD, APGDT, EOT, FGSM, MIFGSM, PGD, Attack, Loss, Square
from bastion.core.enums import parse_enum
from bastion.core.errors import ConfigurationError
from bastion.core.threat import ThreatModel

__all__ = [
    "AttackFactory",
    "AttackName",
    "attack_label",
    "at_threat",
    "build_named",
    "default_ensemble",
    "dlr_note",
    "is_black_box",
    "is_probe_stage",
]

AttackFactory = Callable[[ThreatModel], Attack]


class AttackName(enum.Enum):
    """Attacks selectable by name (``bastion evaluate --attacks``)."""

    DEFAULT = "default"
    FULL = "full"
    FGSM = "fgsm"
    PGD = "pgd"
    MI_FGSM = "mi-fgsm"
    APGD_CE = "apgd-ce"
    APGD_DLR = "apgd-dlr"
    APGD_T = "apgd-t"
    SQUARE = "square"
    DEEPFOOL = "deepfool"
    CW = "cw"

    @classmethod
    def parse(cls, value: AttackName | str) -> AttackName:
        return parse_enum(cls, value, "attack")

    @classmethod
    def parse_list(cls, text: str) -> list[AttackName]:
        """Parse ``"fgsm,pgd,square"``; an empty list is an error."""
        names = [cls.parse(part) for part in text.split(",") if part.strip()]
        if not names:
            raise ConfigurationError("--attacks needs at least one attack name")
        return names


def _optional(class_name: str) -> AttackFactory:
    """Attacks written elsewhere in bastion.attacks, imported when used."""

    def build(threat: ThreatModel) -> Attack:
        import bastion.attacks as attacks

        cls = getattr(attacks, class_name, None)
        if cls is None:
            raise ConfigurationError(
                f"{class_name} is not available in this version of bastion.attacks"
            )
        attack: Attack = cls(threat=threat)
        return attack

    return build


_TABLE: dict[AttackName, AttackFactory] = {
    AttackName.FGSM: lambda t: FGSM(t),
    AttackName.PGD: lambda t: PGD(threat=t, steps=40),
    AttackName.MI_FGSM: lambda t: MIFGSM(t),
    AttackName.APGD_CE: lambda t: APGD(threat=t, loss=Loss.CE, steps=100, label="apgd-ce"),
    AttackName.APGD_DLR: lambda t: APGD(threat=t, loss=Loss.DLR, steps=100, label="apgd-dlr"),
    AttackName.APGD_T: lambda t: APGDT(t, targets=9, steps=100),
    AttackName.SQUARE: lambda t: Square(threat=t, queries=5000),
    AttackName.DEEPFOOL: _optional("DeepFool"),
    AttackName.CW: _optional("CW"),
}


def default_ensemble(num_classes: int, *, full: bool = False) -> tuple[
    list[AttackFactory], list[str]
]:
    """The default factories for a model with ``num_classes`` classes, and notes on changes.

    ``full``: the 9 APGD-T targets in one stage, and no stage is a probe (see
    :func:`is_probe_stage`; only the APGD-T split is visible here).

    Example:
        >>> factories, notes = default_ensemble(10)
        >>> [attack_label(f(ThreatModel(eps=0.1))) for f in factories]
        ['apgd-ce', 'apgd-t', 'apgd-t 4-9', 'square']
    """
    notes: list[str] = []
    stages: list[AttackFactory] = [_TABLE[AttackName.APGD_CE]]
    if num_classes < 4:
        notes.append(
            f"APGD-T (targeted DLR) needs at least 4 classes, the model has {num_classes}: "
            "replaced by APGD with the CW margin loss"
        )

        def margin(t: ThreatModel) -> Attack:
            return APGD(threat=t, loss=Loss.MARGIN, steps=100, label="apgd-margin")

        stages.append(margin)
    elif full:
        stages.append(_TABLE[AttackName.APGD_T])
    else:
        stages.append(lambda t: APGDT(t, targets=3, steps=100))
        if num_classes > 4:
            stages.append(lambda t: APGDT(t, targets=6, skip_targets=3, steps=100,
                                          label="apgd-t 4-9"))
    stages.append(_TABLE[AttackName.SQUARE])
    return stages, notes


def is_probe_stage(attack: Attack, earlier: Sequence[Attack]) -> bool:
    """Whether ``attack`` refines earlier stages of the cascade, and so runs on a probe first:
    a black box after a white-box attack, or an APGD-T on targets an earlier APGD-T skipped."""
    inner = getattr(attack, "attack", attack)  # EOT wraps the attack it runs
    before = [getattr(a, "attack", a) for a in earlier]
    if is_black_box(inner):
        return any(not is_black_box(a) for a in before)
    if getattr(inner, "skip_targets", 0):
        return any(getattr(a, "targeted_classes", 0) for a in before)
    return False


def build_named(names: Sequence[AttackName | str], num_classes: int) -> tuple[
    list[AttackFactory], list[str]
]:
    """Factories for attack names (``default`` expands to the default ensemble)."""
    factories: list[AttackFactory] = []
    notes: list[str] = []
    for raw in names:
        name = AttackName.parse(raw)
        if name in (AttackName.DEFAULT, AttackName.FULL):
            more, extra = default_ensemble(num_classes, full=name is AttackName.FULL)
            factories += more
            notes += extra
        else:
            factories.append(_TABLE[name])
    return factories, notes


def at_threat(attack: Attack, threat: ThreatModel) -> Attack:
    """``attack`` rebuilt for ``threat``; an explicit ``step_size`` scales with eps."""
    if not isinstance(attack, Attack):
        raise ConfigurationError(
            f"attacks must be bastion attacks or factories ThreatModel -> Attack, got "
            f"{type(attack).__name__}"
        )
    changes: dict[str, Any] = {"threat": threat}
    if isinstance(attack, EOT):  # its threat model is its inner attack's
        return dataclasses.replace(attack, attack=at_threat(attack.attack, threat), **changes)
    old = attack.threat.eps
    step = getattr(attack, "step_size", None)
    if isinstance(step, float) and old > 0:
        changes["step_size"] = step * threat.eps / old if threat.eps > 0 else None
    return dataclasses.replace(attack, **changes)


def attack_label(attack: Attack) -> str:
    """The name reports use: the attack's ``label`` field when it has one, else its ``name``;
    ``eot(<inner>)`` for an EOT wrapper."""
    if isinstance(attack, EOT):
        return f"eot({attack_label(attack.attack)})"
    label = getattr(attack, "label", None)
    return str(label) if isinstance(label, str) and label else attack.name


def is_black_box(attack: Attack) -> bool:
    """Score-based attacks that never read a gradient."""
    return isinstance(attack, Square) or attack.name == "square"


def dlr_note(attack: Attack, num_classes: int) -> str | None:
    """Why ``attack`` cannot run on a model with ``num_classes`` classes (DLR losses), or None."""
    if getattr(attack, "loss", None) is not Loss.DLR:
        return None
    targeted = attack.targeted or bool(getattr(attack, "targeted_classes", 0))
    need = 4 if targeted else 3
    if num_classes >= need:
        return None
    return (
        f"skipped: the {'targeted ' if targeted else ''}DLR loss needs at least {need} classes, "
        f"the model has {num_classes}"
    )
