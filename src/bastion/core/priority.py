"""Background threads at a lower CPU priority than the threads that answer requests.

A server's background work (monitor updates, audit rows moved into their table) runs in bursts
of a few milliseconds. On a machine with few cores, a burst that lands while a request is being
answered competes with it for the CPU, and the requests that meet one make the latency tail.
On Linux a thread has its own scheduling settings, so the worker threads lower theirs. Two
strengths:

- ``lower_this_thread()`` raises the nice value by 10: the request path gets the CPU first and
  the background work still a fair share of it under full load (the audit ingester: nothing
  holds back the rows it has to move, so it must never starve).
- ``lower_this_thread(idle=True)`` runs the thread under ``SCHED_IDLE``: it gets a CPU only
  when no normal thread wants it, and a request thread that wakes takes that CPU at once. For
  work that has back-pressure (the monitor worker: when it falls behind, its bounded queue
  stops the requests, which frees the CPU for it). A nice value alone did not stop a monitor
  update from slowing the requests it overlapped (on 2 vCPUs, a request that met one was slow,
  beyond the p99 of all, 1 time in 3 or 4; under ``SCHED_IDLE``, 1 in 13 to 23: see
  benchmarks/RESULTS.md).

Elsewhere, or where the system refuses, nothing changes (``SCHED_IDLE`` refused: the nice
value instead).

Example:
    >>> import threading
    >>> def work() -> None:
    ...     lower_this_thread()  # first thing in a background thread's target
    >>> t = threading.Thread(target=work, daemon=True)
    >>> t.start(); t.join()
"""

from __future__ import annotations

import logging
import os
import sys
import threading

__all__ = ["BACKGROUND_NICE", "lower_this_thread"]

BACKGROUND_NICE = 10
"""How much a background thread raises its nice value (lower priority; no privilege needed)."""

_log = logging.getLogger("bastion")


def lower_this_thread(by: int = BACKGROUND_NICE, *, idle: bool = False) -> bool:
    """Lower the calling thread's CPU priority (Linux: per thread); True if it did.

    Args:
        by: how much to raise the nice value (0: leave it).
        idle: run under ``SCHED_IDLE`` instead (only for work whose backlog is bounded: it may
            wait as long as the CPUs are busy); where refused, raise the nice value by ``by``.

    Never raises: a platform or sandbox that refuses leaves the thread as it was.
    """
    if not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    if idle:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return True
        except (OSError, AttributeError) as err:
            _log.debug("no SCHED_IDLE for thread %s (%s); lowering its nice value",
                       threading.current_thread().name, err)
    if by <= 0:
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except (OSError, AttributeError) as err:
        _log.debug("could not lower the priority of thread %s: %s", threading.current_thread().name,
                   err)
        return False
    return True
