"""Randomized defenses (Xie et al. 2018 resize-and-pad, Gaussian noise): fresh randomness per
call, reproducible with a generator, the geometry Xie et al. describe, and the literature's
result: plain PGD on single random passes looks much weaker than EOT, which breaks them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks import EOT, PGD, AttackHint, attack_hints
from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.core.threat import ThreatModel
from bastion.defenses import GaussianNoise, RandomResizePad, defend
from bastion.evaluate.adaptive import ConsensusEOT
from defenses.mnist_cnn import judged_accuracy, mnist_batch, trained_cnn


@pytest.mark.parametrize("make", [lambda g: RandomResizePad(3, generator=g),
                                  lambda g: GaussianNoise(0.2, generator=g)])
def test_fresh_draw_every_call_and_reproducible_with_a_seed(make) -> None:
    x = torch.rand(4, 1, 12, 12)
    a, b = make(7), make(7)
    first, second = a(x), a(x)
    assert not torch.equal(first, second)  # fresh randomness on every forward call
    assert torch.equal(first, b(x)) and torch.equal(second, b(x))  # same seed, same sequence
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(make(gen)(x), make(torch.Generator().manual_seed(3))(x))
    torch.manual_seed(0)
    unseeded = make(None)(x)
    torch.manual_seed(0)
    assert torch.equal(unseeded, make(None)(x))  # default: torch's global generator
    assert attack_hints(defend(nn.Flatten(), make(None))) == {AttackHint.EOT}


def test_resize_pad_places_a_shrunk_copy_at_a_random_offset() -> None:
    x = torch.ones(64, 1, 10, 10)
    out = RandomResizePad(3, generator=0)(x)  # fill: the lower bound, 0
    sides, corners = set(), set()
    for image in out[:, 0]:
        rows = image.amax(dim=1).nonzero().squeeze(1)
        cols = image.amax(dim=0).nonzero().squeeze(1)
        side = rows.numel()
        assert cols.numel() == side and 7 <= side <= 10  # resized to r in [10 - 3, 10]
        assert int(image.sum()) == side * side  # one solid r x r block, the rest padding
        assert rows[-1] - rows[0] + 1 == side and cols[-1] - cols[0] + 1 == side
        assert rows[0] <= 10 - side and cols[0] <= 10 - side  # offset in {0, ..., 10 - r}
        sides.add(side)
        corners.add((int(rows[0]), int(cols[0])))
    assert sides == {7, 8, 9, 10}  # every size is drawn, per sample
    assert len(corners) > 4


def test_noise_has_the_declared_sigma_and_stays_in_bounds() -> None:
    x = torch.full((200, 50), 0.5)
    out = GaussianNoise(0.1, generator=0)(x)
    assert abs(float((out - x).std()) - 0.1) < 0.005
    wide = GaussianNoise(2.0, generator=0, bounds=(-1, 1))(torch.zeros(100, 30))
    assert float(wide.min()) == -1.0 and float(wide.max()) == 1.0


def test_bad_parameters_and_inputs_say_what_to_fix() -> None:
    with pytest.raises(ConfigurationError, match="max_shrink must be an integer >= 1"):
        RandomResizePad(0)
    with pytest.raises(ConfigurationError, match="fill must lie inside the bounds"):
        RandomResizePad(2, fill=2.0)
    with pytest.raises(ConfigurationError, match="sigma must be a positive number"):
        GaussianNoise(0.0)
    with pytest.raises(ConfigurationError, match="generator must be a torch.Generator"):
        GaussianNoise(0.1, generator="seed")  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match=r"max_shrink < 4"):
        RandomResizePad(5)(torch.rand(1, 1, 4, 4))
    with pytest.raises(InputValidationError, match=r"\(B, C, H, W\) images"):
        RandomResizePad(2)(torch.rand(8, 8))
    with pytest.raises(InputValidationError, match=r"inside bounds \[0, 1\]"):
        GaussianNoise(0.1)(torch.full((2, 3), 255.0))


@pytest.mark.parametrize(
    "defense", [RandomResizePad(3, generator=5), GaussianNoise(0.3, generator=5)],
    ids=["resize-pad", "noise"],
)
def test_eot_breaks_what_plain_pgd_on_single_passes_leaves_standing(defense) -> None:
    model = trained_cnn()
    defended = defend(model, defense)
    x, y = mnist_batch(100)
    threat = ThreatModel(eps=0.12)
    undefended = judged_accuracy(model, PGD(threat=threat, steps=20)(model, x, y), y)
    clean = judged_accuracy(defended, x, y, passes=10)
    plain = judged_accuracy(defended, PGD(threat=threat, steps=20)(defended, x, y), y, passes=10)
    eot_pgd = EOT(attack=PGD(threat=threat, steps=20), samples=10)
    eot = judged_accuracy(defended, eot_pgd(defended, x, y), y, passes=10)
    adaptive_pgd = ConsensusEOT(attack=PGD(threat=threat, steps=20), samples=10)
    adaptive = judged_accuracy(defended, adaptive_pgd(defended, x, y), y, passes=10)
    print(f"clean {clean:.2f} undefended-PGD {undefended:.2f} plain {plain:.2f} "
          f"EOT {eot:.2f} consensus-EOT {adaptive:.2f}")
    assert clean >= 0.85
    assert plain >= undefended + 0.2, "the randomness should fool plain PGD"
    assert eot < plain  # averaging the randomness helps even with the plain early stop
    assert adaptive <= plain - 0.2, "EOT should break much of what plain PGD left"
    assert adaptive <= undefended + 0.1  # the defense adds little once attacked adaptively
