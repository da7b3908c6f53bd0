"""bastion.evaluate.robustness against independent facts on an MLP trained in the test."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from _helpers.models import trained_digits_mlp
from bastion.attacks import APGD, FGSM, PGD
from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.core.threat import ThreatModel
from bastion.evaluate import MASKING_FLAG, compare, robustness
from bastion.evaluate.compare import comparison_table


@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, _, _ = trained_digits_mlp()
    from bastion.data import load_digits

    split = load_digits()
    return model, split.x_test[:120], split.y_test[:120]


def _deterministic() -> list[object]:
    # no random start: each sample's trajectory does not depend on the batch it is in
    return [FGSM(ThreatModel(eps=0.1)),
            PGD(threat=ThreatModel(eps=0.1), steps=10, random_start=False),
            APGD(threat=ThreatModel(eps=0.1), steps=20, random_start=False, label="apgd-ce")]


def test_eps_zero_equals_clean_accuracy(mlp) -> None:
    model, x, y = mlp
    result = robustness(model, (x, y), ThreatModel(eps=0.0), sanity=False, progress=False)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    assert result.clean_accuracy == pytest.approx(clean)
    assert result.robust_accuracy == pytest.approx(clean)
    assert result.forward == 0 and result.backward == 0


def test_large_eps_breaks_nearly_everything_with_the_default_ensemble(mlp) -> None:
    model, x, y = mlp
    result = robustness(model, (x, y), ThreatModel(eps=0.4), sanity=False, progress=False)
    assert result.clean_accuracy > 0.9
    assert result.robust_accuracy <= 0.02
    assert [a.name for a in result.attacks] == ["apgd-ce", "apgd-t", "apgd-t 4-9", "square"]


def test_worst_case_equals_independent_per_sample_recomputation(mlp) -> None:
    model, x, y = mlp
    attacks = _deterministic()
    result = robustness(model, (x, y), ThreatModel(eps=0.1), attacks, sanity=False,
                        progress=False, batch_size=1000)
    with torch.no_grad():
        survive = model(x).argmax(1) == y
        for attack in attacks:
            survive &= model(attack(model, x, y)).argmax(1) == y  # type: ignore[operator]
    assert result.robust_accuracy == pytest.approx(float(survive.float().mean()))
    singles = []
    for attack in attacks:
        single = robustness(model, (x, y), ThreatModel(eps=0.1), [attack], sanity=False,
                            progress=False)
        singles.append(single.robust_accuracy)
        assert result.robust_accuracy <= single.robust_accuracy
    # the ensemble is strictly useful here: FGSM alone leaves samples that PGD/APGD break
    assert result.robust_accuracy < singles[0]
    # the cascade: robust accuracy after each attack never rises, and the last one is the result
    after = [a.robust_accuracy for a in result.attacks]
    assert after == sorted(after, reverse=True) and after[-1] == result.robust_accuracy
    assert sum(a.broken for a in result.attacks) == round(
        (result.clean_accuracy - result.robust_accuracy) * result.samples)


def test_curve_is_monotone_and_reuses_work(mlp) -> None:
    model, x, y = mlp
    grid = [0.0, 0.05, 0.1, 0.15, 0.2]
    attacks = "apgd-ce,apgd-t"
    curve = robustness(model, (x, y), ThreatModel(eps=0.2), attacks, eps=grid, sanity=False,
                       progress=False)
    accs = [p.robust_accuracy for p in curve.curve]
    assert [p.eps for p in curve.curve] == grid
    assert accs == sorted(accs, reverse=True)
    assert accs[0] == pytest.approx(curve.clean_accuracy)
    scratch = [robustness(model, (x, y), ThreatModel(eps=e), attacks, sanity=False,
                          progress=False) for e in grid]
    assert curve.forward + curve.backward < sum(r.forward + r.backward for r in scratch)
    assert curve.robust_accuracy == curve.curve[-1].robust_accuracy
    # reuse never makes a point weaker than attacking from scratch
    for point, fresh in zip(curve.curve, scratch, strict=True):
        assert point.robust_accuracy <= fresh.robust_accuracy + 1e-9


def test_per_attack_and_per_class_results(mlp) -> None:
    model, x, y = mlp
    result = robustness(model, (x, y), ThreatModel(eps=0.1), "fgsm,pgd", sanity=False,
                        progress=False)
    fgsm, pgd = result.attacks
    assert fgsm.attacked == round(result.clean_accuracy * result.samples)
    assert pgd.attacked == fgsm.attacked - fgsm.broken
    assert fgsm.backward == fgsm.attacked  # one gradient per sample
    assert fgsm.mean_norm == pytest.approx(0.1, rel=1e-4)  # FGSM steps the whole eps
    assert pgd.params["steps"] == 40
    total = sum(c.samples for c in result.per_class)
    robust = sum(c.robust_accuracy * c.samples for c in result.per_class)
    assert total == result.samples and robust / total == pytest.approx(result.robust_accuracy)
    data = json.loads(result.to_json())
    for key in ("threat", "samples", "clean_accuracy", "robust_accuracy", "attacks", "curve",
                "sanity"):
        assert key in data
    assert set(data["attacks"][0]) >= {"name", "params", "robust_accuracy", "success_rate",
                                       "seconds"}


def test_sanity_checks_pass_on_the_plain_mlp(mlp) -> None:
    model, x, y = mlp
    result = robustness(model, (x, y), ThreatModel(eps=0.1), "apgd-ce", progress=False,
                        sanity_samples=60)
    names = {c.check for c in result.sanity}
    assert names == {"logits", "deterministic", "gradients", "chance at large eps", "monotone",
                     "more steps", "single step", "sanity attacks", "black box",
                     "finite logits"}
    assert all(c.passed for c in result.sanity), result.sanity
    assert result.flags == ()


class _Rounded(nn.Module):
    """Bit-depth reduction in front of the MLP: shattered (zero) gradients."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


