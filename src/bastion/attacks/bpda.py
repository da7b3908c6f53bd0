"""Backward pass differentiable approximation (Athalye, Carlini & Wagner 2018,
https://arxiv.org/abs/1802.00420): attack a model behind a non-differentiable preprocessing g.

Quantisation, JPEG compression or thermometer encoding have a gradient that is zero almost
everywhere (or undefined), which makes every gradient attack fail without the model being any
more robust ("shattered gradients"). BPDA keeps g on the forward pass and differentiates a
smooth approximation a ≈ g on the backward pass:

    forward:  y = g(x)            backward:  ∂L/∂x ≈ (∂a/∂x)^T ∂L/∂y

with a = identity by default (the straight-through estimator, right when g(x) ≈ x, as for
quantisation and denoisers). Wrap the preprocessing and compose:
``nn.Sequential(BPDA(quantize), model)``; every attack then sees useful gradients. A
:class:`BPDA` module declares ``bastion_attack_hint = "bpda"`` (see
:func:`bastion.attacks.attack_hints`), so an evaluation can report that its gradients were
approximated and cross-check them with a black-box attack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from bastion.attacks.eot import AttackHint
from bastion.core.errors import ConfigurationError, InputValidationError

__all__ = ["BPDA", "bpda"]

Transform = Callable[[torch.Tensor], torch.Tensor]


class _Approximated(torch.autograd.Function):
    """g on the forward pass, the vector-Jacobian product of ``approx`` on the backward pass."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, preprocess: Transform, approx: Transform | None
    ) -> torch.Tensor:
        with torch.no_grad():
            out = preprocess(x)
        if approx is None and out.shape != x.shape:
            raise InputValidationError(
                f"a straight-through BPDA needs a preprocessing that keeps the shape: input "
                f"{tuple(x.shape)}, output {tuple(out.shape)} (pass approx= for the backward pass)"
            )
        ctx.approx = approx
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        approx: Transform | None = ctx.approx
        if approx is None:
            return grad_out, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(approx(leaf), leaf, grad_out)
        return grad, None, None


class BPDA(nn.Module):
    """A preprocessing applied as is, differentiated as ``approx`` (identity by default).

    Args:
        preprocess: the (possibly non-differentiable) transform g, a module or a callable.
        approx: a differentiable a ≈ g with g's output shape; None for straight-through.

    Example:
        >>> import torch
        >>> quantize = BPDA(lambda x: torch.round(x * 4) / 4)
        >>> x = torch.tensor([0.1, 0.3, 0.6], requires_grad=True)
        >>> y = quantize(x)
        >>> y.detach().tolist()
        [0.0, 0.25, 0.5]
        >>> y.sum().backward()
        >>> x.grad.tolist()
        [1.0, 1.0, 1.0]
    """

    bastion_attack_hint: ClassVar[AttackHint] = AttackHint.BPDA

    def __init__(self, preprocess: Transform, approx: Transform | None = None) -> None:
        super().__init__()
        if not callable(preprocess):
            raise ConfigurationError(
                f"preprocess must be an nn.Module or a callable, got {type(preprocess).__name__}"
            )
        if approx is not None and not callable(approx):
            raise ConfigurationError(
                f"approx must be a callable or None (straight-through), got {type(approx).__name__}"
            )
        # modules are registered so .to(device), .eval() and state_dict reach them
        self.preprocess = preprocess
        self.approx = approx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            out: torch.Tensor = self.preprocess(x)
            return out
        result: torch.Tensor = _Approximated.apply(  # type: ignore[no-untyped-call]
            x, self.preprocess, self.approx
        )
        return result

    def extra_repr(self) -> str:
        approx = "identity" if self.approx is None else getattr(self.approx, "__name__", "approx")
        return f"backward={approx}"


def bpda(preprocess: Transform, approx: Transform | None = None) -> BPDA:
    """``BPDA(preprocess, approx)``: shorthand for composing, e.g. ``nn.Sequential(bpda(f), m)``.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(bpda(torch.sign), torch.nn.Linear(3, 2))
        >>> x = torch.randn(4, 3, requires_grad=True)
        >>> model(x).sum().backward()
        >>> bool(x.grad.abs().sum() > 0)
        True
    """
    return BPDA(preprocess, approx)
