"""Model ensembles: several members answering as one ``nn.Module``, and training them with ``fit``.

An :class:`Ensemble` maps inputs to logits like any bastion model, so ``bastion.evaluate`` and
every attack treat it as *one* model: an honest evaluation attacks the whole ensemble (adaptive),
not one member whose examples are then transferred. Three ways to combine the members' logits
z_1..z_M (weights w_m > 0, normalised to sum to 1):

* ``logits``: the weighted mean of the logits, ``z = Σ_m w_m z_m``.
* ``probs``: the log of the weighted mean of the softmax probabilities,
  ``z = log Σ_m w_m softmax(z_m)`` (computed as a log-sum-exp of log-softmaxes, so it stays
  finite). Its argmax is the average-probability vote and it is a valid logit vector
  (``softmax(z)`` gives back the mean probabilities).
* ``vote``: majority vote. The forward output is ``log((s + δ p̄) / (1 + δ))`` with s_c the
  (weighted) share of members whose argmax is c, p̄ the mean probabilities and δ ≤ 1e-3 smaller
  than half of every gap between distinct shares, so the argmax is the majority class and ties
  are broken by the mean probability. A vote is piecewise constant in x: its gradient is zero
  almost everywhere (shattered gradients, Athalye, Carlini & Wagner 2018,
  https://arxiv.org/abs/1802.00420). The backward pass therefore uses the gradient of the
  ``probs`` output (a straight-through surrogate, as in BPDA), and the module declares
  ``bastion_attack_hint = AttackHint.BPDA`` so an evaluation knows its gradients are approximated.

Ensembles of independently trained models are not robust by themselves: adversarial examples
transfer between members trained on the same data, and an attack on the ensemble as a whole
breaks it as easily as a single model (He et al. 2017, "Adversarial Example Defenses: Ensembles
of Weak Defenses are not Strong", https://arxiv.org/abs/1706.04701; Tramèr et al. 2018,
https://arxiv.org/abs/1705.07204).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.eot import HINT_ATTRIBUTE, AttackHint
from bastion.core.enums import parse_enum
from bastion.core.errors import ConfigurationError
from bastion.core.modes import frozen_eval
from bastion.core.results import Result, to_jsonable
from bastion.train.loop import fit
from bastion.train.results import TrainResult

__all__ = ["Ensemble", "EnsembleMode", "EnsembleResult", "ModelFactory", "train_ensemble"]

#: A callable that builds a fresh, untrained member.
ModelFactory = Callable[[], nn.Module]

_TIE_BREAK = 1e-3  # the largest δ of the vote's tie-break
_SHARE_TOLERANCE = 1e-6  # vote shares closer than this are ties (float rounding of the weights)


class EnsembleMode(enum.Enum):
    """How an :class:`Ensemble` combines its members' logits."""

    LOGITS = "logits"  # mean of the logits
    PROBS = "probs"  # log of the mean of the softmax probabilities
    VOTE = "vote"  # majority vote (straight-through probs gradient)

    @classmethod
    def parse(cls, value: EnsembleMode | str) -> EnsembleMode:
        """The mode named ``value``: ``logits``, ``probs`` or ``vote``."""
        return parse_enum(cls, value, "ensemble mode")


