"""The iterative harden loop: evaluate → strengthen → retrain → re-evaluate, until a target.

Adversarial training is a search over recipes as much as a training run: a cheap recipe
(FGSM with random start) may already reach the robustness a user needs, or it may overfit
catastrophically; a stronger one (PGD-AT with more steps, then TRADES) costs several times
more. :func:`harden` climbs that ladder one rung per round, each round starting from the best
model so far, evaluating every round honestly with :func:`bastion.evaluate.robustness` (the
same attacks and threat model each time), and keeping every round's model, settings and
results. It stops as soon as the target robust accuracy is met, or when the budget (rounds or
seconds) is spent.

The ladder (:func:`strengthen`), one change per round:

1. no adversarial training → FGSM-RS at the threat model's eps (Wong et al. 2020);
2. a training eps below the threat model's → 1.5× larger, up to the threat model's;
3. FGSM-RS that overfitted catastrophically, or that did not reach the target → PGD-AT, 10 steps
   (Madry et al. 2018);
4. PGD-AT → twice the steps, up to 40;
5. PGD-AT with 40 steps → TRADES, beta = 6 (Zhang et al. 2019);
6. TRADES → twice the epochs.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from torch import nn

from bastion.core.atomic import atomic_write_bytes, atomic_write_text
from bastion.core.errors import ConfigurationError
from bastion.core.results import Result
from bastion.core.threat import ThreatModel
from bastion.evaluate.data import as_tensors
from bastion.train.config import TrainConfig
from bastion.train.methods import TrainMethod

__all__ = ["HardenResult", "HardenRound", "harden", "strengthen"]

_logger = logging.getLogger(__name__)

_MAX_PGD_STEPS = 40


@dataclasses.dataclass(frozen=True, kw_only=True)
class HardenRound(Result):
    """One round: what was trained (``None`` for round 0, the baseline) and how it scored.

    Attributes:
        round: 0 for the baseline, then 1, 2, ...
        change: what this round strengthened, and why.
        config: the training configuration (``TrainConfig.to_dict()``), None for the baseline.
        clean_accuracy: on the evaluation samples.
        robust_accuracy: worst case over the evaluation's attack ensemble.
        gradient_masking_suspected: a sanity check of the evaluation failed.
        train_seconds: training time of this round; ``eval_seconds`` likewise.
        stopped_reason: why training stopped early (e.g. catastrophic overfitting), if it did.
        model_path: the round's weights (safetensors), when the run had an output directory.
        evaluation: the full evaluation (``RobustnessResult.to_dict()``).
    """

    round: int
    change: str
    config: dict[str, Any] | None
    clean_accuracy: float
    robust_accuracy: float
    gradient_masking_suspected: bool
    train_seconds: float
    eval_seconds: float
    stopped_reason: str | None = None
    model_path: str | None = None
    evaluation: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HardenResult(Result):
    """Every round of a harden run, the best one, and why the loop stopped.

    Attributes:
        threat: the threat model every round was evaluated under.
        target_robust_accuracy: the goal.
        met: whether a round reached it (with no masking flag).
        best_round: the round with the highest robust accuracy among those whose evaluation
            was not flagged for gradient masking (among all when every one was).
        rounds: all rounds, the baseline first.
        stopped: why the loop ended.
        seconds: wall time of the whole run.
    """

    threat: ThreatModel
    target_robust_accuracy: float
    met: bool
    best_round: int
    rounds: tuple[HardenRound, ...]
    stopped: str
    seconds: float

    @property
    def best(self) -> HardenRound:
        return self.rounds[self.best_round]


def strengthen(config: TrainConfig, threat: ThreatModel, overfitted: bool) -> tuple[
    TrainConfig, str
]:
    """The next rung of the ladder after ``config`` (see the module docstring), and why.

    Example:
        >>> from bastion import ThreatModel
        >>> threat = ThreatModel(norm="linf", eps=0.3)
        >>> nxt, why = strengthen(TrainConfig(method="fgsm-rs", threat=threat), threat, False)
        >>> nxt.method.value, nxt.pgd_steps
        ('pgd', 10)
    """
    method = config.method
    current = config.threat
    if method is TrainMethod.NONE or current is None:
        return dataclasses.replace(config, method=TrainMethod.FGSM_RS, threat=threat), (
            f"adversarial training: FGSM-RS at {threat.describe()}"
        )
    if current.eps < threat.eps and not overfitted:
        eps = min(threat.eps, current.eps * 1.5)
        return dataclasses.replace(config, threat=threat.with_eps(eps)), (
            f"training eps {current.eps:g} -> {eps:g} (up to the threat model's {threat.eps:g})"
        )
    if method is TrainMethod.FGSM_RS:
        why = ("FGSM-RS overfitted catastrophically" if overfitted
               else "FGSM-RS did not reach the target")
        return dataclasses.replace(
            config, method=TrainMethod.PGD, threat=threat, pgd_steps=10, pgd_step_size=None
        ), f"{why}: PGD-AT with 10 steps"
    if method is TrainMethod.PGD and config.pgd_steps < _MAX_PGD_STEPS:
        steps = min(_MAX_PGD_STEPS, config.pgd_steps * 2)
        return dataclasses.replace(config, threat=threat, pgd_steps=steps, pgd_step_size=None), (
            f"PGD-AT steps {config.pgd_steps} -> {steps}"
        )
    if method is TrainMethod.PGD:
        return dataclasses.replace(config, method=TrainMethod.TRADES, threat=threat), (
            f"PGD-AT with {config.pgd_steps} steps did not reach the target: TRADES "
            f"(beta {config.trades_beta:g})"
        )
    return dataclasses.replace(config, epochs=config.epochs * 2), (
        f"{method.value} epochs {config.epochs} -> {config.epochs * 2}"
    )


def harden(
    model: nn.Module,
    train_data: Any,
    test_data: Any,
    *,
    threat: ThreatModel,
    target_robust_accuracy: float,
    rounds: int = 4,
    budget_seconds: float | None = None,
    start: TrainConfig | None = None,
    epochs: int = 5,
    attacks: str = "default",
    eval_samples: int = 500,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
) -> tuple[nn.Module, HardenResult]:
    """Harden ``model`` round by round until its robust accuracy reaches the target.

    Round 0 evaluates ``model`` as given (the baseline). Each later round copies the best model
    so far, trains it with the next configuration of the ladder (:func:`strengthen`; the first
    round uses ``start``), and evaluates it on the same ``eval_samples`` test samples with the
    same ``attacks`` and ``threat``. A round whose evaluation is flagged for gradient masking
    never counts as meeting the target.

    Args:
        model: the starting model (left unchanged).
        train_data: training data: an ``(x, y)`` pair, a Dataset or a DataLoader.
        test_data: evaluation data, same forms.
        threat: the threat model to be robust under (also the largest training eps).
        target_robust_accuracy: stop once a round reaches it, in [0, 1].
        rounds: at most this many training rounds.
        budget_seconds: no new round starts once this much time has passed (a round in
            progress finishes).
        start: the first round's configuration (default: FGSM-RS at ``threat`` for ``epochs``
            epochs, with a third of them warming eps up).
        epochs: epochs per round when ``start`` is not given.
        attacks: the evaluation's attacks (see :func:`bastion.evaluate.robustness`).
        eval_samples: test samples evaluated each round.
        seed: seeds training and evaluation.
        out: directory for every round's model, metrics and evaluation, ``harden.json``, the
            best model as ``model.safetensors`` (written atomically, round by round).
        progress: progress bars on a terminal.

    Returns:
        The best model (a copy) and the :class:`HardenResult`.

    Raises:
        ConfigurationError: a target outside [0, 1], rounds < 1, a non-positive budget.

    Example:
        >>> import torch
        >>> from bastion import ThreatModel
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(64, 1, 2, 2), torch.randint(0, 3, (64,))
        >>> best, result = harden(net, (x, y), (x, y), threat=ThreatModel(eps=0.1),
        ...     target_robust_accuracy=1.0, rounds=1, epochs=1, attacks="pgd",
        ...     eval_samples=32, progress=False)
        >>> [r.round for r in result.rounds], result.met
        ([0, 1], False)
    """
    from bastion.evaluate import robustness
    from bastion.train.loop import fit

    _check_arguments(model, threat, target_robust_accuracy, rounds, budget_seconds, eval_samples)
    x_test, y_test = as_tensors(test_data, limit=eval_samples)
    begin = time.perf_counter()
    directory = Path(out) if out is not None else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)

    def evaluate(net: nn.Module) -> tuple[Any, float]:
        t0 = time.perf_counter()
        result = robustness(net, (x_test, y_test), threat, attacks, seed=seed,
                            progress=progress, name="hardened")
        return result, time.perf_counter() - t0

    base_eval, base_seconds = evaluate(model)
    history = [_round(0, "baseline: the model as given", None, base_eval, 0.0, base_seconds,
                      None, _save(directory, 0, model))]
    best_model, best_index = copy.deepcopy(model), 0
    config = start or TrainConfig(
        method=TrainMethod.FGSM_RS, threat=threat, epochs=epochs, eps_warmup=epochs // 3,
        seed=seed,
    )
    change = f"start: {config.method.value} at " + (
        config.threat.describe() if config.threat is not None else "no threat model"
    )
    stopped = f"all {rounds} rounds spent"
    met = _meets(history[0], target_robust_accuracy)
    if met:
        stopped = "the baseline already meets the target"
    for index in range(1, rounds + 1):
        if met:
            break
        if budget_seconds is not None and time.perf_counter() - begin >= budget_seconds:
            stopped = f"time budget of {budget_seconds:g} s spent after round {index - 1}"
            break
        candidate = copy.deepcopy(best_model)
        train_dir = directory / f"round-{index:02d}" / "train" if directory else None
        t0 = time.perf_counter()
        trained = fit(candidate, train_data, config=config, out=train_dir, progress=progress)
        train_seconds = time.perf_counter() - t0
        evaluation, eval_seconds = evaluate(candidate)
        entry = _round(index, change, config, evaluation, train_seconds, eval_seconds,
                       trained.stopped_reason, _save(directory, index, candidate))
        history.append(entry)
        _logger.info("harden round %d (%s): robust accuracy %.3f", index, change,
                     entry.robust_accuracy)
        if _rank(entry) > _rank(history[best_index]):
            best_model, best_index = candidate, index
        met = _meets(entry, target_robust_accuracy)
        if met:
            stopped = f"target met in round {index}"
        overfitted = bool(trained.stopped_reason and "catastrophic" in trained.stopped_reason)
        config, change = strengthen(config, threat, overfitted)
        _write_summary(directory, history, threat, target_robust_accuracy, best_index, met,
                       stopped, begin)
    result = HardenResult(
        threat=threat, target_robust_accuracy=target_robust_accuracy, met=met,
        best_round=best_index, rounds=tuple(history), stopped=stopped,
        seconds=time.perf_counter() - begin,
    )
    if directory is not None:
        atomic_write_text(directory / "harden.json", result.to_json())
        _write_weights(directory / "model.safetensors", best_model)
    return best_model, result


def _check_arguments(
    model: nn.Module, threat: ThreatModel, target: float, rounds: int,
    budget_seconds: float | None, eval_samples: int,
) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(threat, ThreatModel):
        raise ConfigurationError(f"threat must be a bastion.ThreatModel, got {threat!r}")
    if not (isinstance(target, (int, float)) and 0.0 <= target <= 1.0):
        raise ConfigurationError(
            f"target robust accuracy must be a share in [0, 1] (0.9 for 90%), got {target!r}"
        )
    for name, value in (("rounds", rounds), ("eval_samples", eval_samples)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    if budget_seconds is not None and not budget_seconds > 0:
        raise ConfigurationError(f"budget_seconds must be positive, got {budget_seconds!r}")


def _rank(entry: HardenRound) -> tuple[bool, float]:
    """Unflagged evaluations first, then robust accuracy: a masked gain is no gain."""
    return (not entry.gradient_masking_suspected, entry.robust_accuracy)


def _meets(entry: HardenRound, target: float) -> bool:
    return entry.robust_accuracy >= target and not entry.gradient_masking_suspected


def _round(
    index: int, change: str, config: TrainConfig | None, evaluation: Any, train_seconds: float,
    eval_seconds: float, stopped_reason: str | None, model_path: Path | None,
) -> HardenRound:
    return HardenRound(
        round=index, change=change, config=config.to_dict() if config is not None else None,
        clean_accuracy=evaluation.clean_accuracy, robust_accuracy=evaluation.robust_accuracy,
        gradient_masking_suspected=evaluation.gradient_masking_suspected,
        train_seconds=train_seconds, eval_seconds=eval_seconds, stopped_reason=stopped_reason,
        model_path=str(model_path) if model_path is not None else None,
        evaluation=evaluation.to_dict(),
    )


def _write_weights(path: Path, model: nn.Module) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"source": "bastion harden"}))


def _save(directory: Path | None, index: int, model: nn.Module) -> Path | None:
    if directory is None:
        return None
    path = directory / f"round-{index:02d}" / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_weights(path, model)
    return path


def _write_summary(
    directory: Path | None, history: list[HardenRound], threat: ThreatModel, target: float,
    best: int, met: bool, stopped: str, begin: float,
) -> None:
    """harden.json after every round, so an interrupted run still shows what it did."""
    if directory is None:
        return
    partial = HardenResult(
        threat=threat, target_robust_accuracy=target, met=met, best_round=best,
        rounds=tuple(history), stopped=stopped if met else "in progress",
        seconds=time.perf_counter() - begin,
    )
    atomic_write_text(directory / "harden.json", partial.to_json())

