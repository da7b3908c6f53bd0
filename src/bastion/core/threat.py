"""Threat models: which perturbations an attacker may make, and the geometry of each norm.

A :class:`ThreatModel` is the one place that knows how an Linf or L2 ball looks: projecting onto
it, sampling a random start inside it, and turning a gradient into the steepest ascent step. Attacks
compose it instead of being written once per norm.
"""

from __future__ import annotations

import dataclasses
import enum
import math

import torch

from bastion.core.enums import parse_enum
from bastion.core.errors import ConfigurationError, InputValidationError

__all__ = ["MAX_EPS", "Norm", "ThreatModel"]

_TINY = 1e-12


class Norm(enum.Enum):
    """The norm that measures a perturbation."""

    LINF = "linf"
    L2 = "l2"

    @classmethod
    def parse(cls, value: Norm | str) -> Norm:
        """Accept ``Norm`` members and the usual spellings: linf, Linf, inf, l2, 2."""
        aliases = {"inf": cls.LINF, "li": cls.LINF, "2": cls.L2}
        return parse_enum(
            cls,
            value,
            "norm",
            aliases=aliases,
            normalise=lambda t: t.replace("_", "").replace("-", ""),
        )


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector so it broadcasts over the non-batch dims of ``x``."""
    return values.reshape(-1, *([1] * (x.dim() - 1)))


MAX_EPS = 1e9
"""Largest radius a :class:`ThreatModel` takes: beyond the diameter of any real input box."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ThreatModel:
    """An Lp ball of radius ``eps`` around each input, intersected with the input bounds.

    Attributes:
        norm: ``"linf"`` or ``"l2"`` (parsed to :class:`Norm`).
        eps: the radius; 0 means no perturbation at all.
        bounds: the valid input range (lower, upper), e.g. (0, 1) for images.

    Example:
        >>> threat = ThreatModel(norm="linf", eps=0.3)
        >>> x = torch.full((1, 1, 2, 2), 0.9)
        >>> threat.project(x + 0.5, x).max().item()
        1.0
    """

    norm: Norm = Norm.LINF
    eps: float = 0.3
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", Norm.parse(self.norm))
        try:
            eps = float(self.eps)
        except (TypeError, ValueError):
            raise ConfigurationError(f"eps must be a number, got {self.eps!r}") from None
        if not math.isfinite(eps) or eps < 0:
            raise ConfigurationError(f"eps must be finite and >= 0, got {self.eps!r}")
        if eps > MAX_EPS:  # past any input's diameter; far past it, float32 overflows in torch
            raise ConfigurationError(
                f"eps must be at most {MAX_EPS:g} (a larger ball bounds nothing), got {eps:g}"
            )
        object.__setattr__(self, "eps", eps)
        try:
            lo, hi = (float(b) for b in self.bounds)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"bounds must be a (lower, upper) pair of numbers, got {self.bounds!r}"
            ) from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigurationError(f"bounds must satisfy lower < upper, got {self.bounds!r}")
        object.__setattr__(self, "bounds", (lo, hi))

    def with_eps(self, eps: float) -> ThreatModel:
        """The same threat model with another radius."""
        return dataclasses.replace(self, eps=eps)

    def describe(self) -> str:
        return f"{self.norm.value} eps={self.eps:g} bounds=[{self.bounds[0]:g}, {self.bounds[1]:g}]"

    # -- geometry ---------------------------------------------------------------------------

    def norms(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample norm of a batch of perturbations."""
        flat = delta.flatten(1)
        if self.norm is Norm.LINF:
            return flat.abs().amax(dim=1)
        norms: torch.Tensor = torch.linalg.vector_norm(flat, ord=2, dim=1)
        return norms

    def project(
        self, x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """The point of ball(x, eps) ∩ bounds closest to ``x_adv`` (exact for Linf; for L2 the
        ball projection followed by the box clip, which keeps the result inside both)."""
        radius = self.eps if eps is None else eps
        delta = x_adv - x
        if self.norm is Norm.LINF:
            if isinstance(radius, torch.Tensor):
                r = _per_sample(radius.to(delta), delta)
                delta = torch.maximum(torch.minimum(delta, r), -r)
            else:
                delta = delta.clamp(-radius, radius)
        else:
            n = delta.flatten(1).norm(p=2, dim=1)
            r = radius.to(n) if isinstance(radius, torch.Tensor) else torch.full_like(n, radius)
            factor = torch.where(n > r, r / (n + _TINY), torch.ones_like(n))
            delta = delta * _per_sample(factor, delta)
        return (x + delta).clamp(*self.bounds)

    def random_start(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """A uniformly random point of the ball around each input (then clipped to bounds)."""
        radius = self.eps if eps is None else eps
        shape = x.shape
        if self.norm is Norm.LINF:
            u = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
            r = _per_sample(radius, x) if isinstance(radius, torch.Tensor) else radius
            delta = (2 * u - 1) * r
        else:
            direction = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
            direction = direction / (_per_sample(direction.flatten(1).norm(dim=1), x) + _TINY)
            d = x[0].numel()
            u = torch.rand(shape[0], generator=generator, device=x.device, dtype=x.dtype)
            r = radius.to(u) if isinstance(radius, torch.Tensor) else radius
            delta = direction * _per_sample(u.pow(1.0 / d) * r, x)
        return self.project(x + delta, x, radius)

    def ascent_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The unit-norm step that increases a loss fastest to first order: sign for Linf,
        the normalised gradient for L2 (zero gradients give a zero step)."""
        if self.norm is Norm.LINF:
            return grad.sign()
        n = grad.flatten(1).norm(p=2, dim=1)
        return grad / _per_sample(n + _TINY, grad)

    def check_inputs(self, x: torch.Tensor, *, tolerance: float = 1e-6) -> None:
        """Refuse inputs outside the declared bounds or not finite, naming the first offender."""
        if not torch.is_floating_point(x):
            raise InputValidationError(f"inputs must be floating point, got {x.dtype}")
        lo, hi = self.bounds
        bad = ~torch.isfinite(x) | (x < lo - tolerance) | (x > hi + tolerance)
        if bool(bad.any()):
            per_sample = bad.flatten(1).any(dim=1)
            index = int(per_sample.nonzero()[0, 0])
            raise InputValidationError(
                f"inputs must be finite and inside bounds [{lo:g}, {hi:g}]; sample {index} has "
                f"values in [{x[index].min().item():g}, {x[index].max().item():g}] "
                "(normalise inside the model, not before the attack)",
                sample_index=index,
            )
