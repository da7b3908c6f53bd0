"""Sanity checks against gradient masking, run with every robustness evaluation.

Each check is a fact an honest evaluation must satisfy (Carlini et al. 2019, "On Evaluating
Adversarial Robustness"; Athalye et al. 2018; AutoAttack's automatic flags, Croce & Hein 2020):

* ``logits``: the model returns logits, not probabilities (outputs in [0, 1] summing to 1
  saturate the cross-entropy gradient);
* ``deterministic``: repeated clean passes agree (a randomized model must be attacked with EOT,
  which :func:`~bastion.evaluate.robustness` does unless ``adaptive=False``; the PGD runs of the
  checks below are then EOT too, see :mod:`bastion.evaluate.adaptive`);
* ``gradients``: input gradients at the clean points are finite and non-zero;
* ``chance at large eps``: PGD at half the width of the bounds (Linf; the matching L2 radius)
  brings accuracy down to chance;
* ``monotone``: fresh PGD (no reuse) succeeds at least as often at larger eps;
* ``more steps``: doubling PGD's steps changes robust accuracy little;
* ``black box``: the black-box attack breaks no more than 0.2 points of the samples every
  white-box attack missed, leaving out those of its probe's first round that the white-box
  attacks had brought closest to the boundary (see :func:`black_box_check`).

A failure means the robust accuracy may be inflated; the result is flagged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks import FGSM, PGD, Attack, Square
from bastion.attacks._base import input_gradient
from bastion.core.modes import frozen_eval
from bastion.core.threat import MAX_EPS, Norm, ThreatModel
from bastion.evaluate.curves import _run_attack
from bastion.evaluate.results import SanityCheck

__all__ = ["black_box_check", "run_sanity_checks"]

_CHANCE_MARGIN = 0.1
_STEPS_TOLERANCE = 0.05
_ZERO_GRAD_SHARE = 0.01
_BLACK_BOX_POINTS = 0.002
_FALSE_ALARM = 1e-3  # chance that an honest model fails the per-attacked-sample test


def _correct_under(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, batch_size: int,
    adapt: Callable[[Attack], Attack] | None = None,
) -> torch.Tensor:
    """Per sample, whether ``model`` still classifies ``attack``'s output correctly."""
    if adapt is not None:
        attack = adapt(attack)
    correct = []
    for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size), strict=True):
        x_adv = attack(model, xb, yb)
        with frozen_eval(model), torch.no_grad():
            logits = model(x_adv).float()
        # a point with non-finite logits is misclassified (the argmax of NaN is class 0)
        correct.append((logits.argmax(1) == yb) & torch.isfinite(logits).all(dim=1))
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool, device=x.device)


def _pgd_correct(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int, seed: int,
    batch_size: int,
    adapt: Callable[[Attack], Attack] | None = None,
) -> torch.Tensor:
    return _correct_under(model, x, y, PGD(threat=threat, steps=steps, seed=seed), batch_size,
                          adapt)


def _pgd_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int, seed: int,
    batch_size: int,
    adapt: Callable[[Attack], Attack] | None = None,
) -> float:
    correct = _pgd_correct(model, x, y, threat, steps, seed, batch_size, adapt)
    return float(correct.float().sum()) / max(1, x.shape[0])


def _logits_check(logits: torch.Tensor) -> SanityCheck:
    probs = bool(
        ((logits >= 0) & (logits <= 1)).all()
        and ((logits.sum(dim=1) - 1).abs() <= 1e-4).all()
    )
    detail = (
        "outputs lie in [0, 1] and sum to 1: the model returns probabilities; attacks need "
        "logits (remove the final softmax)"
        if probs
        else "outputs are logits (not probabilities)"
    )
    return SanityCheck(check="logits", passed=not probs, detail=detail)


def _deterministic_check(model: nn.Module, x: torch.Tensor, uses_eot: bool) -> SanityCheck:
    with frozen_eval(model), torch.no_grad():
        outs = [model(x).float() for _ in range(5)]
    spread = max(float((o - outs[0]).abs().max()) for o in outs)
    if spread <= 1e-4:
        return SanityCheck(check="deterministic", passed=True,
                           detail=f"5 clean passes agree (max logit difference {spread:.1e})")
    return SanityCheck(
        check="deterministic",
        passed=uses_eot,
        detail=f"5 clean passes disagree (max logit difference {spread:.3g}): the model is "
        + ("randomized and the ensemble uses EOT" if uses_eot
           else "randomized; attack it with EOT (expectation over transformation)"),
    )


