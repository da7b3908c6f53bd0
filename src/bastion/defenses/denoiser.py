"""A small convolutional denoiser placed in front of a classifier, and its training.

Denoising defenses (MagNet, Meng & Chen 2017, https://arxiv.org/abs/1705.09064; the
high-level-guided denoiser of Liao et al. 2018, https://arxiv.org/abs/1712.02976) project an
input back towards the data before classification. A denoiser D trained on Gaussian noise
minimises

    E_{x, eps ~ N(0, I)} || D(clip(x + sigma * eps)) - x ||_2^2,

and removes part of a perturbation crafted without knowing it. It is differentiable, though, so
the composition ``classifier(D(x))`` is just a deeper network: white-box attacks through D break
it (Carlini & Wagner 2017, "MagNet and 'Efficient Defenses Against Adversarial Attacks' are Not
Robust to Adversarial Examples", https://arxiv.org/abs/1711.08478; Athalye, Carlini & Wagner
2018). No attack hint is needed: plain white-box attacks apply.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.defenses._base import Preprocessing, positive_int

__all__ = ["Denoiser", "fit_denoiser"]


class Denoiser(Preprocessing):
    """A residual convolutional denoiser: ``D(x) = clip(x + net(x))``, shape-preserving.

    ``net`` is ``depth`` 3x3 convolutions of ``width`` channels with ReLUs between them and no
    downsampling, so any image size works. Its last layer starts at zero: an untrained denoiser
    is the identity, and :func:`fit_denoiser` teaches it to remove noise.

    Args:
        channels: image channels C of the ``(B, C, H, W)`` inputs.
        width: channels of the hidden layers.
        depth: convolutions, at least 2.
        bounds: the valid input range; the output is clipped into it.

    Example:
        >>> import torch
        >>> denoiser = Denoiser(channels=1)
        >>> x = torch.rand(2, 1, 8, 8)
        >>> torch.equal(denoiser(x), x)  # untrained: the identity
        True
    """

    exact_dims = 4

    def __init__(
        self,
        channels: int = 1,
        *,
        width: int = 16,
        depth: int = 3,
        bounds: Sequence[float] = (0.0, 1.0),
    ) -> None:
        super().__init__(bounds=bounds)
        self.channels = positive_int("channels", channels)
        width = positive_int("width", width)
        depth = positive_int("depth", depth, minimum=2)
        layers: list[nn.Module] = []
        c_in = self.channels
        for i in range(depth):
            c_out = self.channels if i == depth - 1 else width
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            if i < depth - 1:
                layers.append(nn.ReLU())
            c_in = c_out
        self.net = nn.Sequential(*layers)
        last = layers[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)  # type: ignore[arg-type]

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        if x.shape[1] != self.channels:
            raise InputValidationError(
                f"Denoiser(channels={self.channels}) got images with {x.shape[1]} channels "
                f"(shape {tuple(x.shape)}); build it with channels={x.shape[1]}"
            )

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.net(x)
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, {super().extra_repr()}"


def fit_denoiser(
    denoiser: Denoiser,
    x_clean: torch.Tensor,
    *,
    sigma: float = 0.2,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> Denoiser:
    """Train ``denoiser`` (in place) to map ``clip(x + sigma * eps)`` back to ``x``; MSE, Adam.

    Args:
        denoiser: the :class:`Denoiser` to train (on its own device).
        x_clean: clean training images ``(N, C, H, W)`` inside the denoiser's bounds.
        sigma: the training noise standard deviation, in input units.
        epochs: passes over ``x_clean``.
        batch_size: images per step.
        lr: Adam's learning rate.
        seed: seeds the shuffling and the noise.

    Returns:
        ``denoiser``, trained and in eval mode.

    Raises:
        ConfigurationError: bad hyperparameters or not a :class:`Denoiser`.
        InputValidationError: ``x_clean`` has the wrong shape, channels or range.

    Example:
        >>> import torch
        >>> x = torch.zeros(64, 1, 8, 8)
        >>> x[:, :, 2:6, 3:5] = 1.0  # a bar, the same in every image
        >>> noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))
        >>> noisy = noisy.clamp(0, 1)
        >>> d = fit_denoiser(Denoiser(1), x, sigma=0.3, epochs=30, lr=1e-2)
        >>> with torch.no_grad():
        ...     bool((d(noisy) - x).pow(2).mean() < 0.5 * (noisy - x).pow(2).mean())
        True
    """
    if not isinstance(denoiser, Denoiser):
        raise ConfigurationError(
            f"fit_denoiser trains a bastion.defenses.Denoiser, got {type(denoiser).__name__}"
        )
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < 1e6:
        raise ConfigurationError(f"sigma must be a positive number, got {sigma!r}")
    epochs = positive_int("epochs", epochs)
    batch_size = positive_int("batch_size", batch_size)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigurationError(f"lr must be a positive number, got {lr!r}")
    denoiser.check_input(x_clean)
    lo, hi = denoiser.bounds
    device = next(denoiser.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(denoiser.parameters(), lr=float(lr))
    denoiser.train()
    for _ in range(epochs):
        perm = torch.randperm(x_clean.shape[0], generator=gen)
        for i in range(0, x_clean.shape[0], batch_size):
            xb = x_clean[perm[i : i + batch_size]].to(device)
            noise = torch.randn(xb.shape, generator=gen).to(device)
            noisy = (xb + sigma * noise).clamp(lo, hi)
            opt.zero_grad()
            loss = F.mse_loss(denoiser(noisy), xb)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    denoiser.eval()
    return denoiser