class _Softmax(nn.Module):
    """Saturated probabilities instead of logits (defensive distillation's trick)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(50 * self.inner(x), dim=1)


@pytest.mark.parametrize(("wrapper", "failed"), [(_Rounded, "gradients"), (_Softmax, "logits")])
def test_sanity_flags_gradient_masking(mlp, wrapper, failed) -> None:
    model, x, y = mlp
    result = robustness(wrapper(model), (x, y), ThreatModel(eps=0.1), "pgd", progress=False,
                        sanity_samples=60)
    by_name = {c.check: c for c in result.sanity}
    assert not by_name[failed].passed
    assert result.flags == (MASKING_FLAG,) and result.gradient_masking_suspected
    assert MASKING_FLAG in result.summary() and MASKING_FLAG in result.to_json()


def test_randomized_model_is_flagged(mlp) -> None:
    model, x, y = mlp

    class Noisy(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return model((t + 0.05 * torch.randn_like(t)).clamp(0, 1))

    # adaptive=False: attacked as it is (the default detects the randomness and uses EOT,
    # tests/evaluate/test_adaptive.py)
    result = robustness(Noisy(), (x, y), ThreatModel(eps=0.1), "fgsm", progress=False,
                        sanity_samples=40, adaptive=False)
    check = {c.check: c for c in result.sanity}["deterministic"]
    assert not check.passed and "EOT" in check.detail


def test_baseline_comparison_contains_both(mlp) -> None:
    model, x, y = mlp
    weak = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    result = compare(model, weak, (x, y), ThreatModel(eps=0.05), "fgsm", eps=[0.0, 0.05],
                     name="mlp", baseline_name="linear", sanity=False, progress=False)
    assert result.baseline is not None and result.baseline.samples == result.samples
    data = result.to_dict()
    assert data["model"] == "mlp" and data["baseline"]["model"] == "linear"
    table = comparison_table(result)
    assert "mlp" in table and "linear" in table


def test_dataset_and_dataloader_give_the_same_result(mlp) -> None:
    model, x, y = mlp
    from torch.utils.data import DataLoader, TensorDataset

    kwargs = {"attacks": "fgsm", "sanity": False, "progress": False, "limit": 50}
    a = robustness(model, (x, y), ThreatModel(eps=0.1), **kwargs)
    b = robustness(model, TensorDataset(x, y), ThreatModel(eps=0.1), **kwargs)
    c = robustness(model, DataLoader(TensorDataset(x, y), batch_size=16), ThreatModel(eps=0.1),
                   **kwargs)
    assert a.samples == b.samples == c.samples == 50
    assert a.robust_accuracy == b.robust_accuracy == c.robust_accuracy


def test_dlr_attacks_skipped_for_two_classes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x, y = torch.rand(20, 1, 2, 2), torch.randint(0, 2, (20,))
    result = robustness(model, (x, y), ThreatModel(eps=0.1), "apgd-dlr,apgd-t,fgsm",
                        sanity=False, progress=False)
    dlr, apgdt, fgsm = result.attacks
    assert "needs at least 3 classes" in dlr.note and dlr.attacked == 0
    assert "needs at least 4 classes" in apgdt.note
    default = robustness(model, (x, y), ThreatModel(eps=0.1), sanity=False, progress=False)
    assert [a.name for a in default.attacks] == ["apgd-ce", "apgd-margin", "square"]
    assert any("4 classes" in n for n in default.notes)


def test_bad_input_is_reported_not_crashed(mlp) -> None:
    model, x, y = mlp
    with pytest.raises(ConfigurationError, match="unknown attack 'nope'.*apgd-ce"):
        robustness(model, (x, y), ThreatModel(eps=0.1), "nope")
    with pytest.raises(InputValidationError, match="inside bounds"):
        robustness(model, (x + 2, y), ThreatModel(eps=0.1), "fgsm")
    with pytest.raises(InputValidationError, match="labels must lie in"):
        robustness(model, (x, y + 10), ThreatModel(eps=0.1), "fgsm")
    with pytest.raises(ConfigurationError, match="eps must be finite and >= 0"):
        robustness(model, (x, y), ThreatModel(eps=0.1), "fgsm", eps=[-1.0])
    for norm in ("linf", "l2"):  # 1e308 used to overflow float32 deep inside torch
        with pytest.raises(ConfigurationError, match="eps must be at most 1e"):
            robustness(model, (x, y), ThreatModel(norm=norm, eps=0.1), "fgsm", eps=[1e308])
    with pytest.raises(ConfigurationError, match="data must be"):
        robustness(model, x, ThreatModel(eps=0.1), "fgsm")


class _NanOffGrid(nn.Module):
    """NaN logits wherever the input leaves the digits' pixel grid (k/16): every perturbed point."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)
        off = ((x * 16 - torch.round(x * 16)).abs() > 1e-3).flatten(1).any(dim=1)
        return torch.where(off[:, None], torch.full_like(z, float("nan")), z)


