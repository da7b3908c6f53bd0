"""bastion.train.ensemble: members combined as one model, trained with fit, attacked as a whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks import PGD, AttackHint, attack_hints
from bastion.core.errors import ConfigurationError
from bastion.core.threat import ThreatModel
from bastion.data import load_dataset
from bastion.evaluate import robustness
from bastion.train.ensemble import Ensemble, EnsembleMode, EnsembleResult, train_ensemble


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def trained() -> tuple[EnsembleResult, torch.Tensor, torch.Tensor]:
    """Three MLPs on scikit-learn digits (seeds 0, 1, 2), mean-logits ensemble; ~5 s."""
    split = load_dataset("digits")
    result = train_ensemble(
        _mlp, (split.x_train, split.y_train), seeds=(0, 1, 2), epochs=8, lr=1e-2, batch_size=64,
        val_data=(split.x_test, split.y_test), progress=False)
    return result, split.x_test, split.y_test


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _random_members(count: int, classes: int, seed: int) -> list[nn.Module]:
    gen = torch.Generator().manual_seed(seed)
    members = []
    for _ in range(count):
        layer = nn.Linear(5, classes)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(classes, 5, generator=gen))
            layer.bias.copy_(torch.randn(classes, generator=gen))
        members.append(layer)
    return members


# -- training and averaging ------------------------------------------------------------------


def test_ensemble_accuracy_is_at_least_the_mean_member_accuracy(trained) -> None:
    result, x, y = trained
    members = list(result.ensemble.members)
    # recomputed here, not read back from the result
    member_acc = [_accuracy(m, x, y) for m in members]
    ensemble_acc = _accuracy(result.ensemble, x, y)
    assert result.member_accuracy == pytest.approx(member_acc)
    assert result.accuracy == pytest.approx(ensemble_acc)
    assert min(member_acc) > 0.85
    # the seeds made different models: averaging has something to correct
    with torch.no_grad():
        preds = torch.stack([m(x).argmax(1) for m in members])
    assert float((preds != preds[0]).any(0).float().mean()) > 0.01
    assert ensemble_acc >= sum(member_acc) / len(member_acc)
    assert result.mean_member_accuracy == pytest.approx(sum(member_acc) / 3)
    assert result.seeds == (0, 1, 2) and result.evaluated_on == "validation"
    assert [r.config.seed for r in result.members] == [0, 1, 2]


def test_factories_build_members_from_their_own_seeds(trained) -> None:
    result, _, _ = trained
    first = [m[1].weight for m in result.ensemble.members]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])


def test_result_json_leaves_the_module_out(trained) -> None:
    result, _, _ = trained
    data = json.loads(result.to_json())
    assert "ensemble" not in data
    assert data["mode"] == "logits" and data["seeds"] == [0, 1, 2]
    assert len(data["members"]) == 3 and data["members"][0]["history"]
    assert data["mean_member_accuracy"] == pytest.approx(result.mean_member_accuracy)


def test_members_follow_the_ensembles_train_and_eval_mode() -> None:
    ensemble = Ensemble([nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)) for _ in range(2)])
    ensemble.train()
    assert all(m.training for m in ensemble.modules())
    ensemble.eval()
    assert not any(m.training for m in ensemble.modules())


# -- combination modes -----------------------------------------------------------------------


def test_logits_and_probs_modes_match_their_formulas() -> None:
    members = _random_members(3, 4, seed=1)
    x = torch.rand(20, 5)
    z = torch.stack([m(x) for m in members]).detach()
    weights = [0.5, 0.3, 0.2]
    w = torch.tensor(weights)[:, None, None]
    logits = Ensemble(members, mode="logits", weights=weights)(x)
    probs = Ensemble(members, mode=EnsembleMode.PROBS, weights=weights)(x)
    torch.testing.assert_close(logits, (w * z).sum(0))
    torch.testing.assert_close(probs.exp(), (w * z.softmax(2)).sum(0))


@pytest.mark.parametrize(
    ("count", "weights"), [(4, None), (2, None), (4, [0.4, 0.35, 0.25, 0.15])])
def test_vote_forward_is_the_majority_of_member_argmaxes(count, weights) -> None:
    members = _random_members(count, 3, seed=0)  # an even number of voters: ties happen
    x = torch.rand(400, 5, generator=torch.Generator().manual_seed(0))
    ensemble = Ensemble(members, mode="vote", weights=weights)
    with torch.no_grad():
        out = ensemble(x)
        z = np.stack([m(x).numpy() for m in members])
    w = np.ones(count) if weights is None else np.asarray(weights)
    votes = z.argmax(2)  # (members, N)
    mean_probs = np.exp(z - z.max(2, keepdims=True))
    mean_probs = (w[:, None, None] * mean_probs / mean_probs.sum(2, keepdims=True)).sum(0)
    pred = out.argmax(1).numpy()
    ties = 0
    for i in range(x.shape[0]):
        count = np.bincount(votes[:, i], weights=w, minlength=3)
        winners = np.flatnonzero(np.isclose(count, count.max()))
        if len(winners) == 1:
            assert pred[i] == winners[0]
        else:  # a tie goes to the tied class with the highest mean probability
            ties += 1
            assert pred[i] == winners[np.argmax(mean_probs[i, winners])]
    if weights is None:
        assert ties > 0  # the tie-break was exercised
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.exp().sum(1), torch.ones(400))  # a valid log-probability row


def test_vote_gradient_is_the_probs_gradient() -> None:
    members = _random_members(3, 4, seed=2)
    x = torch.rand(16, 5, requires_grad=True)
    upstream = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    vote, probs = Ensemble(members, mode="vote"), Ensemble(members, mode="probs")
    (grad_vote,) = torch.autograd.grad(vote(x), x, upstream)
    (grad_probs,) = torch.autograd.grad(probs(x), x, upstream)
    assert bool((grad_vote.abs().sum(1) > 0).all())
    torch.testing.assert_close(grad_vote, grad_probs, rtol=0, atol=0)
    # the straight-through surrogate leaves the forward value untouched
    torch.testing.assert_close(vote(x), Ensemble(members, mode="vote")(x.detach()))
    assert attack_hints(vote) == {AttackHint.BPDA}
    assert attack_hints(probs) == frozenset()


# -- attacked as one model -------------------------------------------------------------------


def test_pgd_breaks_the_ensemble_at_a_large_eps(trained) -> None:
    result, x, y = trained
    for mode in ("logits", "vote"):
        ensemble = Ensemble(list(result.ensemble.members), mode=mode)
        report = robustness(ensemble, (x[:150], y[:150]), ThreatModel(eps=0.3), "pgd",
                            sanity=False, progress=False)
        assert report.clean_accuracy > 0.9
        assert report.robust_accuracy <= 0.02, mode


def test_attacking_the_ensemble_beats_transfer_from_one_member(trained) -> None:
    result, x, y = trained
    x, y = x[:200], y[:200]
    threat = ThreatModel(eps=0.1)
    attack = PGD(threat=threat, steps=40)
    adaptive = robustness(result.ensemble, (x, y), threat, [attack], sanity=False,
                          progress=False).robust_accuracy
    x_transfer = attack(result.ensemble.members[0], x, y)
    transfer = _accuracy(result.ensemble, x_transfer, y)
    assert adaptive <= transfer - 0.1


# -- errors ----------------------------------------------------------------------------------


def test_members_with_different_output_widths_are_refused() -> None:
    ensemble = Ensemble([nn.Linear(4, 10), nn.Linear(4, 10), nn.Linear(4, 3)])
    with pytest.raises(ConfigurationError, match=r"members\[0\] returns 10 logits, "
                       r"members\[2\] returns 3"):
        ensemble(torch.rand(2, 4))
    with pytest.raises(ConfigurationError, match=r"members\[1\] returned shape \(2, 3, 1\)"):
        Ensemble([nn.Linear(3, 3), nn.Unflatten(1, (3, 1))])(torch.rand(2, 3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"members": []}, "at least one model"),
        ({"members": nn.Linear(2, 2)}, "sequence of nn.Module"),
        ({"members": [nn.Linear(2, 2), "model"]}, r"members\[1\]: expected a torch.nn.Module"),
        ({"mode": "median"}, "unknown ensemble mode 'median': use one of logits, probs, vote"),
        ({"weights": [1.0]}, "one weight per member"),
        ({"weights": [1.0, 0.0]}, r"weights\[1\]: expected a finite number > 0"),
        ({"weights": [1.0, float("nan")]}, r"weights\[1\]"),
    ],
)
def test_bad_ensemble_arguments_are_refused(kwargs, match) -> None:
    args = {"members": [nn.Linear(2, 2), nn.Linear(2, 2)], **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        Ensemble(**args)


@pytest.mark.parametrize(
    ("models", "kwargs", "match"),
    [
        (_mlp, {"seed": 1}, "one seed per member with seeds="),
        (_mlp, {"seeds": (1, 1)}, "distinct seeds"),
        (_mlp, {"seeds": ()}, "non-empty sequence of integers"),
        ([_mlp(), _mlp()], {"seeds": (0, 1, 2)}, r"one seed per member \(2\), got 3"),
        ([], {}, "non-empty sequence"),
        ("mlp", {}, "factory"),
        (lambda: "not a module", {}, r"models\[0\]: the factory returned str"),
        (_mlp, {"optimiser": "adam"}, "unknown fit option"),
    ],
)
def test_bad_train_ensemble_arguments_are_refused(models, kwargs, match) -> None:
    split = load_dataset("digits")
    with pytest.raises(ConfigurationError, match=match):
        train_ensemble(models, (split.x_train[:32], split.y_train[:32]), epochs=1,
                       progress=False, **kwargs)


def test_the_same_module_twice_is_refused() -> None:
    model = _mlp()
    with pytest.raises(ConfigurationError, match="same module appears twice"):
        train_ensemble([model, model], (torch.rand(8, 1, 8, 8), torch.zeros(8).long()))


def test_a_list_of_architectures_trains_in_place_and_writes_each_run(tmp_path) -> None:
    split = load_dataset("digits")
    first, second = _mlp(), nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    before = second[1].weight.detach().clone()
    result = train_ensemble([first, second], (split.x_train[:128], split.y_train[:128]),
                            mode="probs", epochs=1, out=tmp_path, progress=False)
    assert result.seeds == (0, 1) and result.mode is EnsembleMode.PROBS
    assert result.ensemble.members[1] is second
    assert not torch.equal(second[1].weight, before)
    assert result.evaluated_on == "training"
    assert (tmp_path / "member-0" / "train.json").is_file()
    assert (tmp_path / "member-1" / "train.json").is_file()
    assert F.softmax(result.ensemble(split.x_test[:4]), 1).sum(1).allclose(torch.ones(4))
