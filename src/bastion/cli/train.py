"""``bastion train``, ``bastion distill`` and ``bastion harden``: make a model robust, write it
with its metrics and a report."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from bastion.cli._common import ALLOW_OPTION, POLICY_OPTION, build_policy, console
from bastion.core.errors import ConfigurationError

MODEL_HELP = (
    "'demo' (the DemoCNN architecture, freshly initialised) or 'package.module:factory'; "
    "--weights FILE starts from those weights (read only through bastion.load)."
)
DATA_HELP = "'mnist5k', 'digits' or an .npz file (x_train/y_train, x_test/y_test)."

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)\s*$")


def parse_budget(text: str) -> tuple[int | None, float | None]:
    """``"4"`` → 4 rounds; ``"30m"``, ``"600s"``, ``"1.5h"`` → seconds; ``"4,30m"`` both.

    Example:
        >>> parse_budget("3,20m")
        (3, 1200.0)
    """
    rounds: int | None = None
    seconds: float | None = None
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = _DURATION.match(part)
        if part.isdigit() and int(part) > 0 and rounds is None:
            rounds = int(part)
        elif match and float(match.group(1)) > 0 and seconds is None:
            scale = {"s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
            seconds = float(match.group(1)) * scale
        else:
            raise ConfigurationError(
                f"--budget {text!r}: expected a number of rounds (4), a duration (30m, 600s, "
                "1h) or both (4,30m)"
            )
    if rounds is None and seconds is None:
        raise ConfigurationError("--budget needs rounds (4), a duration (30m) or both (4,30m)")
    return rounds, seconds


def build_model(spec: str, weights: Path | None, seed: int, allow: Any, policy: Any) -> Any:
    """A model to train: the demo architecture or a factory's, optionally with weights."""
    import torch

    from bastion.evaluate.models import ModelSource, resolve_model

    torch.manual_seed(seed)  # the initial weights are part of the run's seed
    if spec.strip() == "demo":
        from bastion.zoo import DemoCNN

        model: Any = DemoCNN()
        if weights is not None:
            from bastion.evaluate.models import _load_weights

            _load_weights(model, ModelSource(spec="demo", weights=weights,
                                             policy=build_policy(allow, policy)))
        return model
    if spec.strip().endswith(".pt2"):
        raise ConfigurationError(
            f"--model {spec}: a torch.export program cannot be trained; give its architecture "
            "as 'package.module:factory' and its weights with --weights"
        )
    checked = build_policy(allow, policy)
    return resolve_model(ModelSource(spec=spec, weights=weights, policy=checked))


def _load(data: str) -> Any:
    from bastion.data import load_dataset

    return load_dataset(Path(data) if data.endswith(".npz") else data)


def _threat(norm: str, eps: float | None, bounds: tuple[float, float]) -> Any:
    from bastion.core.threat import Norm, ThreatModel

    if eps is None:
        return None
    return ThreatModel(norm=Norm.parse(norm), eps=eps, bounds=bounds)