def _gradient_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> SanityCheck:
    with frozen_eval(model), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(xg).float(), y, reduction="sum")
        grad = input_gradient(loss, xg)
    flat = grad.flatten(1)
    zero = (flat == 0).all(dim=1)
    bad = ~torch.isfinite(flat).all(dim=1)
    share = float((zero | bad).float().mean())
    detail = (
        f"{share:.1%} of {x.shape[0]} clean points have a zero ({int(zero.sum())}) or non-finite "
        f"({int(bad.sum())}) input gradient"
    )
    if share > _ZERO_GRAD_SHARE:
        detail += (": gradient attacks cannot start there (shattered or saturated gradients); "
                   "use BPDA for non-differentiable steps, logits for saturated softmax")
    return SanityCheck(check="gradients", passed=share <= _ZERO_GRAD_SHARE, detail=detail)


def _large_eps(threat: ThreatModel, x: torch.Tensor) -> float:
    half = (threat.bounds[1] - threat.bounds[0]) / 2
    big = half if threat.norm is Norm.LINF else half * math.sqrt(x[0].numel())
    return min(big, MAX_EPS)  # the cap binds only for absurdly wide bounds


def run_sanity_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_logits: torch.Tensor,
    threat: ThreatModel,
    *,
    curve_eps: Sequence[float],
    num_classes: int,
    uses_eot: bool,
    seed: int,
    batch_size: int,
    samples: int,
    adapt: Callable[[Attack], Attack] | None = None,
    single_pass: nn.Module | None = None,
    worst: torch.Tensor | None = None,
) -> list[SanityCheck]:
    """Every check but ``black box`` (see :func:`black_box_check`) on a seeded subsample.

    ``adapt`` turns the checks' PGD into the evaluation's adaptive attack (EOT for a randomized
    model, see :mod:`bastion.evaluate.adaptive`), and ``model`` is then the judged model;
    ``single_pass`` is the model on one pass, for the ``deterministic`` check (default ``model``).
    ``worst``, the evaluation's per-sample robust mask at ``threat.eps``, is updated in place:
    a sample the checks' own attacks at that eps break is not robust (checks ``single step``
    and ``sanity attacks``).
    """
    checks = [_logits_check(clean_logits)]
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(x.shape[0], generator=gen)[:samples].to(x.device)
    xs, ys = x[pick], y[pick]
    checks.append(_deterministic_check(single_pass or model, xs, uses_eot))
    checks.append(_gradient_check(model, xs, ys))
    correct = clean_logits[pick].argmax(1) == ys
    xc, yc = xs[correct], ys[correct]
    if xc.shape[0] == 0:
        detail = "skipped: no clean-correct sample in the subsample"
        return checks + [SanityCheck(check=c, passed=True, detail=detail)
                         for c in ("chance at large eps", "monotone", "more steps")]
    n = xc.shape[0]
    big = _large_eps(threat, xc)
    acc = _pgd_accuracy(model, xc, yc, threat.with_eps(big), 20, seed, batch_size, adapt)
    chance = 1 / num_classes
    checks.append(SanityCheck(
        check="chance at large eps",
        passed=acc <= chance + _CHANCE_MARGIN,
        detail=f"PGD-20 at {threat.norm.value} eps={big:.3g} leaves {acc:.1%} of {n} samples "
        f"(chance {chance:.1%}; must be at most {chance + _CHANCE_MARGIN:.1%})",
    ))
    grid = sorted({e for e in curve_eps if e > 0} | ({threat.eps} if threat.eps > 0 else set()))
    if len(grid) < 2 and grid:
        grid = [grid[0] / 2, grid[0]]
    corrects = [_pgd_correct(model, xc, yc, threat.with_eps(e), 20, seed, batch_size, adapt)
                for e in grid]
    accs = [float(c.float().mean()) for c in corrects]
    slack = max(1 / n, 0.02)
    rises = [(a, b, e) for a, b, e in zip(accs, accs[1:], grid[1:], strict=False) if b > a + slack]
    text = ", ".join(f"{e:g}: {a:.1%}" for e, a in zip(grid, accs, strict=True))
    checks.append(SanityCheck(
        check="monotone",
        passed=not rises,
        detail=(f"fresh PGD-20 accuracy by eps ({text}) "
                + ("never rises" if not rises else f"rises at eps={rises[0][2]:g}")),
    ))
    if threat.eps > 0:
        at_eps = corrects[grid.index(threat.eps)]
        base = accs[grid.index(threat.eps)]
        double_correct = _pgd_correct(model, xc, yc, threat, 40, seed, batch_size, adapt)
        double = float(double_correct.float().mean())
        checks.append(SanityCheck(
            check="more steps",
            passed=base - double <= _STEPS_TOLERANCE,
            detail=f"PGD-20 leaves {base:.1%}, PGD-40 {double:.1%} at eps={threat.eps:g} "
            f"(a drop above {_STEPS_TOLERANCE:.0%} means the attacks had not converged)",
        ))
        fgsm_correct = _correct_under(model, xc, yc, FGSM(threat), batch_size, adapt)
        fgsm = float(fgsm_correct.float().mean())
        checks.append(SanityCheck(
            check="single step",
            passed=fgsm >= base - slack,
            detail=f"FGSM leaves {fgsm:.1%}, PGD-20 {base:.1%} at eps={threat.eps:g} (a single "
            "step must not beat the iterative attack: if it does, the gradient misleads it)",
        ))
        if worst is not None:
            broke = pick[correct][~(at_eps & double_correct & fgsm_correct)]
            missed = int(worst[broke].sum())
            worst[broke] = False  # the worst case counts every attack that ran at threat.eps
            checks.append(SanityCheck(
                check="sanity attacks", passed=missed <= 1,
                detail=f"the checks' own PGD-20, PGD-40 and FGSM at eps={threat.eps:g} broke "
                f"{missed} samples the evaluation's attacks left robust (counted as broken; "
                "one sample allowed)" + ("" if missed <= 1 else
                                          ": the evaluation's attacks are weaker than plain PGD "
                                          "here, so its robust accuracy is not trusted"),
            ))
    else:
        checks.append(SanityCheck(check="more steps", passed=True, detail="skipped: eps is 0"))
    return checks


