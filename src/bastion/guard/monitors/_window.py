"""The monitors' bounded window: a ring buffer of the last rows, allocated once."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["_Window"]


class _Window:
    """Ring buffer of the last ``size`` feature rows; its memory is allocated once."""

    def __init__(self, size: int, width: int, dtype: torch.dtype, device: torch.device) -> None:
        self.buffer = torch.empty(size, width, dtype=dtype, device=device)
        self.pos = 0
        self.count = 0

    def push(self, rows: Tensor) -> None:
        size = self.buffer.shape[0]
        rows = rows[-size:]
        n = rows.shape[0]
        first = min(n, size - self.pos)
        self.buffer[self.pos : self.pos + first] = rows[:first]
        self.buffer[: n - first] = rows[first:]
        self.pos = (self.pos + n) % size
        self.count = min(self.count + n, size)

    def evicted_by(self, n: int) -> Tensor | None:
        """The rows that pushing ``n`` more rows will overwrite (a copy), or None when none.

        While the window fills, ``pos == count`` and only writes that wrap past the end reach
        filled rows; once it is full every written position held a row.
        """
        size = self.buffer.shape[0]
        n = min(n, size)
        if self.count < size:
            wrapped = self.pos + n - size  # positions 0..wrapped-1 are rewritten
            return self.buffer[:wrapped].clone() if wrapped > 0 else None
        first = min(n, size - self.pos)
        head = self.buffer[self.pos : self.pos + first]
        if first == n:
            return head.clone()
        return torch.cat([head, self.buffer[: n - first]])

    def values(self) -> Tensor:
        return self.buffer[: self.count]  # order is irrelevant to two-sample tests

    @property
    def full(self) -> bool:
        return self.count == self.buffer.shape[0]
