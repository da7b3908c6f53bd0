"""``robustness``: robust accuracy under a threat model, worst case over an attack ensemble.

Reported with every number: the threat model, each attack with its budget and the work it did,
the curve over eps, per-class accuracy and the sanity checks against gradient masking
(DESIGN.md, "Honest evaluation"). The attacks adapt to the model (EOT for randomized models,
notes for BPDA; :mod:`bastion.evaluate.adaptive`) unless ``adaptive=False``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bastion.attacks import Attack
from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.core.threat import ThreatModel
from bastion.evaluate.adaptive import plan_adaptive
from bastion.evaluate.curves import PointRun, predict, run_curve
from bastion.evaluate.data import as_tensors
from bastion.evaluate.ensemble import (
    AttackFactory,
    AttackName,
    at_threat,
    build_named,
    default_ensemble,
)
from bastion.evaluate.results import (
    MASKING_FLAG,
    AttackResult,
    ClassResult,
    CurvePoint,
    RobustnessResult,
    SanityCheck,
)
from bastion.evaluate.sanity import black_box_check, run_sanity_checks

__all__ = ["AttacksSpec", "robustness"]

AttacksSpec = str | Sequence[Attack | AttackFactory | AttackName | str]


def robustness(
    model: nn.Module,
    data: Any,
    threat: ThreatModel,
    attacks: AttacksSpec = "default",
    *,
    eps: Sequence[float] | None = None,
    batch_size: int = 256,
    limit: int | None = None,
    seed: int = 0,
    sanity: bool = True,
    sanity_samples: int = 100,
    progress: bool = True,
    baseline: nn.Module | None = None,
    name: str = "model",
    baseline_name: str = "baseline",
    examples: int = 8,
    adaptive: bool = True,
    eot_samples: int = 10,
    probe: int | None = 16,
) -> RobustnessResult:
    """Evaluate ``model`` against an attack ensemble: worst case per sample.

    Args:
        model: an ``nn.Module`` from inputs in ``threat.bounds`` to logits.
        data: an ``(x, y)`` pair of tensors, a ``Dataset`` or a ``DataLoader``.
        threat: the threat model; ``robust_accuracy`` is reported at ``threat.eps``.
        attacks: ``"default"`` (APGD-CE, APGD-T, Square; see :mod:`bastion.evaluate.ensemble`),
            comma-separated names, or a sequence of attacks (rebuilt at each eps of the curve,
            an explicit step size scaled with eps), factories ``ThreatModel -> Attack`` or names.
        eps: the robustness curve; each eps is evaluated, ascending, attacking only samples
            that survived the smaller ones. ``threat.eps`` is always one of its points.
        batch_size: samples per attack call.
        limit: evaluate only the first ``limit`` samples.
        seed: seeds the named attacks and the sanity checks' subsample.
        sanity: run the gradient-masking checks (they cost a few PGD runs on a subsample).
        sanity_samples: size of that subsample.
        progress: show a progress bar on an interactive terminal.
        baseline: a second model evaluated on the same samples and threat, side by side.
        name: how reports call ``model``; ``baseline_name`` likewise.
        examples: broken samples kept for the report's gallery.
        adaptive: adapt the attacks to the model (:mod:`bastion.evaluate.adaptive`): for a
            randomized model (declared with ``AttackHint.EOT``, or 5 clean passes that
            disagree) every gradient attack runs through EOT and every prediction is the
            argmax of logits averaged over ``eot_samples`` passes; BPDA modules are noted.
            False attacks and judges the model as it is, one pass at a time.
        eot_samples: k, the passes each EOT gradient and each judged prediction averages.
        probe: survivors per round of a refining stage of the cascade (Square after white-box
            attacks, APGD-T on the less likely targets): it attacks those closest to the
            decision boundary first and goes on only while it breaks some
            (:mod:`bastion.evaluate.curves`); None, or ``attacks="full"``, runs every stage on
            every survivor.

    Returns:
        A :class:`RobustnessResult`.

    Raises:
        ConfigurationError: bad arguments (unknown attack, negative eps, ...).
        InputValidationError: inputs outside the bounds, labels out of range, bad shapes.

    Example:
        >>> import torch
        >>> from bastion import ThreatModel
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(16, 1, 2, 2), torch.randint(0, 3, (16,))
        >>> result = robustness(model, (x, y), ThreatModel(eps=0.5), "fgsm,pgd", sanity=False)
        >>> result.robust_accuracy <= result.clean_accuracy
        True
    """
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(threat, ThreatModel):
        raise ConfigurationError(
            f"threat must be a bastion.ThreatModel, got {type(threat).__name__}"
        )
    for field, value in (("batch_size", batch_size), ("sanity_samples", sanity_samples),
                         ("eot_samples", eot_samples), ("probe", 1 if probe is None else probe)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigurationError(f"{field} must be a positive integer, got {value!r}")
    start = time.perf_counter()
    x, y = as_tensors(data, limit=limit)
    threat.check_inputs(x)
    device = _device_of(model, x)
    x, y = x.to(device), y.to(device)
    logits = _clean_logits(model, x, batch_size)
    num_classes = logits.shape[1]
    if bool((y < 0).any() or (y >= num_classes).any()):
        raise InputValidationError(
            f"labels must lie in [0, {num_classes - 1}] for a model with {num_classes} outputs; "
            f"got labels in [{int(y.min())}, {int(y.max())}]"
        )
    factories, notes = _factories(attacks, num_classes, seed)
    plan = plan_adaptive(model, x[:sanity_samples], adaptive=adaptive, eot_samples=eot_samples)
    notes += plan.notes
    factories = [plan.wrap_factory(f) for f in factories]
    judged = plan.judge(model)  # a randomized model is judged over repeated passes
    if judged is not model:
        logits = _clean_logits(judged, x, batch_size)
    points = _points(threat, eps)
    clean_finite = torch.isfinite(logits).all(1)
    # argmax of a NaN row is class 0: a sample the model gives non-finite logits is misclassified
    clean_pred = torch.where(clean_finite, logits.argmax(1), torch.full_like(y, -1))
    if not bool(clean_finite.all()):
        notes.append(f"the model returned non-finite (NaN or infinite) logits for "
                     f"{int((~clean_finite).sum())} clean samples; each counts as misclassified")
    runs = run_curve(
        judged, x, y, clean_pred, factories, threat, points,
        num_classes=num_classes, batch_size=batch_size, examples_at=threat.eps,
        max_examples=examples, progress=progress, seed=seed,
        black_box_probe=None if _is_full(attacks) else probe,
    )
    main = next(r for r in runs if r.eps == threat.eps)
    if main.carried:
        notes.append(
            f"{main.carried} samples broken at a smaller eps of the curve count as broken at "
            f"eps={threat.eps:g} and were not attacked again"
        )
    nonfinite = sum(a.nonfinite for r in runs for a in r.attacks)
    if nonfinite:
        notes.append(_nonfinite_text(nonfinite))
    checks: list[SanityCheck] = []
    if sanity:
        checks = run_sanity_checks(
            judged, x, y, logits, threat, curve_eps=points, num_classes=num_classes,
            uses_eot=plan.uses_eot or any(r.attack.name == "eot" for r in main.attacks),
            seed=seed,
            batch_size=batch_size, samples=sanity_samples, adapt=plan.wrap, single_pass=model,
            worst=main.robust,
        )
        for r in runs:  # nested balls: a sample broken at threat.eps is broken at larger eps
            if r.eps > threat.eps:
                r.robust &= main.robust
        checks.append(_black_box(judged, x, y, main, threat, seed, sanity_samples))
        checks.append(SanityCheck(
            check="finite logits", passed=not nonfinite,
            detail=_nonfinite_text(nonfinite) if nonfinite
            else "the logits were finite at every attacked point"))
    correct = clean_pred == y
    n, n_correct, n_robust = x.shape[0], int(correct.sum()), int(main.robust.sum())
    other = None
    if baseline is not None:
        other = robustness(
            baseline, (x, y), threat, attacks, eps=eps, batch_size=batch_size, seed=seed,
            sanity=sanity, sanity_samples=sanity_samples, progress=progress,
            name=baseline_name, examples=examples, adaptive=adaptive, eot_samples=eot_samples,
            probe=probe,
        )
    return RobustnessResult(
        model=name,
        threat=threat,
        samples=n,
        num_classes=num_classes,
        clean_accuracy=n_correct / n,
        robust_accuracy=n_robust / n,
        success_rate=1 - n_robust / n_correct if n_correct else 0.0,
        attacks=tuple(_attack_results(main, n, n_correct)),
        curve=tuple(
            CurvePoint(eps=r.eps, robust_accuracy=int(r.robust.sum()) / n, forward=r.forward,
                       backward=r.backward, seconds=r.seconds)
            for r in runs
        ),
        per_class=tuple(_per_class(y, correct, main.robust, num_classes)),
        sanity=tuple(checks),
        flags=(MASKING_FLAG,) if any(not c.passed for c in checks) else (),
        seconds=time.perf_counter() - start,
        forward=sum(r.forward for r in runs),
        backward=sum(r.backward for r in runs),
        notes=tuple(notes),
        baseline=other,
        examples=tuple(main.examples),
    )


def _nonfinite_text(count: int) -> str:
    return (f"the model returned non-finite (NaN or infinite) logits at {count} attacked points; "
            "each counts as misclassified (an argmax over NaN would say class 0)")


def _device_of(model: nn.Module, x: torch.Tensor) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return x.device


def _clean_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    try:
        logits = predict(model, x, batch_size)
    except (RuntimeError, AssertionError) as exc:  # shape mismatch inside the model
        raise InputValidationError(
            f"the model could not run on inputs of shape {tuple(x.shape[1:])} per sample: {exc}"
        ) from exc
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise InputValidationError(
            f"the model must map N inputs to logits of shape (N, classes); it returned "
            f"{tuple(logits.shape)}"
        )
    return logits


def _factories(spec: AttacksSpec, num_classes: int, seed: int) -> tuple[
    list[AttackFactory], list[str]
]:
    if isinstance(spec, str):
        names: list[AttackName | str] = [part for part in spec.split(",") if part.strip()]
        factories, notes = build_named(names, num_classes)
        return [_seeded(f, seed) for f in factories], notes
    if not isinstance(spec, Sequence) or len(spec) == 0:
        raise ConfigurationError(
            "attacks must be 'default', comma-separated names or a non-empty sequence of "
            "attacks / factories"
        )
    factories, notes = [], []
    for item in spec:
        if isinstance(item, Attack):
            factories.append(_rebuilder(item))
        elif isinstance(item, (str, AttackName)):
            more, extra = build_named([item], num_classes)
            factories += [_seeded(f, seed) for f in more]
            notes += extra
        elif callable(item):
            factories.append(item)
        else:
            raise ConfigurationError(
                f"unsupported attack {item!r}: give an Attack, a factory or a name"
            )
    if not factories:
        factories, notes = default_ensemble(num_classes)
    return factories, notes


def _is_full(spec: AttacksSpec) -> bool:
    names = spec.split(",") if isinstance(spec, str) else [s for s in spec if isinstance(s, str)]
    return any(n.strip().lower() == "full" for n in names) or any(
        s is AttackName.FULL for s in (spec if not isinstance(spec, str) else ()))


def _rebuilder(attack: Attack) -> AttackFactory:
    return lambda t: at_threat(attack, t)


def _seeded(factory: AttackFactory, seed: int) -> AttackFactory:
    import dataclasses

    return lambda t: dataclasses.replace(factory(t), seed=seed)


def _points(threat: ThreatModel, eps: Sequence[float] | None) -> list[float]:
    values = {threat.eps}
    for e in eps or ():
        values.add(threat.with_eps(e).eps)  # validated by ThreatModel: finite, >= 0
    return sorted(values)


def _attack_results(main: PointRun, n: int, n_correct: int) -> list[AttackResult]:
    out = []
    for r in main.attacks:
        norms = torch.cat(r.norms) if r.norms else torch.zeros(0)
        out.append(AttackResult(
            name=r.label,
            params=r.attack.params(),
            robust_accuracy=r.alive_after / n,
            success_rate=r.broken / n_correct if n_correct else 0.0,
            broken=r.broken,
            attacked=r.attacked,
            seconds=r.seconds,
            forward=r.forward,
            backward=r.backward,
            mean_norm=float(norms.mean()) if norms.numel() else None,
            median_norm=float(norms.median()) if norms.numel() else None,
            note=r.note,
        ))
    return out


def _per_class(
    y: torch.Tensor, correct: torch.Tensor, robust: torch.Tensor, num_classes: int
) -> list[ClassResult]:
    out = []
    for c in range(num_classes):
        mask = y == c
        count = int(mask.sum())
        if count:
            out.append(ClassResult(
                label=c, samples=count, clean_accuracy=int((correct & mask).sum()) / count,
                robust_accuracy=int((robust & mask).sum()) / count,
            ))
    return out


def _black_box(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, main: PointRun, threat: ThreatModel,
    seed: int, samples: int,
) -> SanityCheck:
    seen_white = False
    after: int | None = None
    near = attacked = 0
    for r in main.attacks:
        if not r.black_box and r.attacked:
            seen_white = True
        elif r.black_box and seen_white:
            after = (after or 0) + r.broken - r.near_breaks
            near += r.near_breaks
            attacked += r.attacked - r.near_attacked
    if after is not None or not seen_white:
        return black_box_check(total=x.shape[0], black_box_after_white_box=after,
                               near_boundary=near, attacked=attacked if after is not None else None)
    survivors = main.robust.nonzero().squeeze(1)[:samples]
    return black_box_check(
        total=x.shape[0], black_box_after_white_box=None, model=model, x_survivors=x[survivors],
        y_survivors=y[survivors], threat=threat, seed=seed,
    )

