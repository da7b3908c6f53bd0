"""Where the latency tail of ``bastion serve`` comes from: requests against background work.

One server (one variant of ``benchmarks/serve.py``), one keep-alive client in a process of its
own sending ``--requests`` bodies of batch 1 one after another. The server records when each
piece of background work ran (monitor updates, audit ingests and checkpoints, garbage
collections); the client records when each request was sent and answered (both on the machine's
monotonic clock). For each kind of work the script prints how often it ran and for how long,
the share of requests that overlapped it, how much slower those were on average, how often they
were slow (beyond the p99 of all requests) against the 1% base rate, and the share of slow
requests that overlapped it.

``--external-monitors nice|idle`` runs the four default monitors' updates (250 samples every
half second) in a separate process at nice +10 or under ``SCHED_IDLE``, on a server without
monitors: the same work without the interpreter lock, to tell the lock's share of the tail from
the scheduler's. ``--worker-nice`` runs the server's own monitor worker at nice +10 as before
(instead of ``SCHED_IDLE``), for the comparison.

    python benchmarks/serve_tail.py --variant normal --requests 8000 [--worker-nice]
    python benchmarks/serve_tail.py --variant checks --external-monitors idle
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bastion.core.priority import lower_this_thread  # noqa: E402
from bastion.guard import _audit_sqlite  # noqa: E402
from bastion.guard.audit_log import AuditLog  # noqa: E402
from bastion.serve import (  # noqa: E402
    KeyStore,
    ServeConfig,
    _monitor_worker,  # noqa: E402
    create_app,
)
from conftest import LiveServer  # noqa: E402
from serve import _CLIENT, Demo  # noqa: E402

# The benchmark's client, answering (send time, latency) pairs instead of latencies.
_TIMED_CLIENT = _CLIENT.replace("out.append(time.perf_counter() - t)",
                                "out.append((t, time.perf_counter() - t))")
assert _TIMED_CLIENT != _CLIENT

_EXTERNAL = r"""
import os, sys, time, torch
if sys.argv[2] == "idle":
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
else:
    os.nice(10)
torch.set_num_threads(1)
from bastion.data import load_mnist5k
from bastion.serve._stages import default_monitors
from bastion.serve.build import ModelSpec, load_model
data = load_mnist5k()
model = load_model(ModelSpec.parse("demo"))
with torch.no_grad():
    suite = default_monitors(data.x_test, model(data.x_test))
    x = data.x_train[:250]
    logits = model(x)
suite.update(x, logits)
out = open(sys.argv[1], "w")
print("ready", flush=True)
while True:
    time.sleep(0.5)
    t = time.perf_counter()
    suite.update(x, logits)
    out.write(f"{t} {time.perf_counter()}\n")
    out.flush()
