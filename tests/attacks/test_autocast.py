"""Attacks under bfloat16 autocast: the model runs in bfloat16, the perturbation stays float32
inside the threat model, and the attack still breaks the model."""

from __future__ import annotations

import pytest
import torch

from _helpers.models import accuracy, trained_digits_mlp
from bastion.attacks import APGD, PGD, Square
from bastion.core.threat import ThreatModel


@pytest.mark.parametrize(
    "make",
    [
        lambda t: PGD(threat=t, steps=20, autocast=torch.bfloat16),
        lambda t: APGD(threat=t, steps=20, autocast=torch.bfloat16),
        lambda t: Square(threat=t, queries=200, autocast=torch.bfloat16),
    ],
    ids=["pgd", "apgd", "square"],
)
def test_bfloat16_autocast(make) -> None:  # type: ignore[no-untyped-def]
    model, x, y = trained_digits_mlp()
    seen: set[torch.dtype] = set()
    hook = model[1].register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    threat = ThreatModel(norm="linf", eps=0.3)
    try:
        x_adv = make(threat)(model, x, y)
    finally:
        hook.remove()
    assert seen == {torch.bfloat16}, f"the model ran in {seen}, not under bfloat16 autocast"
    assert x_adv.dtype == torch.float32
    assert ((x_adv - x).abs().amax() <= 0.3 + 1e-6) and x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(model, x_adv, y) <= 0.1


def test_autocast_rejects_unsupported_dtypes() -> None:
    import bastion

    with pytest.raises(bastion.ConfigurationError, match="autocast"):
        PGD(threat=ThreatModel(norm="linf", eps=0.1), autocast=torch.int8)
