"""The attack cascade, over one or several eps, reusing work between them.

At each eps every attack runs only on the samples still robust (clean-correct and missed by every
earlier attack); over a curve the eps are visited in increasing order and a sample broken at a
smaller eps is not attacked again, since its adversarial example lies inside every larger ball
too (the balls are nested). So the curve is monotone by construction and costs little more than
its largest eps alone; the sanity checks test monotonicity independently.

A stage that refines earlier ones (:func:`~bastion.evaluate.ensemble.is_probe_stage`: a black
box after white-box attacks, an APGD-T on the targets an earlier APGD-T skipped) rarely finds a
sample the earlier stages missed on a model whose gradients are honest (Croce & Hein 2020), yet
on robust samples it spends its whole budget. So it *probes*, in rounds of ``black_box_probe``
survivors, ordered by how close the earlier attacks brought each one to the decision boundary
(the smallest margin ``z_y - max_{j != y} z_j`` seen at their outputs): the samples a refinement
breaks are the ones the white-box attacks nearly broke (measured on a PGD-trained MNIST CNN:
Square's 4 extra breaks among 313 survivors ranked 1, 2, 12 and 25 by that margin, APGD-T 4-9's
one ranked 2), so a random probe mostly spends its budget where nothing is to be found. But
those margins can be a decoy (logits ``10 * onehot(argmax f) + 0.01 * g`` for a smooth random
``g`` rank samples at random while hiding ``f``'s gradient), so the first round is at least 64
samples (or every survivor), half the closest and half drawn at random (seeded) from the rest;
the black-box check judges the breaks among the random half per attacked sample:

* a random sample broken from the half of the survivors farthest from the boundary: breaks are
  not where the white-box attacks came closest (gradient masking looks like this), so the stage
  runs on every other survivor;
* only samples near the boundary broken: the next round takes the next closest survivors, and
  so on until a round breaks none;
* nothing broken: the stage stops there.

The report says which happened. A black box alone, or first, always runs on every sample;
``black_box_probe=None`` turns probing off.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from bastion.attacks import Attack
from bastion.attacks._base import logits_tensor
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
_FIRST_ROUND = 64


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
    near_breaks: int = 0
    nonfinite: int = 0
    near_attacked: int = 0


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
        return torch.cat([logits_tensor(model(b)).float() for b in torch.split(x, batch_size)])


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
    black_box_probe: int | None = 16,
    seed: int = 0,
) -> list[PointRun]:
    """Run the cascade at every eps of ``points`` (sorted ascending), reusing broken samples.

    ``black_box_probe``: survivors per probe round of a refining stage (None: all of them at
    once); see the module docstring.
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
            # how close this eps's attacks brought each sample to the boundary (probe order)
            closest = torch.full((x.shape[0],), float("inf"), device=x.device)
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
                                  batch_size, examples, want, closest, probe=probe, seed=seed)
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


