"""Tiny models trained inside the tests (seconds on 2 CPU cores), and closed-form linear ones."""

from __future__ import annotations

import functools

import torch
from torch import nn


class LinearBinary(nn.Module):
    """Logits (0, w·x + b): class 1 iff w·x + b > 0. Minimal perturbations are closed-form:
    |w·x + b| / ||w||_1 under Linf and |w·x + b| / ||w||_2 under L2 (Carlini et al. 2019)."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(score), score], dim=1)


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from bastion.data import load_digits

    split = load_digits()
    return split.x_train, split.y_train, split.x_test, split.y_test


@functools.lru_cache(maxsize=1)
def trained_digits_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP trained on scikit-learn digits (8x8 in [0, 1]): ~95% test accuracy in ~2 s.

    Returns the model (eval mode) and 200 correctly classified test samples."""
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = _digits()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        perm = torch.randperm(x_train.shape[0], generator=gen)
        for i in range(0, x_train.shape[0], 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        correct = model(x_test).argmax(1) == y_test
    x, y = x_test[correct][:200], y_test[correct][:200]
    for p in model.parameters():
        p.requires_grad_(True)
    return model, x, y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def digits_mlp() -> nn.Module:
    """A fresh MLP for 8x8 digits: the factory ``_helpers.models:digits_mlp`` of CLI tests."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
