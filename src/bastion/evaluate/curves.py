"""The attack cascade, over one or several eps, reusing work between them.

At each eps every attack runs only on the samples still robust (clean-correct and missed by every
earlier attack); over a curve the eps are visited in increasing order and a sample broken at a
smaller eps is not attacked again, since its adversarial example lies inside every larger ball
too (the balls are nested). So the curve is monotone by construction and costs little more than
its largest eps alone; the sanity checks test monotonicity independently.

A stage that refines earlier ones (:func:`~bastion.evaluate.ensemble.is_probe_stage`: a black
box after white-box attacks, an APGD-T on the targets an earlier APGD-T skipped) rarely finds a
sample the earlier stages missed on a model whose gradients are honest (Croce & Hein 2020), yet
on robust samples it spends its whole budget. So it first runs on a seeded random *probe* of the
survivors (``black_box_probe`` samples); only when it breaks one of them does it run on all the
others, and then it counts in full. Either way the report says what it did. A black box alone,
or first, always runs on every sample; ``black_box_probe=None`` turns probing off.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import torch
from torch import nn

from bastion.attacks import Attack
from bastion.core.modes import frozen_eval
from bastion.core.progress import task_progress
from bastion.core.threat import ThreatModel
from bastion.evaluate.ensemble import (
    AttackFactory,
    attack_label,
    dlr_note,
    is_black_box,
    is_probe_stage,
)
from bastion.evaluate.results import AdversarialExample

__all__ = ["AttackRun", "PointRun", "predict", "run_curve"]

_TOL = 1e-5


@dataclasses.dataclass(kw_only=True)
class AttackRun:
    """What one attack did at one eps (mutable while the cascade fills it in)."""

    attack: Attack
    label: str
    attacked: int = 0
    broken: int = 0
    alive_after: int = 0
    seconds: float = 0.0
    forward: int = 0
    backward: int = 0
    norms: list[torch.Tensor] = dataclasses.field(default_factory=list)
    note: str = ""
    black_box: bool = False


@dataclasses.dataclass(kw_only=True)
class PointRun:
    """One eps of the curve: which samples are still robust after it, and what it cost."""

    eps: float
    robust: torch.Tensor
    attacks: list[AttackRun]
    carried: int
    seconds: float
    forward: int
    backward: int
    examples: list[AdversarialExample]


class _AsImage(nn.Module):
    """Shows flat inputs ``(B, 1, 1, D)`` to attacks that need images, in the model's shape."""

    def __init__(self, model: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x.reshape(x.shape[0], *self.shape))
        return out