def train(
    model: str = typer.Option("demo", "--model", metavar="MODEL", help=MODEL_HELP),
    data: str = typer.Option("mnist5k", "--data", metavar="DATA", help=DATA_HELP),
    method: str = typer.Option("pgd", "--method", help="none, pgd, fgsm-rs or trades."),
    eps: float | None = typer.Option(
        None, "--eps", help="Training radius (required by pgd, fgsm-rs and trades)."
    ),
    norm: str = typer.Option("linf", "--norm", help="linf or l2."),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(128, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr", help="(Maximum) learning rate."),
    optimizer: str = typer.Option("adam", "--optimizer", help="adam or sgd."),
    schedule: str = typer.Option("constant", "--schedule",
                                 help="constant, cyclic, step or cosine."),
    pgd_steps: int = typer.Option(10, "--pgd-steps", min=1, help="PGD-AT / TRADES steps."),
    mix: float = typer.Option(1.0, "--mix", help="Share of each batch made adversarial."),
    eps_warmup: int = typer.Option(0, "--eps-warmup", min=0, help="Epochs of eps ramp-up."),
    noise_sigma: float = typer.Option(0.0, "--noise-sigma", help="Gaussian-noise augmentation."),
    guard_fallback: str = typer.Option(
        "stop", "--overfit-fallback",
        help="On catastrophic overfitting (restoring the best epoch) or a single-step run that "
        "learns no robustness: stop, pgd (switch to PGD-AT) or continue.",
    ),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 2),
    weights: Path | None = typer.Option(None, "--weights", help="Initial weights."),
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoints, metrics, report)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out."),
    allow: list[str] | None = ALLOW_OPTION,
    policy: Path | None = POLICY_OPTION,
) -> None:
    """Train a model, plainly or adversarially (PGD-AT, FGSM-RS, TRADES), with checkpoints,
    resume, a catastrophic-overfitting guard and a report. Runs under ``torchrun`` unchanged."""
    from bastion.core.enums import parse_enum
    from bastion.report.training import write_training_report
    from bastion.train import (
        GuardFallback,
        LRSchedule,
        OptimizerKind,
        TrainConfig,
        TrainMethod,
        fit,
    )

    splits = _load(data)
    config = TrainConfig(
        method=TrainMethod.parse(method), threat=_threat(norm, eps, splits.bounds),
        epochs=epochs, batch_size=batch_size, lr=lr,
        optimizer=parse_enum(OptimizerKind, optimizer, "optimizer"),
        schedule=parse_enum(LRSchedule, schedule, "lr schedule"),
        pgd_steps=pgd_steps, mix=mix, eps_warmup=eps_warmup, noise_sigma=noise_sigma,
        guard_fallback=parse_enum(GuardFallback, guard_fallback, "overfit fallback"), seed=seed,
    )
    net = build_model(model, weights, seed, allow, policy)
    result = fit(net, (splits.x_train, splits.y_train), config=config,
                 val_data=(splits.x_test, splits.y_test), out=out, resume=resume)
    if not _is_main_process():
        return
    _json, html = write_training_report(result, out)
    last = result.history[-1] if result.history else None
    say = console.print
    if last is not None:
        robust = ("-" if last.robust_accuracy is None else f"{last.robust_accuracy:.1%}")
        say(f"trained {config.method.value}: clean {last.clean_accuracy:.1%}, robust {robust} "
            f"after {len(result.history)} epochs in {result.seconds:.0f} s", markup=False,
            highlight=False)
    for event in result.guard_events:  # collapses and stalls, with the fallback applied
        say(f"overfitting guard: {escape(event)}", highlight=False)
    if result.stopped_reason and not any(
            e.startswith(result.stopped_reason) for e in result.guard_events):
        say(f"stopped: {escape(result.stopped_reason)}", highlight=False)
    say(f"wrote {escape(str(out / 'model.safetensors'))}, metrics.jsonl and "
        f"{escape(str(html))}", highlight=False)
    say(f"evaluate it: bastion evaluate --model {escape(_architecture(model))} --weights "
        f"{escape(str(out / 'model.safetensors'))} --data {escape(data)}", highlight=False)


def distill(
    teacher: str = typer.Option("demo", "--teacher", metavar="MODEL", help=MODEL_HELP),
    student: str = typer.Option("demo", "--student", metavar="MODEL", help=MODEL_HELP),
    data: str = typer.Option("mnist5k", "--data", metavar="DATA", help=DATA_HELP),
    temperature: float = typer.Option(100.0, "--temperature", help="Distillation temperature T."),
    epochs: int = typer.Option(10, "--epochs", min=1),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 2),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    allow: list[str] | None = ALLOW_OPTION,
    policy: Path | None = POLICY_OPTION,
) -> None:
    """Defensive distillation (Papernot et al. 2016) — a documented NEGATIVE example: its
    robustness is saturated softmax, and ``bastion evaluate`` flags it and breaks it."""
    from bastion.train.distill import distill as run_distill

    splits = _load(data)
    t_model = build_model(teacher, None, seed, allow, policy)
    s_model = build_model(student, None, seed + 1, allow, policy)
    result = run_distill(t_model, s_model, (splits.x_train, splits.y_train),
                         temperature=temperature, epochs=epochs, seed=seed,
                         val_data=(splits.x_test, splits.y_test), out=out)
    console.print(
        f"distilled at T={temperature:g}: teacher {result.teacher_accuracy:.1%}, student "
        f"{result.student_accuracy:.1%} clean accuracy; wrote {escape(str(out))}/teacher, "
        "student and distillation.json", highlight=False)
    console.print(
        "This is a negative example: its robustness is saturated softmax. Evaluate it: "
        f"bastion evaluate --model {escape(_architecture(student))} --weights "
        f"{escape(str(out / 'student' / 'model.safetensors'))} --data {escape(data)}",
        highlight=False,
    )