def black_box_check(
    *,
    total: int,
    black_box_after_white_box: int | None,
    near_boundary: int = 0,
    attacked: int | None = None,
    model: nn.Module | None = None,
    x_survivors: torch.Tensor | None = None,
    y_survivors: torch.Tensor | None = None,
    threat: ThreatModel | None = None,
    seed: int = 0,
) -> SanityCheck:
    """The black-box attack must not break samples every white-box attack missed.

    Two tests; either failing fails the check. AutoAttack's: at most 0.2 points of all
    ``total`` samples, with one allowance (a single sample never fails the check: below 500
    samples 0.2 points is less than one sample, so one lucky query would flag every small
    evaluation of an honest model). And, since a probe (:mod:`bastion.evaluate.curves`) attacks
    only some survivors, per *attacked* sample: ``count`` breaks among ``attacked`` survivors
    are improbable (binomial tail below ``_FALSE_ALARM``) if each broke with probability
    ``_BLACK_BOX_POINTS``; a masked model whose breaks are diluted over many unattacked samples
    fails here.

    ``black_box_after_white_box`` is that count from the cascade when the ensemble ran a black-box
    attack after white-box ones (``attacked``: the samples it counts over); otherwise Square
    (1,000 queries) is run on ``x_survivors``.

    ``near_boundary`` breaks are not counted (nor their samples in ``attacked``): those of a
    probe's first round among the survivors the white-box attacks left closest to the decision
    boundary. A sample they left at a margin of a few hundredths and Square then tipped over is a
    white-box attack short of convergence, which the cascade's worst case already accounts for
    (on a PGD-trained MNIST CNN, Square's extra breaks ranked 1, 2, 12 and 25 of 313 survivors by
    that margin). Breaks among the probe's random half, in later rounds, or in a round sent to
    every survivor, count in full.
    """
    name = "black box"
    if black_box_after_white_box is None:
        if model is None or x_survivors is None or y_survivors is None or threat is None:
            return SanityCheck(check=name, passed=True, detail="skipped: no white-box attack ran")
        if x_survivors.shape[0] == 0 or threat.eps == 0:
            return SanityCheck(check=name, passed=True,
                               detail="no sample survived the white-box attacks")
        attack = Square(threat=threat, queries=1000, seed=seed)
        x_adv, _, _ = _run_attack(attack, model, x_survivors, y_survivors)
        with frozen_eval(model), torch.no_grad():
            count = int((model(x_adv).argmax(1) != y_survivors).sum())
        attacked = x_survivors.shape[0]
        how = f"Square (1,000 queries) on {attacked} white-box survivors broke {count}"
    else:
        count = black_box_after_white_box
        how = f"the black-box attack broke {count} samples every white-box attack missed"
        if attacked is not None:
            how += f" among the {attacked} it counts"
        if near_boundary:
            how += (f" (and {near_boundary} of those they left closest to the boundary, not "
                    "counted)")
    share = count / max(1, total)
    tail = _binomial_tail(count, attacked, _BLACK_BOX_POINTS) if attacked else 1.0
    passed = (share <= _BLACK_BOX_POINTS or count <= 1) and tail >= _FALSE_ALARM
    detail = (f"{how} ({share:.2%} of {total}; at most {_BLACK_BOX_POINTS:.1%} or one sample "
              "allowed")
    if attacked:
        detail += (f"; P(>= {count} breaks of {attacked} at a {_BLACK_BOX_POINTS:.1%} rate) = "
                   f"{tail:.2g}, must be at least {_FALSE_ALARM:g}")
    detail += ")"
    if not passed:
        detail += ": the white-box evaluation is not trusted"
    return SanityCheck(check=name, passed=passed, detail=detail)


def _binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    below = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(min(k, n + 1)))
    return max(0.0, 1.0 - below)
