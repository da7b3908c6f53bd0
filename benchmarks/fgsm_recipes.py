"""Single-step adversarial training recipes against PGD-10, as plain PyTorch loops (no guard).

An exploration, not the benchmark of record (that is ``adv_train.py``): each recipe trains on
the 4,000 MNIST-5k training samples at Linf eps 0.3 (Adam, cyclic learning rate up to 0.005,
batch 50, eps warm-up over the first third of the epochs unless said otherwise) and is scored
by PGD-20 (step 2.5·eps/20, one random start) on the first 1,000 test and 1,000 training
samples. Recipes:

* ``demo-fgsm``: FGSM-RS (Wong et al. 2020: uniform start in the eps-ball, step 1.25·eps) on
  the demo CNN; ``demo-fgsm-b25`` the same at batch 25;
* ``wong-fgsm`` / ``wong-fgsm-nowarm`` / ``wong-pgd``: Wong et al.'s MNIST CNN (two stride-2
  convolutions, 100 hidden units) with FGSM-RS, FGSM-RS at the full eps from the first step,
  and PGD-10 (10 epochs);
* ``demo-fgsm-prior`` / ``wong-fgsm-prior``: FGSM started from each sample's perturbation of the
  previous epoch plus half-eps uniform noise (the "prior-guided" / ATTA idea: the start carries
  the attack's progress across epochs).

Usage: python benchmarks/fgsm_recipes.py demo-fgsm wong-pgd ...   (one JSON line per recipe)
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.data import load_mnist5k
from bastion.zoo import DemoCNN

EPS = 0.3


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.1307) / 0.3081


def wong_cnn() -> nn.Module:
    """Wong et al.'s MNIST network (fast_adversarial), with the input normalisation inside."""
    return nn.Sequential(
        _Normalize(), nn.Conv2d(1, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10),
    )


def pgd_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 20) -> float:
    alpha = 2.5 * EPS / steps
    adv = (x + (torch.rand_like(x) * 2 - 1) * EPS).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        adv = torch.min(torch.max(adv.detach() + alpha * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).float().mean())


def train(name: str, *, arch: str = "demo", method: str = "fgsm", epochs: int = 15,
          batch: int = 50, lr: float = 5e-3, warmup: int | None = None, prior: bool = False,
          seed: int = 0) -> dict[str, Any]:
    data = load_mnist5k()
    x, y = data.x_train, data.y_train
    torch.manual_seed(seed)
    model = DemoCNN() if arch == "demo" else wong_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    per_epoch = (n + batch - 1) // batch
    total = epochs * per_epoch
    warmup = epochs // 3 if warmup is None else warmup
    last = torch.zeros_like(x)  # each sample's perturbation of the previous epoch (prior)
    began, step = time.perf_counter(), 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            t = step / total  # cyclic: up to lr at 40% of the run, then down to 0
            for group in opt.param_groups:
                group["lr"] = lr * (t / 0.4 if t < 0.4 else (1 - t) / 0.6)
            idx = order[i : i + batch]
            xb, yb = x[idx], y[idx]
            eps = EPS * min(1.0, (step + 1) / (warmup * per_epoch)) if warmup else EPS
            model.eval()
            if method == "fgsm":
                noise = (torch.rand_like(xb) * 2 - 1) * eps
                delta = (last[idx] + noise / 2).clamp(-eps, eps) if prior else noise
                delta.requires_grad_(True)
                loss = F.cross_entropy(model((xb + delta).clamp(0, 1)), yb)
                (grad,) = torch.autograd.grad(loss, delta)
                delta = (delta + 1.25 * eps * grad.sign()).clamp(-eps, eps).detach()
                last[idx] = delta
                xa = (xb + delta).clamp(0, 1)
            else:  # PGD-10
                xa = (xb + (torch.rand_like(xb) * 2 - 1) * eps).clamp(0, 1)
                for _ in range(10):
                    xa.requires_grad_(True)
                    (grad,) = torch.autograd.grad(F.cross_entropy(model(xa), yb), xa)
                    xa = torch.min(torch.max(xa.detach() + 0.25 * eps * grad.sign(), xb - eps),
                                   xb + eps).clamp(0, 1)
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(xa), yb).backward()
            opt.step()
            step += 1
    seconds = time.perf_counter() - began
    model.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        clean = float((model(data.x_test[:1000]).argmax(1) == data.y_test[:1000]).float().mean())
    return {"recipe": name, "seconds": round(seconds, 1), "clean": round(clean, 3),
            "pgd20_test": round(pgd_accuracy(model, data.x_test[:1000], data.y_test[:1000]), 3),
            "pgd20_train": round(pgd_accuracy(model, x[:1000], y[:1000]), 3)}


RECIPES: dict[str, dict[str, Any]] = {
    "demo-fgsm": {},
    "demo-fgsm-b25": {"batch": 25},
    "demo-fgsm-prior": {"prior": True},
    "wong-fgsm": {"arch": "wong"},
    "wong-fgsm-nowarm": {"arch": "wong", "warmup": 0},
    "wong-fgsm-prior": {"arch": "wong", "prior": True},
    "wong-pgd": {"arch": "wong", "method": "pgd", "epochs": 10},
}


if __name__ == "__main__":
    torch.set_num_threads(1)
    unknown = [r for r in sys.argv[1:] if r not in RECIPES]
    if unknown or len(sys.argv) < 2:
        raise SystemExit(f"recipes: {', '.join(RECIPES)}" + (f" (unknown: {unknown})"
                                                              if unknown else ""))
    for recipe in sys.argv[1:]:
        print(json.dumps(train(recipe, **RECIPES[recipe])), flush=True)
