"""bastion.evaluate picks the adaptive attack a model needs: EOT for randomized models (declared
or detected, judged over repeated passes), notes for BPDA; adaptive=False attacks the model as it
is and the sanity checks flag it. On a CNN trained in the test (tests/defenses/mnist_cnn.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from _helpers.models import trained_digits_mlp
from bastion.attacks import EOT, PGD
from bastion.core.errors import ConfigurationError
from bastion.core.threat import ThreatModel
from bastion.defenses import BitDepth, RandomResizePad, defend
from bastion.evaluate import MASKING_FLAG, robustness
from bastion.evaluate.adaptive import ConsensusEOT, ExpectedLogits, logit_spread, plan_adaptive
from defenses.mnist_cnn import mnist_batch, one_thread, trained_cnn


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_thread():
        yield


def _checks(result) -> dict[str, object]:
    return {c.check: c for c in result.sanity}


def test_declared_randomized_model_gets_eot_and_is_judged_over_passes() -> None:
    defended = defend(trained_cnn(), RandomResizePad(3, generator=0))
    x, y = mnist_batch(100)
    result = robustness(defended, (x, y), ThreatModel(eps=0.3), progress=False,
                        sanity_samples=40, eot_samples=8)
    print(result.summary(), *result.notes, *(c.detail for c in result.sanity), sep="\n")
    names = [a.name for a in result.attacks]  # the default ensemble, gradient stages in EOT
    assert names[:2] == ["eot(apgd-ce)", "eot(apgd-t)"] and names[-1] == "square"
    assert all(n.startswith("eot(") for n in names[:-1])
    assert result.attacks[0].params["samples"] == 8
    assert result.clean_accuracy >= 0.85
    assert result.robust_accuracy <= 0.05
    assert any("adaptive attack: EOT, because RandomResizePad declares randomness" in n
               for n in result.notes)
    deterministic = _checks(result)["deterministic"]
    assert deterministic.passed and "uses EOT" in deterministic.detail
    assert not result.gradient_masking_suspected


def test_forced_plain_attacks_on_a_randomized_model_are_flagged_and_weaker() -> None:
    defended = defend(trained_cnn(), RandomResizePad(3, generator=0))
    x, y = mnist_batch(100)
    threat = ThreatModel(eps=0.12)
    attacks = [PGD(threat=threat, steps=20)]
    plain = robustness(defended, (x, y), threat, attacks, progress=False, sanity_samples=40,
                       adaptive=False)
    adaptive = robustness(defended, (x, y), threat, attacks, progress=False, sanity=False)
    print(f"plain {plain.robust_accuracy:.2f} adaptive {adaptive.robust_accuracy:.2f}")
    assert [a.name for a in plain.attacks] == ["pgd"]
    assert [a.name for a in adaptive.attacks] == ["eot(pgd)"]
    assert not _checks(plain)["deterministic"].passed
    assert MASKING_FLAG in plain.flags
    assert any(n.startswith("adaptive=False: RandomResizePad declares randomness")
               for n in plain.notes)
    # the plain attack's own number (the worst case also counts the sanity checks' attacks)
    assert adaptive.robust_accuracy <= plain.attacks[0].robust_accuracy - 0.2
    assert plain.robust_accuracy <= plain.attacks[0].robust_accuracy


class _SecretlyNoisy(nn.Module):
    """Randomized, and does not say so (no attack hint)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator)
        return self.model((x + 0.2 * noise).clamp(0, 1))


def test_undeclared_randomness_is_detected_and_attacked_with_eot() -> None:
    model = _SecretlyNoisy(trained_cnn())
    x, y = mnist_batch(60)
    assert logit_spread(model, x[:10]) > 1e-4
    result = robustness(model, (x, y), ThreatModel(eps=0.3), "fgsm,pgd", progress=False,
                        sanity=False, eot_samples=4)
    assert [a.name for a in result.attacks] == ["eot(fgsm)", "eot(pgd)"]
    note = next(n for n in result.notes if n.startswith("adaptive attack: EOT"))
    assert "5 clean passes disagree" in note and "no module declares randomness" in note
    assert result.robust_accuracy <= 0.05


