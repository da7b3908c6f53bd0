"""What every attack shares: the invariants live here, each attack writes one ``_run``.

:class:`Attack` owns the contract of DESIGN.md: inputs and labels are checked, the model is put
in eval mode with frozen parameters (so gradients flow to the input only) and restored after,
and the result is projected onto the threat model and the bounds whatever ``_run`` returned.
``_run`` receives an :class:`AttackContext` through which it calls the model, so forward and
backward passes are counted in one place and autocast is applied in one place.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, final

import torch
from torch import nn

from bastion.core.checks import check_batch
from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.core.modes import frozen_eval
from bastion.core.threat import ThreatModel

__all__ = ["Attack", "AttackContext", "AttackStats"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class AttackStats:
    """Work done by one attack call, counted per sample (a batch of 10 = 10 passes)."""

    forward: int = 0
    backward: int = 0


#: Why a gradient attack cannot run on a model whose forward cuts the graph to its input.
NO_INPUT_GRADIENT = (
    "the model does not let gradients reach its input: its forward detaches the input or runs "
    "under torch.no_grad() (autograd: 'element 0 of tensors does not require grad'); gradient "
    "attacks cannot run on it. Wrap a non-differentiable step in bastion.attacks.BPDA (or "
    "bastion.attacks.bpda(...)) so attacks get an approximate gradient, or evaluate it with a "
    "black-box attack such as 'square'"
)


def _no_graph_to_input(exc: RuntimeError) -> bool:
    """Whether autograd refused because the loss has no graph back to the input."""
    text = str(exc)
    return "does not require grad" in text or "appears to not have been used" in text


def input_gradient(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``d loss / d x``; a clear error (not autograd's) when the model cut the graph to ``x``.

    Raises:
        InputValidationError: the model detaches its input or runs under ``no_grad``.
    """
    try:
        (grad,) = torch.autograd.grad(loss, x)
    except RuntimeError as exc:
        if not _no_graph_to_input(exc):
            raise
        raise InputValidationError(NO_INPUT_GRADIENT) from exc
    return grad


def logits_tensor(out: object) -> torch.Tensor:
    """``out`` if it is a tensor; a clear error for the tuples and dicts some models return."""
    if not isinstance(out, torch.Tensor):
        raise InputValidationError(
            f"the model returned a {type(out).__name__}, not a tensor: a classifier must return "
            "a (B, C) tensor of logits (wrap it so that forward returns only the logits)"
        )
    return out


class AttackContext:
    """The model as an attack sees it: counted, autocast, gradients w.r.t. the input only."""

    def __init__(
        self,
        model: nn.Module,
        *,
        threat: ThreatModel,
        generator: torch.Generator,
        autocast: torch.dtype | None,
        stats: AttackStats,
        num_classes: int,
    ) -> None:
        self.model = model
        self.threat = threat
        self.generator = generator
        self.autocast = autocast
        self.stats = stats
        self.num_classes = num_classes

    def settings(self) -> dict[str, Any]:
        """Everything but the model, for a context that wraps this one's model calls."""
        return {"threat": self.threat, "generator": self.generator, "autocast": self.autocast,
                "stats": self.stats, "num_classes": self.num_classes}

    @contextlib.contextmanager
    def _precision(self, x: torch.Tensor) -> Iterator[None]:
        if self.autocast is None:
            yield
            return
        with torch.autocast(device_type=x.device.type, dtype=self.autocast):
            yield

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` without building a graph (float32 whatever the autocast dtype)."""
        self.stats.forward += x.shape[0]
        with torch.no_grad(), self._precision(x):
            logits = logits_tensor(self.model(x))
        return logits.float()

    def logits_and_grad(
        self, x: torch.Tensor, loss_fn: LossFn, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of ``x`` and the gradient of ``loss_fn(logits, y).sum()`` with respect to ``x``.

        The loss is summed so that every sample's gradient is its own (samples are independent
        in eval mode). Only the input requires grad: no weight gradients are computed.
        """
        self.stats.forward += x.shape[0]
        self.stats.backward += x.shape[0]
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            with self._precision(x):
                logits = logits_tensor(self.model(x))
            logits = logits.float()
            loss = loss_fn(logits, y).sum()
            grad = input_gradient(loss, x)
        return logits.detach(), grad.detach()

    def is_adversarial(self, logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
        """Per-sample success: the target class wins (targeted) or the true class loses."""
        pred = logits.argmax(dim=1)
        return pred == y if targeted else pred != y


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attack(abc.ABC):
    """Base of every attack: a frozen set of hyperparameters, called as ``attack(model, x, y)``.

    Attributes:
        threat: the perturbation set (norm, eps, bounds); the result always lies inside it.
        targeted: if True, ``y`` holds *target* classes and success means predicting them.
        seed: seeds every random choice (random starts, restarts, Square's sampling).
        autocast: run the model's forward under ``torch.autocast`` with this dtype
            (e.g. ``torch.bfloat16``); gradients and the perturbation stay float32.
    """

    threat: ThreatModel
    targeted: bool = False
    seed: int = 0
    autocast: torch.dtype | None = None

    #: Short name for reports.
    name: ClassVar[str] = "attack"
    #: Whether the attack supports ``targeted=True``.
    supports_targeted: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.threat, ThreatModel):
            raise ConfigurationError(
                f"threat must be a bastion.ThreatModel, got {type(self.threat).__name__}"
            )
        if self.targeted and not self.supports_targeted:
            raise ConfigurationError(f"{self.name} has no targeted version")
        if self.autocast not in (None, torch.bfloat16, torch.float16):
            raise ConfigurationError(
                f"autocast must be None, bfloat16 or float16, got {self.autocast}"
            )

    def params(self) -> dict[str, Any]:
        """Hyperparameters for reports (threat model excluded: it is reported on its own)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "threat":
                continue
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, torch.dtype) else value
        return out

    @final
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for ``x``: inside the threat model and the bounds, always."""
        return self.run_with_stats(model, x, y)[0]

    @final
    def run_with_stats(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, AttackStats]:
        """Like ``__call__``, also returning the forward/backward passes spent."""
        if not isinstance(model, nn.Module):
            raise ConfigurationError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_batch(x, y)
        self.threat.check_inputs(x)
        device = _device_of(model, x)
        origin = x.device
        x = x.detach().to(device, torch.float32)
        y = y.detach().to(device, torch.long)
        stats = AttackStats()
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed)
        with frozen_eval(model):
            if x.shape[0] == 0:
                return x.to(origin), stats
            ctx = AttackContext(
                model,
                threat=self.threat,
                generator=generator,
                autocast=self.autocast,
                stats=stats,
                num_classes=0,
            )
            logits = ctx.logits(x)
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise InputValidationError(
                    f"the model must map a batch of {x.shape[0]} inputs to logits of shape "
                    f"({x.shape[0]}, classes); it returned {tuple(logits.shape)}"
                )
            ctx.num_classes = logits.shape[1]
            check_batch(x, y, num_classes=ctx.num_classes)
            if self.threat.eps == 0:
                return x.to(origin), stats
            x_adv = self._run(ctx, x, y, logits)
        x_adv = self.threat.project(x_adv.detach().float(), x)
        return x_adv.to(origin), stats

    @abc.abstractmethod
    def _run(
        self, ctx: AttackContext, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor
    ) -> torch.Tensor:
        """Search for adversarial examples; the base projects whatever this returns."""


def _device_of(model: nn.Module, x: torch.Tensor) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return x.device
