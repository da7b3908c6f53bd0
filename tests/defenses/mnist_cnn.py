"""A tiny CNN trained on MNIST 5k inside the tests (a few seconds on 2 CPU cores), shared by the
defense tests and tests/evaluate/test_adaptive.py.

The bundled MNIST 5k split is sorted by class, so the helpers shuffle it (seeded) before taking
subsets. The CNN trains on a third of each batch resized-and-padded, a third with Gaussian noise
and a third clean, as randomized defenses are usually trained, so every defense keeps a clean
accuracy near the undefended one (~93%).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from _helpers.threads import one_thread  # noqa: F401 - re-exported for the defense tests
from bastion.data import load_dataset
from bastion.defenses import GaussianNoise, RandomResizePad


@functools.lru_cache(maxsize=1)
def mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MNIST 5k, train (4000) and test (1000) each shuffled with a fixed seed."""
    split = load_dataset("mnist5k")
    gen = torch.Generator().manual_seed(0)
    p = torch.randperm(split.x_train.shape[0], generator=gen)
    q = torch.randperm(split.x_test.shape[0], generator=gen)
    return split.x_train[p], split.y_train[p], split.x_test[q], split.y_test[q]


@functools.lru_cache(maxsize=1)
def trained_cnn() -> nn.Module:
    """Two strided convolutions and two linear layers, 3 epochs of Adam (eval mode)."""
    x_train, y_train, _, _ = mnist()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    resize, noise = RandomResizePad(3, generator=1), GaussianNoise(0.3, generator=2)
    for _ in range(3):
        perm = torch.randperm(x_train.shape[0], generator=gen)
        for i in range(0, x_train.shape[0], 64):
            idx = perm[i : i + 64]
            xb, third = x_train[idx], idx.numel() // 3
            with torch.no_grad():
                xb = torch.cat([resize(xb[:third]), noise(xb[third : 2 * third]), xb[2 * third :]])
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), y_train[idx]).backward()
            opt.step()
    return model.eval()


def mnist_batch(n: int = 100, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` shuffled test samples starting at ``offset`` (correct or not: accuracies compare)."""
    _, _, x_test, y_test = mnist()
    return x_test[offset : offset + n], y_test[offset : offset + n]


def judged_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int = 1) -> float:
    """Accuracy of the argmax of logits averaged over ``passes`` passes (1 for a fixed model)."""
    with torch.no_grad():
        logits = sum(model(x) for _ in range(passes)) / passes
    return float((logits.argmax(1) == y).float().mean())  # type: ignore[union-attr]
