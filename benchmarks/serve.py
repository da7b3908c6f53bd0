"""Guard overhead of ``bastion serve``: requests/s and p50/p99 latency, guarded vs bare model.

Every variant runs behind the same app (auth, limits, metrics) on loopback with the same request
bodies: "bare" is the model alone; "guard, no audit log" adds the input guard (schema + policy),
the output checks and the four default monitors (fed off the request path); the two "guarded"
rows add the SQLite audit log, with ``synchronous=NORMAL`` (the default: every acknowledged
request survives the server being killed) and ``FULL`` (``--audit-sync full``: an fsync per
append, so they survive power loss too). FULL minus NORMAL is the fsync's share; the raw fsync
latency of the disk is timed on its own too.

On a shared machine the host's speed moves by tens of percent within seconds, so the variants
are measured in interleaved rounds (all servers stay up; each round sends ``--chunk`` requests
to each variant in turn, starting one variant later each round, so that no variant always
follows the same one). The overhead is the ratio of a variant's p50 (p99) over all its requests
to the bare model's, with a 95% bootstrap interval from resampling the rounds (paired: the same
rounds for both). Short rounds (the default ``--chunk 20``, ~0.05 s per variant at batch 1)
pair the variants closely in time. All servers share this process: a variant's background work
(a monitor update every half second, an audit ingest every tenth) that fires during another
variant's turn is charged to that one; with the monitor worker under ``SCHED_IDLE`` this is
small (requests that overlap any background work: ~7% of them, ~5% slower on average, about
0.4% of the mean). Long rounds (``--chunk 1200``, ~3 s per variant) charge the background work
where it belongs, but the host moves between them. ``--variants`` picks which
variants to compare (fewer make the rounds shorter). The servers' CPU time per request (all
their threads, monitors included; the clients run elsewhere) is reported too: it moves far less
with the load than latency does. Clients run in processes of their own, one per variant for the
whole run (``--clients N``: N concurrent keep-alive clients), as real clients do; the servers
run the default number of inference threads (``--workers``: 2, as ``bastion serve``); req/s is
requests over the clients' busy time. Bounded: ``--requests`` per variant, loopback only.

    python benchmarks/serve.py --requests 1000 --batch 1 [--clients 8] [--workers 2] [--chunk 20]
        [--variants guard,normal,full] [--split]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))
from bastion.data import load_mnist5k  # noqa: E402
from bastion.guard.audit_log import AuditLog  # noqa: E402
from bastion.guard.outputs import OutputChecker  # noqa: E402
from bastion.guard.policy import InputGuard  # noqa: E402
from bastion.guard.schema import TensorSchema  # noqa: E402
from bastion.serve import KeyStore, Pipeline, ServeConfig, create_app, create_key  # noqa: E402
from bastion.serve._stages import default_monitors  # noqa: E402
from bastion.serve.build import ModelSpec, load_model  # noqa: E402
from conftest import LiveServer  # noqa: E402

_CLIENT = r"""
import concurrent.futures, json, socket, sys, time
import httpx
url, key, path, clients = sys.argv[1:5]
bodies = open(path, "rb").read().split(b"\n")
headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
nodelay = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
n = int(clients)
sessions = [httpx.Client(base_url=url, headers=headers, transport=nodelay) for _ in range(n)]
def run(client, part):
    out = []
    for body in part:
        t = time.perf_counter()
        r = client.post("/v1/predict", content=body)
        out.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    return out
with concurrent.futures.ThreadPoolExecutor(n) as pool:
    for line in sys.stdin:  # "start stop": send those bodies, answer their latencies
        start, stop = map(int, line.split())
        parts = [bodies[start:stop][i::n] for i in range(n)]
        got = pool.map(run, sessions, parts)
        print(json.dumps([t for part in got for t in part]), flush=True)
"""


class Client:
    """``clients`` keep-alive clients in a process of their own (a client in the server's
    process would compete with it for the interpreter lock, which no real client does), kept
    for the whole run: each :meth:`send` reuses its connections."""

    def __init__(self, url: str, key: str, bodies: Path, clients: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CLIENT, url, key, str(bodies), str(clients)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def send(self, start: int, stop: int) -> list[float]:
        """Latencies (s) of the request bodies ``start:stop`` (lines of the bodies file)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{start} {stop}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the client process failed (exit {self.process.wait()})")
        latencies: list[float] = json.loads(line)
        return latencies

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