def test_bpda_model_breaks_with_its_own_backward_and_a_note() -> None:
    defended = defend(trained_cnn(), BitDepth(4))
    x, y = mnist_batch(100)
    result = robustness(defended, (x, y), ThreatModel(eps=0.3), progress=False,
                        sanity_samples=40)
    names = [a.name for a in result.attacks]
    assert names[:2] == ["apgd-ce", "apgd-t"] and names[-1] == "square"  # no EOT: BPDA only
    assert result.robust_accuracy <= 0.05
    assert [n for n in result.notes if "BPDA" in n] == [
        "gradients approximated (BPDA): BitDepth is not differentiable and carries its own "
        "backward approximation; the white-box attacks used it, and the black-box attack and "
        "the sanity checks cross-check it"
    ]
    assert not any("EOT" in n for n in result.notes)
    assert _checks(result)["gradients"].passed


def test_deterministic_model_is_left_alone() -> None:
    model, x, y = trained_digits_mlp()
    plan = plan_adaptive(model, x[:20])
    assert (plan.uses_eot, plan.notes, plan.spread) == (False, (), 0.0)
    attack = PGD(threat=ThreatModel(eps=0.1))
    assert plan.wrap(attack) is attack and plan.judge(model) is model
    off = plan_adaptive(defend(model, RandomResizePad(2)), x[:20].reshape(-1, 1, 8, 8),
                        adaptive=False)
    assert not off.uses_eot and off.spread is None  # no randomness check when switched off


class _Coin(nn.Module):
    """Predicts class 1 on 70% of passes, class 0 on the others, whatever the input."""

    def __init__(self) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = torch.rand(x.shape[0], generator=self.generator) < 0.7
        one = torch.where(heads, 1.0, -1.0) + 0 * x.flatten(1).sum(1)  # a graph to x
        return torch.stack([torch.zeros_like(one), one], dim=1)


def test_consensus_keeps_attacking_until_every_pass_is_fooled() -> None:
    x, y = torch.rand(40, 1, 2, 2), torch.zeros(40, dtype=torch.long)
    pgd = PGD(threat=ThreatModel(eps=0.1), steps=5)
    _, mean_only = EOT(attack=pgd, samples=10).run_with_stats(_Coin(), x, y)
    _, consensus = ConsensusEOT(attack=pgd, samples=10).run_with_stats(_Coin(), x, y)
    # the averaged logits say "class 1" for most samples at once: plain EOT stops there; only
    # 0.7^10 = 3% of samples are fooled on all 10 passes, so consensus EOT attacks nearly all
    assert mean_only.backward <= 0.4 * 40 * 5 * 10
    assert consensus.backward >= 0.9 * 40 * 5 * 10


def test_user_eot_attacks_are_kept_and_rebuilt_along_the_curve() -> None:
    model, x, y = trained_digits_mlp()
    noisy = _SecretlyNoisy(model)
    attack = EOT(attack=PGD(threat=ThreatModel(eps=0.1), steps=5), samples=2)
    result = robustness(noisy, (x[:40], y[:40]), ThreatModel(eps=0.1), [attack],
                        eps=[0.05], progress=False, sanity=False, eot_samples=3)
    assert [a.name for a in result.attacks] == ["eot(pgd)"]  # not wrapped twice
    assert result.attacks[0].params["samples"] == 2
    assert [p.eps for p in result.curve] == [0.05, 0.1]


def test_judged_model_averages_and_options_are_checked() -> None:
    model, x, _ = trained_digits_mlp()
    noisy = _SecretlyNoisy(model)
    with torch.no_grad():
        single = torch.stack([noisy(x[:5]) for _ in range(20)]).std(dim=0).mean()
        judged = torch.stack([ExpectedLogits(noisy, 16)(x[:5]) for _ in range(20)])
    assert float(judged.std(dim=0).mean()) < 0.5 * float(single)  # ~1/4 for 16 passes
    with pytest.raises(ConfigurationError, match="consensus must be a number in"):
        ConsensusEOT(attack=PGD(threat=ThreatModel(eps=0.1)), consensus=0)
    with pytest.raises(ConfigurationError, match="eot_samples must be a positive integer"):
        robustness(model, (x, x[:, 0, 0, 0].long()), ThreatModel(eps=0.1), eot_samples=0)
    params = ConsensusEOT(attack=PGD(threat=ThreatModel(eps=0.1)), samples=3).params()
    assert (params["samples"], params["consensus"], params["attack"]) == (3, 1.0, "pgd")