def test_nan_logits_at_attacked_points_count_as_broken(mlp) -> None:
    model, x, y = mlp
    assert int((y == 0).sum()) > 0  # argmax of a NaN row is 0: these would have stayed robust
    result = robustness(_NanOffGrid(model), (x, y), ThreatModel(eps=0.1), "fgsm",
                        progress=False, sanity_samples=30)
    assert result.clean_accuracy > 0.9 and result.robust_accuracy == 0.0
    assert any("non-finite (NaN or infinite) logits at" in n for n in result.notes)
    check = {c.check: c for c in result.sanity}["finite logits"]
    assert not check.passed and MASKING_FLAG in result.flags


def test_nan_clean_logits_are_misclassified(mlp) -> None:
    model, x, y = mlp

    class NanOnZeros(nn.Module):  # NaN logits for every sample of class 0, honest otherwise
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            out = model(t)
            return torch.where((out.argmax(1) == 0)[:, None], torch.nan, out)

    honest = robustness(model, (x, y), ThreatModel(eps=0.1), "fgsm", progress=False,
                        sanity=False)
    nan = robustness(NanOnZeros(), (x, y), ThreatModel(eps=0.1), "fgsm", progress=False,
                     sanity=False)
    zeros = int((model(x).argmax(1) == 0).sum())
    assert zeros > 0 and nan.clean_accuracy < honest.clean_accuracy
    assert any(f"non-finite (NaN or infinite) logits for {zeros} clean" in n for n in nan.notes)


@pytest.mark.parametrize(
    ("how", "attacks", "message"),
    [("no_grad", "pgd", "does not let gradients reach its input"),
     ("detach", "square", "does not let gradients reach its input"),  # the sanity checks' PGD
     ("tuple", "pgd", "returned a tuple, not a tensor"),
     ("dict", "square", "returned a dict, not a tensor")],
)
def test_models_without_input_gradient_or_tensor_output_are_refused(
    mlp, how: str, attacks: str, message: str
) -> None:
    model, x, y = mlp

    class Cut(nn.Module):
        def forward(self, t: torch.Tensor) -> object:
            if how == "no_grad":
                with torch.no_grad():
                    return model(t)
            if how == "detach":
                return model(t.detach())
            return (model(t), 0) if how == "tuple" else {"logits": model(t)}

    with pytest.raises(InputValidationError, match=message):
        robustness(Cut(), (x[:20], y[:20]), ThreatModel(eps=0.1), attacks, progress=False,
                   sanity_samples=10)


def test_sanity_attacks_count_in_the_worst_case_and_flag_a_weak_ensemble(mlp) -> None:
    model, x, y = mlp
    stuck = PGD(threat=ThreatModel(eps=0.1), steps=1, step_size=1e-6, random_start=False)
    result = robustness(model, (x, y), ThreatModel(eps=0.1), [stuck], progress=False,
                        sanity_samples=40)
    own = result.attacks[0].robust_accuracy  # the stuck attack breaks (nearly) nothing
    check = {c.check: c for c in result.sanity}["sanity attacks"]
    missed = int(check.detail.split(" broke ")[1].split()[0])
    assert missed > 10 and not check.passed and MASKING_FLAG in result.flags
    assert result.robust_accuracy == pytest.approx(own - missed / result.samples)
    assert result.curve[-1].robust_accuracy == result.robust_accuracy


class _ReversedOffGrid(nn.Module):
    """Honest gradient on the digits' pixel grid (where FGSM takes its only step), the reversed
    gradient everywhere else (where PGD's random start puts every step); same logits."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)
        off = ((x * 16 - torch.round(x * 16)).abs() > 1e-3).flatten(1).any(dim=1)[:, None]
        flipped = z.detach() - (z - z.detach())  # value z, gradient -dz/dx
        return torch.where(off, flipped, z)


def test_single_step_beating_pgd_is_flagged(mlp) -> None:
    model, x, y = mlp
    honest = robustness(model, (x, y), ThreatModel(eps=0.1), "fgsm", progress=False,
                        sanity_samples=40)
    assert {c.check: c for c in honest.sanity}["single step"].passed
    result = robustness(_ReversedOffGrid(model), (x, y), ThreatModel(eps=0.1), "fgsm",
                        progress=False, sanity_samples=40)
    check = {c.check: c for c in result.sanity}["single step"]
    assert not check.passed and "must not beat the iterative attack" in check.detail
    assert MASKING_FLAG in result.flags
