"""The monitors' thread: batches gather for an interval, or until enough wait, then one update."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from bastion.serve._monitor_worker import MonitorWorker


class CountingSuite:
    """A monitor suite that records the batch sizes of its updates."""

    def __init__(self) -> None:
        self.updates: list[int] = []
        self.updated = threading.Event()

    def update(self, inputs: torch.Tensor, outputs: torch.Tensor) -> Sequence[Any]:
        self.updates.append(int(inputs.shape[0]))
        self.updated.set()
        return ()

    def state(self) -> Any:
        return {}


def _submit(worker: MonitorWorker, n: int) -> None:
    for i in range(n):
        worker.submit(torch.full((1, 3), float(i)), torch.zeros(1, 2))


def test_batches_gather_for_the_interval_into_one_update() -> None:
    suite = CountingSuite()
    worker = MonitorWorker(suite, interval=0.3, gather=100)
    _submit(worker, 5)
    assert not suite.updated.wait(0.1)  # still gathering
    worker.drain()
    assert suite.updates == [5]  # one update of every batch, in one piece


def test_an_update_starts_once_gather_batches_wait_without_waiting_out_the_interval() -> None:
    suite = CountingSuite()
    worker = MonitorWorker(suite, interval=30.0, gather=4)
    began = time.monotonic()
    _submit(worker, 4)
    assert suite.updated.wait(10.0), "the worker waited out its interval"
    assert time.monotonic() - began < 10.0
    worker.drain()
    assert sum(suite.updates) == 4


@pytest.mark.parametrize(("interval", "gather"), [(-1.0, 4), (0.1, 0), (0.1, 2000)])
def test_bad_settings_are_refused(interval: float, gather: int) -> None:
    with pytest.raises(ValueError, match="interval|gather"):
        MonitorWorker(CountingSuite(), interval=interval, gather=gather)
