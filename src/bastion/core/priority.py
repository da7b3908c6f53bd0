"""Background threads at a lower CPU priority than the threads that answer requests.

A server's background work (monitor updates, audit rows moved into their table) runs in bursts
of a few milliseconds. On a machine with few cores, a burst that lands while a request is being
answered competes with it for the CPU, and the requests that meet one make the latency tail.
On Linux a thread has its own nice value, so the worker threads lower theirs: the scheduler
then gives the request path the CPU first, and the background work the time left over (it
needs a few percent of a core). Elsewhere this does nothing.

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


def lower_this_thread(by: int = BACKGROUND_NICE) -> bool:
    """Raise the calling thread's nice value by ``by`` (Linux: per thread); True if it did.

    Never raises: a platform or sandbox that refuses leaves the thread as it was.
    """
    if not sys.platform.startswith("linux") or by <= 0:
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except (OSError, AttributeError) as err:
        _log.debug("could not lower the priority of thread %s: %s", threading.current_thread().name,
                   err)
        return False
    return True