def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of ``x`` in batches, in eval mode, without a graph."""
    with frozen_eval(model), torch.no_grad():
        return torch.cat([model(b).float() for b in torch.split(x, batch_size)])


def _run_attack(
    attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, int, int]:
    if is_black_box(attack) and x.dim() != 4:
        flat = x.reshape(x.shape[0], 1, 1, -1)
        x_adv, stats = attack.run_with_stats(_AsImage(model, tuple(x.shape[1:])), flat, y)
        return x_adv.reshape(x.shape), stats.forward, stats.backward
    x_adv, stats = attack.run_with_stats(model, x, y)
    return x_adv, stats.forward, stats.backward


def run_curve(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_pred: torch.Tensor,
    factories: Sequence[AttackFactory],
    threat: ThreatModel,
    points: Sequence[float],
    *,
    num_classes: int,
    batch_size: int,
    examples_at: float,
    max_examples: int,
    progress: bool,
    black_box_probe: int | None = 64,
    seed: int = 0,
) -> list[PointRun]:
    """Run the cascade at every eps of ``points`` (sorted ascending), reusing broken samples.

    ``black_box_probe``: survivors a refining stage tries first (None: all of them at once);
    see the module docstring.
    """
    alive = clean_pred == y
    runs: list[PointRun] = []
    total = len(points) * len(factories)
    examples: list[AdversarialExample] = []  # from every eps up to examples_at (nested balls)
    with task_progress("evaluating robustness", total if progress else None) as advance:
        for eps in points:
            start = time.perf_counter()
            carried = int((clean_pred == y).sum()) - int(alive.sum())
            point_threat = threat.with_eps(eps)
            attack_runs: list[AttackRun] = []
            want = max_examples if eps <= examples_at else 0
            for factory in factories:
                attack = factory(point_threat)
                record = AttackRun(
                    attack=attack, label=attack_label(attack), black_box=is_black_box(attack)
                )
                attack_runs.append(record)
                note = dlr_note(attack, num_classes)
                if note is not None:
                    record.note = note
                elif eps > 0:
                    probe = black_box_probe if is_probe_stage(
                        attack, [r.attack for r in attack_runs[:-1]]) else None
                    _attack_alive(model, x, y, clean_pred, alive, point_threat, record,
                                  batch_size, examples, want, probe=probe, seed=seed)
                record.alive_after = int(alive.sum())
                if progress:
                    advance()
            runs.append(
                PointRun(
                    eps=eps,
                    robust=alive.clone(),
                    attacks=attack_runs,
                    carried=carried,
                    seconds=time.perf_counter() - start,
                    forward=sum(r.forward for r in attack_runs),
                    backward=sum(r.backward for r in attack_runs),
                    examples=list(examples),
                )
            )
    return runs


def _attack_alive(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_pred: torch.Tensor,
    alive: torch.Tensor,
    threat: ThreatModel,
    record: AttackRun,
    batch_size: int,
    examples: list[AdversarialExample],
    want: int,
    *,
    probe: int | None = None,
    seed: int = 0,
) -> None:
    """Run ``record.attack`` on the samples still alive; mark those it breaks, in place.

    With ``probe``, a seeded random subset of that many survivors goes first, and the rest only
    if the attack breaks one of the subset.
    """
    def attack(idx: torch.Tensor) -> None:
        for chunk in torch.split(idx, batch_size):
            xb, yb = x[chunk], y[chunk]
            x_adv, fwd, bwd = _run_attack(record.attack, model, xb, yb)
            x_adv = x_adv.to(x.device)
            with frozen_eval(model), torch.no_grad():
                pred = model(x_adv).argmax(1)
            # the evaluator checks the attack's output itself: inside the ball and the bounds
            norms = threat.norms(x_adv - xb)
            lo, hi = threat.bounds
            inside = (norms <= threat.eps * (1 + _TOL) + _TOL) & (
                (x_adv >= lo - _TOL) & (x_adv <= hi + _TOL)
            ).flatten(1).all(dim=1)
            broken = (pred != yb) & inside
            alive[chunk[broken]] = False
            record.attacked += chunk.numel()
            record.broken += int(broken.sum())
            record.forward += fwd + chunk.numel()  # the check above is one more forward each
            record.backward += bwd
            record.norms.append(norms[broken].detach().cpu())
            for i in broken.nonzero().squeeze(1).tolist():
                if len(examples) >= want:
                    break
                j = int(chunk[i])
                examples.append(
                    AdversarialExample(
                        x=xb[i].detach().cpu(),
                        x_adv=x_adv[i].detach().cpu(),
                        label=int(y[j]),
                        clean_prediction=int(clean_pred[j]),
                        adversarial_prediction=int(pred[i]),
                        attack=record.label,
                    )
                )

    idx = alive.nonzero().squeeze(1)
    start = time.perf_counter()
    if probe is not None and idx.numel() > probe:
        order = torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(seed))
        first, rest = idx[order[:probe].to(idx.device)], idx[order[probe:].to(idx.device)]
        attack(first.sort().values)
        if record.broken:
            attack(rest.sort().values)
            record.note = (f"probe: broke {record.broken} of {probe} random survivors first, "
                           "so it ran on all of them")
        else:
            record.note = (f"probe: broke none of {probe} random survivors, so it did not run "
                           f"on the other {rest.numel()} (it runs on all when the probe breaks "
                           "one)")
    else:
        attack(idx)
    record.seconds = time.perf_counter() - start
