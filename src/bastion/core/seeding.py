"""Seeding: every random choice bastion makes is reproducible from one integer."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything", "torch_generator"]


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A private torch generator, so that seeded work does not disturb the global one."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