def harden(
    model: str = typer.Option("demo", "--model", metavar="MODEL", help=MODEL_HELP),
    data: str = typer.Option("mnist5k", "--data", metavar="DATA", help=DATA_HELP),
    target: float = typer.Option(
        ..., "--target-robust-accuracy", help="Stop when reached: a share (0.8) or percent (80)."
    ),
    eps: float = typer.Option(0.3, "--eps", help="Threat model radius."),
    norm: str = typer.Option("linf", "--norm", help="linf or l2."),
    budget: str = typer.Option("4", "--budget",
                               help="Rounds (4), a duration (30m, 600s, 1h) or both (4,30m)."),
    epochs: int = typer.Option(5, "--epochs", min=1, help="Epochs per round."),
    attacks: str = typer.Option("default", "--attacks", help="Evaluation attacks each round."),
    eval_samples: int = typer.Option(500, "--eval-samples", min=1,
                                     help="Test samples evaluated each round."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 2),
    weights: Path | None = typer.Option(None, "--weights", help="The baseline's weights."),
    out: Path = typer.Option(..., "--out", help="Output directory (every round, report)."),
    allow: list[str] | None = ALLOW_OPTION,
    policy: Path | None = POLICY_OPTION,
) -> None:
    """Rounds of evaluate → strengthen → retrain → re-evaluate until the target robust accuracy
    is met or the budget is spent; every round's model, settings and results are kept.

    With ``--model demo`` and no --weights the baseline is the bundled, trained demo CNN."""
    from bastion.report.training import write_harden_report
    from bastion.train.harden import harden as run_harden

    share = target / 100 if target > 1 else target
    rounds, seconds = parse_budget(budget)
    splits = _load(data)
    threat = _threat(norm, eps, splits.bounds)
    if model.strip() == "demo" and weights is None:
        from bastion.zoo import demo_model

        baseline: Any = demo_model()
    else:
        baseline = build_model(model, weights, seed, allow, policy)
    _best, result = run_harden(
        baseline, (splits.x_train, splits.y_train), (splits.x_test, splits.y_test),
        threat=threat, target_robust_accuracy=share, rounds=rounds or 100,
        budget_seconds=seconds, epochs=epochs, attacks=attacks, eval_samples=eval_samples,
        seed=seed, out=out,
    )
    _json, html = write_harden_report(result, out)
    for r in result.rounds:
        console.print(f"round {r.round}: clean {r.clean_accuracy:.1%} robust "
                      f"{r.robust_accuracy:.1%}  ({r.change})", markup=False, highlight=False)
    verdict = "met" if result.met else "NOT met"
    console.print(f"target {share:.1%} {verdict}: {escape(result.stopped)}; best round "
                  f"{result.best_round} -> {escape(str(out / 'model.safetensors'))}; report "
                  f"{escape(str(html))}", highlight=False)
    if not result.met:
        raise typer.Exit(1)


def _architecture(spec: str) -> str:
    """The factory spec ``bastion evaluate --weights`` needs for a trained MODEL."""
    return "bastion.zoo.demo_cnn:DemoCNN" if spec.strip() == "demo" else spec


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
