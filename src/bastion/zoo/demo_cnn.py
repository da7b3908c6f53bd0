"""DemoCNN: a small, cheap convolutional network for 1x28x28 MNIST digits in [0, 1]."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ARCHITECTURE_VERSION", "DemoCNN"]

ARCHITECTURE_VERSION = 1
"""Bumped whenever the layers (and so the weights' layout or meaning) change."""

_MNIST_MEAN = 0.1307
_MNIST_STD = 0.3081


class DemoCNN(nn.Module):
    """Two 5x5 convolutions and two linear layers: about 65k parameters, under 1 MFLOP per image.

    The model takes raw pixels in [0, 1] (normalisation happens inside it, as every bastion model
    does) and returns 10 logits. It is the model the examples, tests and attack benchmarks use:
    small enough to train in seconds on a laptop CPU, accurate enough (about 98% on the MNIST 5k
    test split) that robustness numbers on it mean something.

    Example:
        >>> model = DemoCNN()
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=5),  # 28 -> 24
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 12
            nn.Conv2d(16, 32, kernel_size=5),  # -> 8
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 100),
            nn.ReLU(),
            nn.Linear(100, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch ``(B, 1, 28, 28)`` of pixels in [0, 1] to logits ``(B, 10)``."""
        logits: torch.Tensor = self.classifier(self.features((x - _MNIST_MEAN) / _MNIST_STD))
        return logits