class _StraightThrough(torch.autograd.Function):
    """Forward: ``value`` unchanged (bit for bit); backward: the gradient goes to ``surrogate``."""

    @staticmethod
    def forward(ctx: Any, surrogate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class Ensemble(nn.Module):
    """Several models answering as one: inputs to combined logits (see the module docstring).

    The members are submodules, so ``ensemble.eval()``/``.train()``/``.to(device)`` apply to all
    of them, and ``state_dict`` holds every member's weights.

    Args:
        members: at least one ``nn.Module``, each mapping the same inputs to logits of the same
            width.
        mode: ``logits`` (mean logits, the default), ``probs`` (log of the mean softmax) or
            ``vote`` (majority vote with a straight-through ``probs`` gradient).
        weights: one positive, finite weight per member (normalised to sum to 1); None gives
            every member the same weight.

    Raises:
        ConfigurationError: no members, a member that is not an ``nn.Module``, an unknown mode,
            bad weights; at the first forward pass, members whose outputs differ in width.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> members = [nn.Linear(4, 3) for _ in range(3)]
        >>> x = torch.rand(5, 4)
        >>> mean = Ensemble(members)  # mode="logits"
        >>> torch.allclose(mean(x), sum(m(x) for m in members) / 3)
        True
        >>> vote = Ensemble(members, mode="vote")
        >>> vote(x).shape, vote.bastion_attack_hint
        (torch.Size([5, 3]), <AttackHint.BPDA: 'bpda'>)
    """

    weights: torch.Tensor

    def __init__(
        self,
        members: Sequence[nn.Module],
        mode: EnsembleMode | str = EnsembleMode.LOGITS,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(members, nn.Module) or not isinstance(members, Sequence):
            raise ConfigurationError(
                "members: expected a sequence of nn.Module (e.g. [model_a, model_b]), got "
                f"{type(members).__name__}")
        if len(members) == 0:
            raise ConfigurationError("members: an ensemble needs at least one model, got none")
        for i, member in enumerate(members):
            if not isinstance(member, nn.Module):
                raise ConfigurationError(
                    f"members[{i}]: expected a torch.nn.Module, got {type(member).__name__}")
        self.members = nn.ModuleList(members)
        self.mode = EnsembleMode.parse(mode)
        self.register_buffer("weights", _normalised_weights(weights, len(members)))
        hint = AttackHint.BPDA if self.mode is EnsembleMode.VOTE else None
        setattr(self, HINT_ATTRIBUTE, hint)

    def extra_repr(self) -> str:
        return f"mode={self.mode.value}, members={len(self.members)}"

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The members' logits stacked as ``(members, N, classes)`` (widths checked)."""
        outs = [member(x) for member in self.members]
        for i, out in enumerate(outs):
            if out.dim() != 2:
                raise ConfigurationError(
                    f"members[{i}] returned shape {tuple(out.shape)}: every member must map a "
                    "batch of N inputs to logits of shape (N, classes)")
        widths = [out.shape[1] for out in outs]
        if len(set(widths)) > 1:
            odd = next(i for i, w in enumerate(widths) if w != widths[0])
            raise ConfigurationError(
                f"ensemble members disagree on the number of classes: members[0] returns "
                f"{widths[0]} logits, members[{odd}] returns {widths[odd]}; combine only models "
                "of the same task (same output width)")
        return torch.stack(outs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Combined logits of shape ``(N, classes)``."""
        z = self.member_logits(x)
        w = self.weights.to(z.dtype)[:, None, None]
        if self.mode is EnsembleMode.LOGITS:
            return (w * z).sum(0)
        log_mean = torch.logsumexp(F.log_softmax(z, dim=2) + w.log(), dim=0)
        if self.mode is EnsembleMode.PROBS:
            return log_mean
        vote = _vote_logits(z.detach(), w.detach(), log_mean.detach())
        if not torch.is_grad_enabled() or not log_mean.requires_grad:
            return vote
        out: torch.Tensor = _StraightThrough.apply(log_mean, vote)  # type: ignore[no-untyped-call]
        return out


def _normalised_weights(weights: Sequence[float] | None, count: int) -> torch.Tensor:
    if weights is None:
        return torch.full((count,), 1.0 / count)
    values = list(weights) if isinstance(weights, Sequence) else None
    if values is None or len(values) != count:
        raise ConfigurationError(
            f"weights: expected one weight per member ({count}), got {weights!r}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                math.isfinite(v) and v > 0):
            raise ConfigurationError(
                f"weights[{i}]: expected a finite number > 0, got {v!r} (drop the member "
                "instead of giving it weight 0)")
    total = float(sum(values))
    return torch.tensor([float(v) / total for v in values])


def _vote_logits(z: torch.Tensor, w: torch.Tensor, log_mean: torch.Tensor) -> torch.Tensor:
    """``log((s + δ p̄) / (1 + δ))``: argmax = majority class, ties broken by mean probability."""
    classes = z.shape[2]
    votes = F.one_hot(z.argmax(dim=2), classes).to(z.dtype)  # (M, N, C)
    share = (w * votes).sum(0)
    ordered = share.sort(dim=1).values
    gaps = ordered.diff(dim=1)
    gaps = torch.where(gaps > _SHARE_TOLERANCE, gaps, torch.full_like(gaps, math.inf))
    delta = (gaps.amin(dim=1, keepdim=True) / 2).clamp(max=_TIE_BREAK)  # (N, 1)
    return torch.logaddexp(share.log(), delta.log() + log_mean) - torch.log1p(delta)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class EnsembleResult(Result):
    """What :func:`train_ensemble` returns; ``to_dict()`` leaves the module out.

    Attributes:
        mode: how the ensemble combines its members.
        seeds: the seed each member trained with (and was initialised with, for factories).
        members: each member's :class:`~bastion.train.results.TrainResult`.
        member_accuracy: each member's clean accuracy on ``evaluated_on`` data.
        accuracy: the ensemble's clean accuracy on the same data.
        evaluated_on: ``"validation"`` (``val_data`` was given) or ``"training"``.
        seconds: wall time of the whole run.
        ensemble: the trained :class:`Ensemble` (not in JSON).
    """

    mode: EnsembleMode
    seeds: tuple[int, ...]
    members: tuple[TrainResult, ...]
    member_accuracy: tuple[float, ...]
    accuracy: float
    evaluated_on: str
    seconds: float
    ensemble: Ensemble = dataclasses.field(repr=False, compare=False)

    @property
    def mean_member_accuracy(self) -> float:
        """The members' mean clean accuracy (to compare with ``accuracy``)."""
        return sum(self.member_accuracy) / len(self.member_accuracy)

    def to_dict(self) -> dict[str, Any]:
        """JSON values with ``schema_version`` and ``mean_member_accuracy``; no module."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for f in dataclasses.fields(self):
            if f.name != "ensemble":
                out[f.name] = to_jsonable(getattr(self, f.name))
        out["mean_member_accuracy"] = self.mean_member_accuracy
        return out


def train_ensemble(
    models: ModelFactory | Sequence[nn.Module | ModelFactory],
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    seeds: Sequence[int] | None = None,
    mode: EnsembleMode | str = EnsembleMode.LOGITS,
    weights: Sequence[float] | None = None,
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    **fit_overrides: Any,
) -> EnsembleResult:
    """Train each member with :func:`~bastion.train.fit` and combine them into an :class:`Ensemble`.

    Diversity comes from the seeds (initialisation and data order) and, when several factories
    or models are given, from the architectures.

    Args:
        models: one factory (called once per seed, under ``torch.manual_seed(seed)``, so each
            member starts from its own initialisation), or a sequence of models (trained in
            place) and/or factories, one per member.
        data: the training ``(x, y)`` pair, as for ``fit``.
        seeds: one distinct seed per member, passed to ``fit``. Default: ``(0, 1, 2)`` for a
            single factory, ``0 .. len(models) - 1`` for a sequence.
        mode: how the ensemble combines its members (see :class:`Ensemble`).
        weights: member weights (see :class:`Ensemble`).
        val_data: an ``(x, y)`` pair for ``fit``'s per-epoch metrics and for the accuracies the
            result reports; without it they are measured on the training data.
        out: a directory; member i writes its run (checkpoints, ``train.json``) to ``member-i``.
        progress: show ``fit``'s progress bars.
        **fit_overrides: :class:`~bastion.train.config.TrainConfig` fields for every member
            (``epochs``, ``lr``, ``method``, ``threat`` ...), except ``seed``.

    Returns:
        An :class:`EnsembleResult` holding the ensemble, each member's training result and the
        clean accuracies.

    Raises:
        ConfigurationError: no member, a factory that does not build an ``nn.Module``, seeds that
            are not distinct integers or do not match the members, ``seed`` in the overrides,
            bad fit options; members whose output widths differ.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> x, y = torch.rand(64, 4), torch.randint(0, 3, (64,))
        >>> result = train_ensemble(lambda: nn.Linear(4, 3), (x, y), seeds=(0, 1), epochs=1,
        ...                         progress=False)
        >>> len(result.ensemble.members), len(result.member_accuracy)
        (2, 2)
    """
    start = time.perf_counter()
    if "seed" in fit_overrides:
        raise ConfigurationError("seed: give one seed per member with seeds=(...), not seed=")
    if "config" in fit_overrides:
        raise ConfigurationError("config: pass TrainConfig fields as keyword overrides")
    parsed_mode = EnsembleMode.parse(mode)
    specs = _member_specs(models)
    seed_list = _seed_list(seeds, specs)
    if len(specs) == 1 and len(seed_list) > 1:
        specs = specs * len(seed_list)
    pairs = enumerate(zip(specs, seed_list, strict=True))
    members = [_build(spec, seed, i) for i, (spec, seed) in pairs]
    results: list[TrainResult] = []
    for i, (member, seed) in enumerate(zip(members, seed_list, strict=True)):
        member_out = None if out is None else Path(out) / f"member-{i}"
        results.append(fit(member, data, val_data=val_data, out=member_out, progress=progress,
                           seed=seed, **fit_overrides))
    ensemble = Ensemble(members, mode=parsed_mode, weights=weights)
    x_eval, y_eval = val_data if val_data is not None else data
    member_accuracy = tuple(_accuracy(m, x_eval, y_eval) for m in members)
    accuracy = _accuracy(ensemble, x_eval, y_eval)
    return EnsembleResult(
        mode=parsed_mode,
        seeds=tuple(seed_list),
        members=tuple(results),
        member_accuracy=member_accuracy,
        accuracy=accuracy,
        evaluated_on="validation" if val_data is not None else "training",
        seconds=time.perf_counter() - start,
        ensemble=ensemble,
    )


def _member_specs(models: object) -> list[nn.Module | ModelFactory]:
    if isinstance(models, nn.Module):
        return [models]
    if callable(models):
        return [models]
    if not isinstance(models, Sequence) or isinstance(models, (str, bytes)) or not models:
        raise ConfigurationError(
            "models: expected a factory (e.g. lambda: MyNet()) or a non-empty sequence of "
            f"models/factories, got {models!r}")
    for i, item in enumerate(models):
        if not (isinstance(item, nn.Module) or callable(item)):
            raise ConfigurationError(
                f"models[{i}]: expected an nn.Module or a factory, got {type(item).__name__}")
        if isinstance(item, nn.Module) and any(item is other for other in models[:i]):
            raise ConfigurationError(
                f"models[{i}]: the same module appears twice; give each member its own instance "
                "(or one factory and several seeds)")
    return list(models)


def _seed_list(seeds: Sequence[int] | None, specs: list[nn.Module | ModelFactory]) -> list[int]:
    single_factory = len(specs) == 1 and not isinstance(specs[0], nn.Module)
    if seeds is None:
        return [0, 1, 2] if single_factory else list(range(len(specs)))
    values = list(seeds) if isinstance(seeds, Sequence) and not isinstance(seeds, str) else None
    if values is None or not values or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in values):
        raise ConfigurationError(f"seeds: expected a non-empty sequence of integers >= 0, got "
                                 f"{seeds!r}")
    if len(set(values)) != len(values):
        raise ConfigurationError(f"seeds: expected distinct seeds (one per member), got {values}")
    if not single_factory and len(values) != len(specs):
        raise ConfigurationError(
            f"seeds: expected one seed per member ({len(specs)}), got {len(values)}")
    return values


def _build(spec: nn.Module | ModelFactory, seed: int, index: int) -> nn.Module:
    if isinstance(spec, nn.Module):
        return spec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec()
    if not isinstance(model, nn.Module):
        raise ConfigurationError(
            f"models[{index}]: the factory returned {type(model).__name__}, expected an "
            "nn.Module")
    return model


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), x.device)
    if y.dim() == 2:  # soft labels: the most likely class counts as the label
        y = y.argmax(1)
    correct = 0
    with frozen_eval(model), torch.no_grad():
        for xb, yb in zip(torch.split(x, batch), torch.split(y, batch), strict=True):
            correct += int((model(xb.to(device)).argmax(1).cpu() == yb.cpu()).sum())
    return correct / max(1, x.shape[0])
