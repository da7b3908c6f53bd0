"""Run torch on one intra-op thread for a block, restoring the setting after.

Small tensors (a tiny model's batch, monitor windows of a few hundred samples) gain nothing from
a second intra-op thread, and on a few cores shared by several processes torch's threads spin
against each other: a small CNN's forward+backward measured 20x slower on 2 threads than on 1,
and the audit's "Runtime guard" section ten times slower (58 s against 6 s on 2 busy cores).
Numerics can differ slightly between thread counts, so code whose thresholds were computed on
one thread keeps it. Imported by ``bastion.audit`` and by the tests' helpers (one copy).

Example:
    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with one_thread():
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["one_thread"]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread inside the block; the previous count is restored after,
    also when the block raises."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
