"""Feed the monitors from one background thread, off the request path.

A request hands its batch to :meth:`MonitorWorker.submit` and goes on; the worker thread wakes
on the first batch, waits ``interval`` seconds more (or until ``gather`` batches wait) so that
later requests' batches join it, then takes whatever is queued, concatenates the batches of the
same sample shape (one monitor update for many requests, same samples in the same order, so the
windows are exactly those of feeding them one by one; a window is tested at most once per
update) and updates the suite. Waiting trades verdict freshness for far less work on the request
path's cores and its interpreter lock: each update has a fixed cost per monitor (feature
extraction, checks, the result; about 0.8 ms for the four default monitors on 2 busy cores), and
while an update runs, the requests in flight share the interpreter lock with it. At 200
requests/s of one sample, batching 100 ms instead of 25 ms cut the monitors' CPU time from about
240 to 150 µs per sample; 500 ms instead of 100 ms pays the fixed cost 5x less often (the p99
gain first measured for it, +14% to +6%, came mostly from the benchmark charging the updates to
other variants; with the updates charged to their own server the guard's p99 stayed near +13%:
see benchmarks/RESULTS.md). The thread runs under ``SCHED_IDLE`` (:mod:`bastion.core.priority`):
a request thread that wakes takes its CPU at once (at nice +10, one request in three that met
an update was slowed past the p99). Drift is slow: a verdict half a second old loses nothing,
and ``GET /v1/monitor`` is never stale. The queue is bounded: when the monitors fall behind,
``submit`` blocks (back-pressure) rather than dropping samples. Answers carry the verdict of
the batches already tested (:meth:`snapshot`); ``drain`` waits until every submitted batch has
been seen, which ``GET /v1/monitor`` does.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from bastion.core.priority import lower_this_thread
from bastion.core.results import to_jsonable
from bastion.guard._json_text import JsonText

__all__ = ["MonitorWorker", "summarize"]

_log = logging.getLogger("bastion.serve")
Listener = Callable[[Sequence[Any]], object]


def summarize(results: Sequence[Any]) -> dict[str, Any]:
    """Monitor results for answers and audit rows: alarms, statistic vs threshold per monitor."""
    rows = [to_jsonable(r) for r in results]
    return {
        "alarms": sorted(r["name"] for r in rows if r.get("alarm")),
        "results": {
            r["name"]: {k: v for k, v in r.items() if k not in ("name", "detail", "schema_version")}
            for r in rows
        },
    }


class MonitorWorker:
    """One thread that updates a monitor suite with the batches requests submit.

    Args:
        monitors: anything with ``update(inputs, outputs) -> results`` (a ``MonitorSuite``).
        listeners: called with each update's results on the worker thread (alert rules).
        max_pending: batches that may wait before ``submit`` blocks.
        interval: seconds the worker lets batches gather after the first one arrives (0: update
            as soon as a batch arrives).
        gather: batches after which the worker stops waiting out ``interval`` (at high request
            rates an update starts once this many wait, well before ``submit`` would block).
    """

    def __init__(
        self,
        monitors: Any,
        *,
        listeners: Sequence[Listener] = (),
        max_pending: int = 1024,
        interval: float = 0.5,
        gather: int = 256,
    ) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0, got {interval}")
        if not 1 <= gather <= max_pending:
            raise ValueError(f"gather must be in [1, max_pending={max_pending}], got {gather}")
        self.monitors = monitors
        self.listeners = list(listeners)
        self.interval = interval
        self.gather = gather
        self._gathered = threading.Event()
        self.failures = 0
        self._queue: queue.Queue[tuple[Tensor, Tensor]] = queue.Queue(max_pending)
        self._snapshot = _snapshot({"alarms": [], "results": {}})
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, inputs: Tensor, outputs: Tensor) -> None:
        """Queue one batch (blocks only while ``max_pending`` batches already wait)."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="bastion-monitors", daemon=True
                    )
                    self._thread.start()
        self._queue.put((inputs, outputs))
        # enough for an update (with the first one, which the worker holds while it waits);
        # the length without the queue's lock: a hint, read on every request
        if len(self._queue.queue) + 1 >= self.gather:
            self._gathered.set()

    def snapshot(self) -> tuple[JsonText, JsonText]:
        """The last update's summary and the audit rows' list of it, encoded once per update
        on the worker thread (replaced together, never mutated)."""
        return self._snapshot

    def drain(self) -> None:
        """Wait until every submitted batch has been fed to the monitors."""
        self._queue.join()

    @property
    def pending(self) -> int:
        """Batches submitted and not yet fed."""
        return self._queue.unfinished_tasks

    def _run(self) -> None:
        # The requests first: a verdict can wait. SCHED_IDLE, not a nice value: the bounded
        # queue is the back-pressure that lets the monitors catch up when the CPUs are busy.
        lower_this_thread(idle=True)
        while True:
            items = [self._queue.get()]
            if self.interval:  # let the next requests' batches join this update
                self._gathered.wait(self.interval)
            self._gathered.clear()
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                for inputs, outputs in _coalesce(items):
                    self._update(inputs, outputs)
            finally:
                for _ in items:
                    self._queue.task_done()

    def _update(self, inputs: Tensor, outputs: Tensor) -> None:
        try:
            results = self.monitors.update(inputs, outputs)
            self._snapshot = _snapshot(summarize(results))
            for listener in self.listeners:
                listener(results)
        except Exception:  # a monitor fault must not kill the thread nor lose later batches
            self.failures += 1
            _log.exception("monitor update failed")


def _snapshot(summary: dict[str, Any]) -> tuple[JsonText, JsonText]:
    encoded = JsonText.of(summary)
    return encoded, encoded.listed()


def _coalesce(items: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """Concatenate consecutive batches whose samples have the same shape and dtype."""
    groups: list[list[tuple[Tensor, Tensor]]] = []
    for item in items:
        last = groups[-1][-1] if groups else None
        if (
            last is not None
            and last[0].shape[1:] == item[0].shape[1:]
            and last[1].shape[1:] == item[1].shape[1:]
            and last[0].dtype == item[0].dtype
            and last[1].dtype == item[1].dtype
        ):
            groups[-1].append(item)
        else:
            groups.append([item])
    return [
        (g[0][0], g[0][1])
        if len(g) == 1
        else (torch.cat([i for i, _ in g]), torch.cat([o for _, o in g]))
        for g in groups
    ]
