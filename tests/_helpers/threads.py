"""Run torch on one intra-op thread during a test, restoring the setting after.

Tiny models gain nothing from a second thread, and on 2 cores shared by several processes
torch's threads spin against each other: a small CNN's forward+backward measured 20x slower on
2 threads than on 1. Numerics can differ slightly between thread counts, so tests whose
thresholds were seeded on one thread keep it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
