"""Background threads lower their own CPU priority, and only their own."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
import torch

from bastion.core.priority import BACKGROUND_NICE, lower_this_thread

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice: Linux")


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


@linux
def test_a_thread_lowers_its_own_priority_and_no_other() -> None:
    main = _nice(threading.get_native_id())
    seen: list[tuple[bool, int]] = []

    def work() -> None:
        seen.append((lower_this_thread(), _nice(threading.get_native_id())))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [(True, min(19, main + BACKGROUND_NICE))]
    assert _nice(threading.get_native_id()) == main  # the caller's thread is as it was


def test_nothing_to_lower_is_a_no_op() -> None:
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert lower_this_thread(0) is False
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


@linux
def test_the_servers_background_threads_run_at_the_lower_priority(tmp_path: Path) -> None:
    from bastion.guard.audit_log import AuditLog, AuditRecord
    from bastion.serve._monitor_worker import MonitorWorker

    class Suite:
        def update(self, inputs: torch.Tensor, outputs: torch.Tensor) -> tuple[()]:
            return ()

    main = _nice(threading.get_native_id())
    worker = MonitorWorker(Suite(), interval=0.0)
    worker.submit(torch.zeros(1, 2), torch.zeros(1, 2))
    worker.drain()
    assert worker._thread is not None and worker._thread.native_id is not None
    assert _nice(worker._thread.native_id) == min(19, main + BACKGROUND_NICE)
    with AuditLog.open(tmp_path / "audit.db") as log:
        log.append(AuditRecord.create(inputs=b"x"))
        assert len(log) == 1  # the ingester has run
        ingester = log._backend._ingester
        assert ingester is not None and ingester.native_id is not None
        assert _nice(ingester.native_id) == min(19, main + BACKGROUND_NICE)
