"""One list of every attack, run through the same checks (STYLE.md convention 13).

Adding an attack = one entry in ``ATTACKS``: an id, a factory from a threat model to the attack,
the norms it supports, and the highest accuracy it may leave on the trained digits MLP at
eps = 0.3 (Linf) / 2.0 (L2) — a bound it must beat for the test to pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from bastion.attacks import (
    APGD,
    APGDT,
    EOT,
    FGSM,
    MIFGSM,
    PGD,
    Attack,
    CarliniWagner,
    DeepFool,
    Square,
)
from bastion.core.threat import Norm, ThreatModel


@dataclasses.dataclass(frozen=True)
class Entry:
    id: str
    make: Callable[[ThreatModel], Attack]
    norms: tuple[Norm, ...] = (Norm.LINF, Norm.L2)
    max_accuracy: float = 0.05  # on the trained MLP, at the harness's large eps
    deterministic: bool = True


ATTACKS: list[Entry] = [
    Entry("fgsm", lambda t: FGSM(t), max_accuracy=0.5),
    Entry("pgd", lambda t: PGD(threat=t, steps=20)),
    Entry("pgd-margin-cosine", lambda t: PGD(threat=t, steps=20, loss="margin", schedule="cosine")),
    Entry("pgd-restarts", lambda t: PGD(threat=t, steps=5, restarts=3)),
    Entry("mi-fgsm", lambda t: MIFGSM(t, steps=10)),
    Entry("apgd-ce", lambda t: APGD(threat=t, steps=20)),
    Entry("apgd-dlr", lambda t: APGD(threat=t, steps=20, loss="dlr"), norms=(Norm.LINF,)),
    Entry("apgd-t", lambda t: APGDT(t, targets=3, steps=10)),
    Entry("deepfool", lambda t: DeepFool(threat=t)),
    Entry(
        "cw",
        lambda t: CarliniWagner(
            threat=t, steps=50, binary_search_steps=4, initial_const=1.0, lr=0.05
        ),
        norms=(Norm.L2,),
    ),
    Entry("eot-pgd", lambda t: EOT(attack=PGD(threat=t, steps=10), samples=2)),
    Entry("square", lambda t: Square(threat=t, queries=200), max_accuracy=0.1),
]

LARGE_EPS = {Norm.LINF: 0.3, Norm.L2: 2.0}


def cases() -> list[tuple[str, Entry, Norm]]:
    """(test id, entry, norm) for every supported combination."""
    return [(f"{e.id}-{n.value}", e, n) for e in ATTACKS for n in e.norms]