"""

Intervals = dict[str, list[tuple[float, float]]]


def record_background(events: Intervals) -> None:
    """Time every monitor update, audit ingest and checkpoint, and garbage collection."""
    def timed(owner: Any, name: str, label: str) -> None:
        fn: Callable[..., Any] = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                events[label].append((began, time.perf_counter()))

        setattr(owner, name, wrapper)

    timed(_monitor_worker.MonitorWorker, "_update", "monitor update")
    timed(_audit_sqlite.SQLiteBackend, "_insert", "audit ingest")
    timed(_audit_sqlite.SQLiteBackend, "_checkpoint", "audit checkpoint")
    began: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            events[f"gc generation {info['generation']}"].append((began[0], time.perf_counter()))

    gc.callbacks.append(on_gc)


def report(sent: np.ndarray, latency: np.ndarray, events: Intervals) -> None:
    ended = sent + latency
    threshold = float(np.quantile(latency, 0.99))
    slow = latency > threshold
    print(f"{len(latency)} requests: p50 {1000 * np.median(latency):.3f} ms, p99 "
          f"{1000 * threshold:.3f} ms, p99.9 {1000 * np.quantile(latency, 0.999):.3f} ms\n")
    print("| background work | runs | ms each (p50 / max) | requests overlapping | their mean "
          "vs the others' | slow among them (base 1%) | slow requests overlapping |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    overlapped_any = np.zeros(len(latency), dtype=bool)
    for label, spans in sorted(events.items()):
        spans = [(a, b) for a, b in spans if b > sent[0]]
        if not spans:
            continue
        hit = np.zeros(len(latency), dtype=bool)
        for a, b in spans:
            hit |= (sent < b) & (ended > a)
        overlapped_any |= hit
        ms = 1000 * np.array([b - a for a, b in spans])
        excess = latency[hit].mean() / latency[~hit].mean() - 1 if hit.any() else 0.0
        print(f"| {label} | {len(spans)} | {np.median(ms):.2f} / {ms.max():.2f} | "
              f"{100 * hit.mean():.1f}% | {100 * excess:+.1f}% | "
              f"{100 * slow[hit].mean() if hit.any() else 0.0:.1f}% | "
              f"{100 * hit[slow].mean():.0f}% |")
    quiet = ~overlapped_any
    print(f"\nrequests overlapping no background work: {100 * quiet.mean():.0f}%, their p99 "
          f"{1000 * np.quantile(latency[quiet], 0.99):.3f} ms; slow requests among them: "
          f"{int((slow & quiet).sum())} of {int(slow.sum())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=["bare", "checks", "guard", "normal"],
                        default="normal")
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--external-monitors", choices=["nice", "idle"], default=None)
    parser.add_argument("--worker-nice", action="store_true",
                        help="the monitor worker at nice +10, not under SCHED_IDLE")
    args = parser.parse_args()
    if args.requests < 200:
        parser.error("--requests must be at least 200 (the p99 needs a tail)")
    if args.external_monitors and args.variant not in ("bare", "checks"):
        parser.error("--external-monitors needs a server without monitors (bare or checks)")
    if args.worker_nice:
        _monitor_worker.lower_this_thread = lambda **_: lower_this_thread()  # type: ignore
    torch.set_num_threads(1)
    events: Intervals = collections.defaultdict(list)
    record_background(events)
    demo = Demo.create(args.requests, 1)
    audit = AuditLog.open(demo.work / "audit.db") if args.variant == "normal" else None
    pipeline = demo.pipeline(guard=args.variant != "bare", monitors=args.variant != "checks",
                             audit=audit)
    external = None
    spans_file = demo.work / "external.txt"
    if args.external_monitors:
        external = subprocess.Popen(
            [sys.executable, "-c", _EXTERNAL, str(spans_file), args.external_monitors],
            stdout=subprocess.PIPE, text=True)
        assert external.stdout is not None
        external.stdout.readline()
    config = ServeConfig(rate_per_second=1e9, burst=10**9)
    try:
        with LiveServer(create_app(pipeline, KeyStore.load(demo.keys), config)) as url:
            client = subprocess.Popen([sys.executable, "-c", _TIMED_CLIENT, url.url, demo.key,
                                       str(demo.bodies), "1"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write("0 200\n")  # warm-up
            client.stdin.flush()
            client.stdout.readline()
            client.stdin.write(f"0 {args.requests}\n")
            client.stdin.flush()
            pairs = json.loads(client.stdout.readline())
            client.stdin.close()
            client.wait(30)
    finally:
        if external is not None:
            external.kill()
            external.wait()
    if external is not None:
        events["monitor update (other process)"] = [
            (float(a), float(b))
            for a, b in (line.split() for line in spans_file.read_text().split("\n") if line)]
    print(f"python benchmarks/serve_tail.py --variant {args.variant} --requests {args.requests}"
          + (" --worker-nice" if args.worker_nice else "")
          + (f" --external-monitors {args.external_monitors}" if external is not None else "")
          + f" — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    report(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]), events)


if __name__ == "__main__":
    main()
