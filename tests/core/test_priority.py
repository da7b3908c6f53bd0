"""Background threads lower their own CPU priority, and only their own."""

from __future__ import annotations

import os
import subprocess
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


def _policy(tid: int) -> int:
    return os.sched_getscheduler(tid)


@linux
def test_an_idle_thread_runs_under_sched_idle_and_no_other_does() -> None:
    seen: list[tuple[bool, int]] = []

    def work() -> None:
        seen.append((lower_this_thread(idle=True), _policy(threading.get_native_id())))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [(True, os.SCHED_IDLE)]
    assert _policy(threading.get_native_id()) == os.SCHED_OTHER


@linux
def test_sched_idle_refused_falls_back_to_the_nice_value(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError("not here")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    main = _nice(threading.get_native_id())
    seen: list[tuple[bool, int, int]] = []

    def work() -> None:
        tid = threading.get_native_id()
        seen.append((lower_this_thread(idle=True), _policy(tid), _nice(tid)))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [(True, os.SCHED_OTHER, min(19, main + BACKGROUND_NICE))]


@linux
def test_an_idle_monitor_worker_keeps_up_while_every_cpu_is_busy() -> None:
    """SCHED_IDLE gets a CPU only when no normal thread wants one; with a busy process on
    every CPU, the worker still feeds every batch, and a submitter blocked by the full queue
    (the back-pressure) gets through: the worker is slowed, never starved."""
    from bastion.serve._monitor_worker import MonitorWorker

    fed: list[int] = []

    class Suite:
        def update(self, inputs: torch.Tensor, outputs: torch.Tensor) -> tuple[()]:
            fed.append(int(inputs.shape[0]))
            return ()

    spin = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"
    cpus = min(len(os.sched_getaffinity(0)), 8)  # every CPU this process may use (at most 8)
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(cpus)]
    try:
        worker = MonitorWorker(Suite(), max_pending=4, interval=0.0, gather=4)
        done = threading.Event()

        def submit_all() -> None:
            for _ in range(60):
                worker.submit(torch.zeros(2, 3), torch.zeros(2, 3))
            worker.drain()
            done.set()

        threading.Thread(target=submit_all, daemon=True).start()
        assert done.wait(50), f"the idle worker fed {sum(fed) // 2} of 60 batches"
        assert worker._thread is not None and worker._thread.native_id is not None
        assert _policy(worker._thread.native_id) == os.SCHED_IDLE
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert sum(fed) == 120


def test_nothing_to_lower_is_a_no_op() -> None:
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert lower_this_thread(0) is False
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


@linux
def test_the_servers_background_threads_run_at_their_lower_priorities(tmp_path: Path) -> None:
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
    assert _policy(worker._thread.native_id) == os.SCHED_IDLE  # bounded queue: back-pressure
    with AuditLog.open(tmp_path / "audit.db") as log:
        log.append(AuditRecord.create(inputs=b"x"))
        assert len(log) == 1  # the ingester has run
        ingester = log._backend._ingester
        assert ingester is not None and ingester.native_id is not None
        assert _nice(ingester.native_id) == min(19, main + BACKGROUND_NICE)
        assert _policy(ingester.native_id) == os.SCHED_OTHER  # its backlog is unbounded