def _margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` per row: negative exactly when the prediction is wrong."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return true - others


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
    closest: torch.Tensor,
    *,
    probe: int | None = None,
    seed: int = 0,
) -> None:
    """Run ``record.attack`` on the samples still alive; mark those it breaks, in place.

    ``closest`` holds, per sample, the smallest margin seen at any attack's output at this eps;
    it is updated here and orders the probe rounds (see the module docstring).
    """
    def attack(idx: torch.Tensor) -> torch.Tensor:
        """Attack the samples ``idx``; return those it broke."""
        hits: list[torch.Tensor] = []
        for chunk in torch.split(idx, batch_size):
            xb, yb = x[chunk], y[chunk]
            x_adv, fwd, bwd = _run_attack(record.attack, model, xb, yb)
            x_adv = x_adv.to(x.device)
            with frozen_eval(model), torch.no_grad():
                logits = model(x_adv).float()
            pred = logits.argmax(1)
            # the evaluator checks the attack's output itself: inside the ball and the bounds
            norms = threat.norms(x_adv - xb)
            lo, hi = threat.bounds
            inside = (norms <= threat.eps * (1 + _TOL) + _TOL) & (
                (x_adv >= lo - _TOL) & (x_adv <= hi + _TOL)
            ).flatten(1).all(dim=1)
            # argmax of a NaN row is class 0: a point whose logits are not all finite is a
            # failure of the model there, never a correct prediction
            nonfinite = ~torch.isfinite(logits).all(dim=1)
            broken = ((pred != yb) | nonfinite) & inside
            record.nonfinite += int((nonfinite & inside).sum())
            margins = torch.where(inside, _margins(logits, yb), torch.inf).nan_to_num(torch.inf)
            closest[chunk] = torch.minimum(closest[chunk], margins)
            alive[chunk[broken]] = False
            hits.append(chunk[broken])
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
        return torch.cat(hits) if hits else idx[:0]

    idx = alive.nonzero().squeeze(1)
    start = time.perf_counter()
    if probe is not None and idx.numel() > first_round(probe, idx.numel()):
        record.note, record.near_breaks, record.near_attacked = _probe(
            attack, idx, closest, probe, seed)
    else:
        attack(idx)
    record.seconds = time.perf_counter() - start


def _probe(
    attack: Callable[[torch.Tensor], torch.Tensor],
    idx: torch.Tensor,
    closest: torch.Tensor,
    size: int,
    seed: int,
) -> tuple[str, int, int]:
    """Attack the survivors ``idx`` in probe rounds of ``size``; return the report's note, how
    many of the first round's closest samples it broke and how many it attacked (the black-box
    check leaves those out: the earlier attacks nearly broke them; see
    ``sanity.black_box_check``)."""
    gen = torch.Generator().manual_seed(seed)
    shuffled = idx[torch.randperm(idx.numel(), generator=gen).to(idx.device)]
    # closest to the boundary first; ties (e.g. never attacked) in seeded random order
    order = shuffled[closest[shuffled].argsort(stable=True)]
    first_size = first_round(size, idx.numel())
    n_random = first_size // 2
    head, pool = order[: first_size - n_random], order[first_size - n_random:]
    pick = torch.zeros(pool.numel(), dtype=torch.bool, device=pool.device)
    pick[torch.randperm(pool.numel(), generator=gen)[:n_random].to(pool.device)] = True
    randoms, queue = pool[pick], pool[~pick]
    broken = attack(torch.cat([head, randoms]).sort().values)
    near = int(torch.isin(broken, head).sum())
    first = f"{head.numel()} survivors closest to the boundary and {randoms.numel()} random others"
    # a random sample from the half of the survivors farthest from the boundary, broken: the
    # breaks are not where the earlier attacks came closest (gradient masking looks like this)
    position = head.numel() + pick.nonzero().squeeze(1)
    far = randoms[position >= order.numel() // 2]
    if bool(torch.isin(broken, far).any()):
        attack(queue)
        return (f"probe: broke {broken.numel()} of the {first}, one of them far from the "
                "boundary, so it ran on every survivor"), near, head.numel()
    if broken.numel() == 0:
        return (f"probe: broke none of the {first}, so it did not run on the other "
                f"{queue.numel()} (it goes on while its rounds break some)"), 0, head.numel()
    rounds = 1
    while queue.numel() and broken.numel():
        batch, queue = queue[:size], queue[size:]
        broken = attack(batch.sort().values)
        rounds += 1
    tail = (f"until a round broke none; did not run on the other {queue.numel()}" if queue.numel()
            else "and reached every survivor")
    return (f"probe: broke some of the {first}, then went on in order of closeness to the "
            f"boundary, {rounds - 1} more rounds of {size}, {tail}"), near, head.numel()


def first_round(size: int, survivors: int) -> int:
    """Samples in a probe's first round: at least ``_FIRST_ROUND`` (or every survivor), half of
    them the closest to the boundary and half drawn at random, so that a black-box attack is
    judged on enough samples the white-box attacks did not choose (their margins can be a
    decoy: a piecewise-constant decision plus a small smooth term ranks samples at random)."""
    return min(survivors, max(size, _FIRST_ROUND))