def pooled_ratios(
    rounds: list[np.ndarray], base: list[np.ndarray], quantiles: tuple[float, ...] = (0.5, 0.99),
    resamples: int = 1000, seed: int = 0,
) -> list[tuple[float, float, float]]:
    """Each quantile of all of a variant's latencies over the bare model's, minus 1, with a 95%
    bootstrap interval: the rounds are resampled, the same ones for both (they are pairs)."""
    def ratio(idx: np.ndarray | None) -> np.ndarray:
        pick = range(len(rounds)) if idx is None else idx
        mine = np.concatenate([rounds[i] for i in pick])
        bare = np.concatenate([base[i] for i in pick])
        return np.quantile(mine, quantiles) / np.quantile(bare, quantiles) - 1

    rng = np.random.default_rng(seed)
    draws = np.array([ratio(rng.integers(0, len(rounds), len(rounds)))
                      for _ in range(resamples)])
    point = ratio(None)
    low, high = np.quantile(draws, [0.025, 0.975], axis=0)
    return [(float(point[k]), float(low[k]), float(high[k])) for k in range(len(quantiles))]


class TimedAuditLog(AuditLog):
    """The audit log, timing each append (the id check and the pending-file write, with its
    fsync under FULL; the SQLite inserts run later, off the request path; the row is encoded
    before, when the server assembles it)."""

    def __init__(self, path: Path, synchronous: str) -> None:
        super().__init__(AuditLog.open(path, synchronous=synchronous)._backend)
        self.seconds: list[float] = []
        write = self._backend.append

        def timed(*row: object, **how: bool) -> None:  # every append path ends here
            began = time.perf_counter()
            write(*row, **how)
            self.seconds.append(time.perf_counter() - began)

        self._backend.append = timed


