"""Input randomization: a fresh random transformation of every input on every forward pass.

* :class:`RandomResizePad` (Xie, Wang, Zhang, Ren & Yuille 2018, "Mitigating Adversarial Effects
  Through Randomization", https://arxiv.org/abs/1711.01991): resize to a random size, pad at a
  random offset.
* :class:`GaussianNoise`: additive Gaussian noise, ``x' = clip(x + sigma * eps)``, the input
  layer of Random Self-Ensemble (Liu, Cheng, Zhang & Hsieh 2018, https://arxiv.org/abs/1712.00673)
  and the noise of randomized smoothing (Cohen, Rosenfeld & Kolter 2019), used here without a
  certificate.

Both make a single forward pass a random draw, so one pass's gradient is a noisy sample and one
pass's prediction a random one. That is "stochastic gradients" in Athalye, Carlini & Wagner 2018
(https://arxiv.org/abs/1802.00420), where random resize-and-pad fell to 0% accuracy under EOT.
Both declare ``bastion_attack_hint = AttackHint.EOT``, so :func:`bastion.evaluate.robustness`
attacks them with :class:`~bastion.attacks.EOT` and judges them over repeated passes.

Randomness: by default every call draws fresh values from torch's global generator (seed it with
``torch.manual_seed``). ``generator=`` takes a ``torch.Generator`` or an integer seed: the
sequence of draws is then reproducible, and each call still draws new values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F

from bastion.attacks.eot import AttackHint
from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.defenses._base import Preprocessing, make_generator, positive_int

__all__ = ["GaussianNoise", "RandomResizePad"]


class RandomResizePad(Preprocessing):
    """Resize each image to a random size, then pad it back at a random offset.

    Xie et al. (2018) resize a 299x299 image to r x r with r ~ U{299, ..., 330} and pad it at a
    random offset to 331x331. Here the canvas is the input's own size, so a defended model keeps
    its input shape: per sample, with d ~ U{0, ..., k} (k = ``max_shrink``),

        r = (H - d, W - d),   x' = pad(resize_nearest(x, r), top, left),
        top ~ U{0, ..., d},   left ~ U{0, ..., d},

    padded with ``fill`` (the lower bound by default; Xie et al. pad with zeros). Sizes and
    offsets are drawn per sample on every call. Nearest-neighbour resizing (as Xie et al.) keeps
    the output inside the bounds and is differentiable almost everywhere, so a single pass has a
    useful but random gradient: attack with EOT.

    Args:
        max_shrink: k, the largest shrink in pixels (at least 1, less than the image side).
        fill: the padding value (default: the lower bound).
        generator: a ``torch.Generator`` or an integer seed for reproducible draws; None uses
            torch's global generator. Draws are made on the CPU.
        bounds: the valid input range.

    Example:
        >>> import torch
        >>> defense = RandomResizePad(max_shrink=2, generator=0)
        >>> x = torch.ones(2, 1, 6, 6)
        >>> a, b = defense(x), defense(x)
        >>> a.shape == x.shape, bool(a.min() >= 0), torch.equal(a, b)
        (True, True, False)
    """

    bastion_attack_hint: ClassVar[AttackHint] = AttackHint.EOT
    exact_dims = 4

    def __init__(
        self,
        max_shrink: int = 3,
        *,
        fill: float | None = None,
        generator: torch.Generator | int | None = None,
        bounds: Sequence[float] = (0.0, 1.0),
    ) -> None:
        super().__init__(bounds=bounds)
        self.max_shrink = positive_int("max_shrink", max_shrink)
        lo, hi = self.bounds
        value = lo if fill is None else float(fill)
        if not lo <= value <= hi:
            raise ConfigurationError(
                f"fill must lie inside the bounds [{lo:g}, {hi:g}], got {fill}"
            )
        self.fill = value
        self.generator = make_generator(generator)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        k = self.max_shrink
        if k >= min(h, w):
            raise InputValidationError(
                f"RandomResizePad(max_shrink={k}) needs images larger than {k} pixels a side, got "
                f"{h}x{w}; choose max_shrink < {min(h, w)}"
            )
        shrink = torch.randint(0, k + 1, (b,), generator=self.generator)
        # offsets uniform on {0, ..., shrink}, per sample
        top = (torch.rand(b, generator=self.generator) * (shrink + 1)).long().clamp_max(shrink)
        left = (torch.rand(b, generator=self.generator) * (shrink + 1)).long().clamp_max(shrink)
        out = torch.empty_like(x)
        for d in sorted(set(shrink.tolist())):
            rows = (shrink == d).nonzero().squeeze(1)
            part = x[rows.to(x.device)]
            if d:
                part = F.interpolate(part, size=(h - d, w - d), mode="nearest")
                part = F.pad(part, (0, d, 0, d), value=self.fill)  # content at the top left
                part = _shift(part, top[rows].to(x.device), left[rows].to(x.device))
            out[rows.to(x.device)] = part
        return out

    def extra_repr(self) -> str:
        return f"max_shrink={self.max_shrink}, fill={self.fill:g}, {super().extra_repr()}"


def _shift(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Roll each image down by ``top[i]`` and right by ``left[i]`` rows/columns (wrapping).

    The content sits in the top-left corner with padding after it, and the offsets never exceed
    the padding, so only padding wraps around: a per-sample translation.
    """
    n, c, h, w = x.shape
    row_idx = (torch.arange(h, device=x.device) - top[:, None]) % h  # (n, h) source rows
    col_idx = (torch.arange(w, device=x.device) - left[:, None]) % w  # (n, w) source columns
    x = x.gather(2, row_idx[:, None, :, None].expand(n, c, h, w))
    return x.gather(3, col_idx[:, None, None, :].expand(n, c, h, w))


class GaussianNoise(Preprocessing):
    """Add fresh Gaussian noise on every pass: ``x' = clip(x + sigma * eps)``, eps ~ N(0, I).

    The noise is drawn afresh for every sample on every call (see the module docstring for
    seeding), so attack the defended model with EOT.

    Args:
        sigma: the noise standard deviation, > 0, in input units.
        generator: a ``torch.Generator`` or an integer seed; None uses torch's global
            generator on the input's device. A generator on another device than the input draws
            there and the noise is copied over.
        bounds: the valid input range.

    Example:
        >>> import torch
        >>> noisy = GaussianNoise(0.1, generator=0)
        >>> x = torch.full((3, 4), 0.5)
        >>> y = noisy(x)
        >>> bool(((y - x).abs() > 0).all()), bool((y - x).abs().max() < 1)
        (True, True)
    """

    bastion_attack_hint: ClassVar[AttackHint] = AttackHint.EOT

    def __init__(
        self,
        sigma: float = 0.1,
        *,
        generator: torch.Generator | int | None = None,
        bounds: Sequence[float] = (0.0, 1.0),
    ) -> None:
        super().__init__(bounds=bounds)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
            raise ConfigurationError(
                f"sigma must be a positive number (the noise standard deviation), got {sigma!r}"
            )
        if sigma == float("inf"):
            raise ConfigurationError("sigma must be finite, got inf")
        self.sigma = float(sigma)
        self.generator = make_generator(generator)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        gen = self.generator
        if gen is None:
            noise = torch.randn_like(x)
        else:
            noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype)
            noise = noise.to(x.device)
        return x + self.sigma * noise

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, {super().extra_repr()}"
