"""APGD-T's targets: skip_targets starts further down the ranking of wrong classes."""

from __future__ import annotations

import pytest
import torch

from bastion import ThreatModel
from bastion.attacks import APGDT
from bastion.core.errors import ConfigurationError


class _Fixed(torch.nn.Module):
    """Logits that rank the wrong classes 1 > 2 > 3 > 4 for label 0, and let only class 4 win:
    adding input mass raises class 4's logit only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).sum(dim=1)
        base = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
        out = base.expand(x.shape[0], 5).clone()
        out[:, 4] = out[:, 4] + 10 * s
        return out


def test_skip_targets_reaches_a_target_the_top_ones_miss() -> None:
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    threat = ThreatModel(norm="linf", eps=0.15)  # mass grows by 0.6: class 4 reaches 7 > 5
    top2 = APGDT(threat, targets=2, steps=20)(_Fixed(), x, y)
    rest = APGDT(threat, targets=2, skip_targets=2, steps=20)(_Fixed(), x, y)
    # only the skipped-to targets (3 and 4) include class 4; ranking top-2 never tries it
    assert bool((_Fixed()(rest).argmax(1) == 4).all())
    assert bool((_Fixed()(top2).argmax(1) != 4).all())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"skip_targets": -1}, "skip_targets must be an integer >= 0"),
    ({"skip_targets": 1.5}, "skip_targets must be an integer >= 0"),
])
def test_bad_skip_targets(kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigurationError, match=match):
        APGDT(ThreatModel(eps=0.1), **kwargs)


def test_skip_targets_needs_apgd_t() -> None:
    from bastion.attacks import APGD

    with pytest.raises(ConfigurationError, match="applies to APGD-T"):
        APGD(threat=ThreatModel(eps=0.1), skip_targets=2)