def fsync_ms(directory: Path, repeats: int = 200) -> tuple[float, float]:
    """p50 and p99 (ms) of one small write + fsync in ``directory`` (the disk's part of FULL)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(repeats):
            os.write(fd, b"x" * 512)
            t = time.perf_counter()
            os.fsync(fd)
            times.append(1000 * (time.perf_counter() - t))
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


@dataclasses.dataclass
class Demo:
    """The demo model, its schema and reference, an API key and the request bodies, in ``work``:
    what every serve benchmark sets up the same way."""

    work: Path
    model: torch.nn.Module
    schema: TensorSchema
    reference: torch.Tensor
    reference_logits: torch.Tensor
    traffic: torch.Tensor
    key: str
    keys: Path
    bodies: Path

    @classmethod
    def create(cls, requests: int, batch: int) -> Demo:
        """The demo, and ``requests`` bodies of ``batch`` MNIST training samples each."""
        data = load_mnist5k()
        model = load_model(ModelSpec.parse("demo"))
        with torch.no_grad():
            ref_logits = model(data.x_test)
        work = Path(tempfile.mkdtemp())
        keys = work / "keys.json"
        key = create_key(keys, "bench")
        x = data.x_train
        bodies = work / "bodies.jsonl"
        bodies.write_bytes(b"\n".join(
            ('{"inputs": ' + str(x[i * batch % 3900:][:batch].tolist()) + "}").encode()
            for i in range(requests)))
        return cls(work=work, model=model,
                   schema=TensorSchema.infer(data.x_train, bounds=(0.0, 1.0)),
                   reference=data.x_test, reference_logits=ref_logits, traffic=x, key=key,
                   keys=keys, bodies=bodies)

    def pipeline(self, *, guard: bool = True, monitors: bool = True,
                 audit: AuditLog | None = None) -> Pipeline:
        """The bare model (``guard=False``), or guarded: schema, output checks, the default
        monitors (unless ``monitors=False``) and ``audit``."""
        if not guard:
            return Pipeline(model=self.model, schema=self.schema)
        suite = default_monitors(self.reference, self.reference_logits) if monitors else None
        return Pipeline(model=self.model, schema=self.schema, guard=InputGuard(self.schema),
                        output_checker=OutputChecker(10), monitors=suite, audit=audit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="per variant")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--workers", type=int, default=ServeConfig().workers,
                        help="inference threads (default: the server's default)")
    parser.add_argument("--chunk", type=int, default=20, help="requests per variant per round")
    parser.add_argument("--split", action="store_true",
                        help="add a variant without monitors (the monitors' share)")
    parser.add_argument("--variants", default="guard,normal,full",
                        help="compared with the bare model, from checks (schema and output "
                        "checks), guard (no audit log), normal, full (the audit log's modes); "
                        "fewer variants make the rounds shorter, so the host moves less "
                        "within one")
    args = parser.parse_args()
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.split and "checks" not in chosen:
        chosen.insert(0, "checks")
    unknown = set(chosen) - {"checks", "guard", "normal", "full"}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    torch.set_num_threads(1)
    demo = Demo.create(args.requests, args.batch)
    logs: dict[str, TimedAuditLog] = {}

    def guarded(sync: str | None, monitors: bool = True) -> Callable[[], Pipeline]:
        def make() -> Pipeline:
            if sync is not None:
                logs[sync] = TimedAuditLog(demo.work / f"audit-{sync}.db", sync)
            return demo.pipeline(monitors=monitors, audit=logs.get(sync) if sync else None)
        return make

    available: dict[str, tuple[str, Callable[[], Pipeline]]] = {
        "checks": ("schema and output checks only", guarded(None, monitors=False)),
        "guard": ("guard (schema, output checks, 4 monitors), no audit log", guarded(None)),
        "normal": ("guarded, audit `synchronous=NORMAL` (default: survives kill -9)",
                   guarded("NORMAL")),
        "full": ("guarded, audit `synchronous=FULL` (opt-in: fsync, survives power loss)",
                 guarded("FULL")),
    }
    variants: dict[str, Callable[[], Pipeline]] = {
        "bare model": lambda: demo.pipeline(guard=False),
    }
    for short in [v for v in available if v in chosen]:
        label, make = available[short]
        variants[label] = make
    config = ServeConfig(rate_per_second=1e9, burst=10**9, workers=args.workers)
    load_before = os.getloadavg()
    latencies: dict[str, list[float]] = {name: [] for name in variants}
    round_lat: dict[str, list[np.ndarray]] = {name: [] for name in variants}
    seconds: dict[str, float] = dict.fromkeys(variants, 0.0)
    cpu_s: dict[str, float] = dict.fromkeys(variants, 0.0)
    with contextlib.ExitStack() as stack:
        clients = {}
        for name, make in variants.items():
            url = stack.enter_context(LiveServer(create_app(make(), KeyStore.load(demo.keys),
                                                            config))).url
            clients[name] = Client(url, demo.key, demo.bodies, args.clients)
            stack.callback(clients[name].close)
        for client in clients.values():  # warm-up: connections, first allocations, monitors
            client.send(0, 20)
        names = list(clients)
        for turn, start in enumerate(range(0, args.requests, args.chunk)):
            stop = min(start + args.chunk, args.requests)
            shift = turn % len(names)  # rotate: each variant follows each other one in turn
            for name in names[shift:] + names[:shift]:
                cpu = time.process_time()  # the servers' threads (the clients are elsewhere)
                got = clients[name].send(start, stop)
                cpu_s[name] += time.process_time() - cpu
                seconds[name] += sum(got) / args.clients  # busy time
                latencies[name] += got
                round_lat[name].append(np.asarray(got))
    load_after = os.getloadavg()
    fsync_p50, fsync_p99 = fsync_ms(demo.work)
    suite = default_monitors(demo.reference, demo.reference_logits)
    batch = demo.traffic[:50]
    with torch.no_grad():
        logits = demo.model(batch)
    for _ in range(5):
        suite.update(batch, logits)
    t = time.perf_counter()
    for _ in range(40):
        suite.update(batch, logits)
    per_sample_us = 1e6 * (time.perf_counter() - t) / (40 * len(batch))

    rounds = len(round_lat["bare model"])
    print(f"python benchmarks/serve.py --requests {args.requests} --batch {args.batch} "
          f"--clients {args.clients} --workers {args.workers} --chunk {args.chunk} "
          f"--variants {','.join(chosen)} — "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, 1 torch thread, {args.clients} "
          f"client(s) on loopback; {rounds} interleaved rounds; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
    print("| variant | batch | clients | req/s | p50 ms | p99 ms | p50 vs bare [95%] "
          "| p99 vs bare [95%] | server CPU ms/request | CPU vs bare |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base_cpu = cpu_s["bare model"] / len(latencies["bare model"])
    for name, lat in latencies.items():
        lat.sort()
        cpu = cpu_s[name] / len(lat)
        if name == "bare model":
            vs = tail_vs = cpu_vs = "—"
        else:
            (p50, p50_low, p50_high), (p99, p99_low, p99_high) = pooled_ratios(
                round_lat[name], round_lat["bare model"])
            vs = f"{100 * p50:+.1f}% [{100 * p50_low:+.1f}, {100 * p50_high:+.1f}]"
            tail_vs = f"{100 * p99:+.1f}% [{100 * p99_low:+.1f}, {100 * p99_high:+.1f}]"
            cpu_vs = f"{100 * (cpu / base_cpu - 1):+.0f}%"
        print(f"| {name} | {args.batch} | {args.clients} | {len(lat) / seconds[name]:.0f} | "
              f"{1000 * statistics.median(lat):.2f} | "
              f"{1000 * lat[int(0.99 * (len(lat) - 1))]:.2f} | {vs} | {tail_vs} | "
              f"{1000 * cpu:.2f} | {cpu_vs} |")
    appends = {sync: sorted(log.seconds) for sync, log in logs.items()}
    print("\naudit row append inside the server (id check + pending-file write): " + "; ".join(
        f"{sync} p50 {1000 * statistics.median(t):.2f} ms, p99 "
        f"{1000 * t[int(0.99 * (len(t) - 1))]:.2f} ms" for sync, t in appends.items()))
    print(f"fsync of a 512-byte append in the audit log's directory, after the run: p50 "
          f"{fsync_p50:.2f} ms, p99 {fsync_p99:.2f} ms")
    print(f"monitor update (4 default monitors, window 200, batches of 50): "
          f"{per_sample_us:.1f} µs per sample")


if __name__ == "__main__":
    main()
