"""Guard overhead of ``bastion serve``: requests/s and p50/p99 latency, guarded vs bare model.

Both variants run behind the same app (auth, limits, metrics) on loopback, one after the other,
with the same request bodies. "guarded" adds the input guard (schema + policy), output checks,
the four default monitors (fed off the request path, window re-tested every 20 samples) and the
durable SQLite audit log (synchronous=FULL: an fsync per commit, shared by concurrent requests);
"guard without audit" isolates the audit log's share, "synchronous=NORMAL" shows the opt-in
setting without the fsync; "bare" is the model alone. ``--clients N`` runs N concurrent clients.
The monitor update cost per sample is timed in-process. Bounded: ``--requests`` per variant,
loopback only.

    python benchmarks/serve.py --requests 400 --batch 1 [--clients 8]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
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


def measure(
    pipeline: Pipeline, keys: Path, key: str, bodies: list[bytes], clients: int = 1
) -> dict[str, float]:
    config = ServeConfig(rate_per_second=1e9, burst=10**9, workers=max(1, clients))
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    with LiveServer(create_app(pipeline, KeyStore.load(keys), config)) as live:

        def client_run(part: list[bytes]) -> list[float]:
            nodelay = httpx.HTTPTransport(
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
            out = []
            with httpx.Client(base_url=live.url, headers=headers, transport=nodelay) as client:
                for body in part[:5]:  # warm-up
                    client.post("/v1/predict", content=body)
                for body in part:
                    t = time.perf_counter()
                    r = client.post("/v1/predict", content=body)
                    out.append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
            return out

        parts = [bodies[i::clients] for i in range(clients)]
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            latencies = [t for part in pool.map(client_run, parts) for t in part]
        total = time.perf_counter() - start
    latencies.sort()
    return {
        "rps": len(latencies) / total,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_mnist5k()
    model = load_model(ModelSpec.parse("demo"))
    schema = TensorSchema.infer(data.x_train, bounds=(0.0, 1.0))
    with torch.no_grad():
        ref_logits = model(data.x_test)
    x = data.x_train
    bodies = [
        ('{"inputs": ' + str(x[i * args.batch % 3900:][: args.batch].tolist()) + "}").encode()
        for i in range(args.requests)
    ]
    work = Path(tempfile.mkdtemp())
    keys = work / "keys.json"
    key = create_key(keys, "bench")

    def guarded(sync: str | None) -> Pipeline:
        db = work / f"audit-{time.time_ns()}.db"
        return Pipeline(model=model, schema=schema, guard=InputGuard(schema),
                        output_checker=OutputChecker(10),
                        monitors=default_monitors(data.x_test, ref_logits),
                        audit=None if sync is None else AuditLog.open(db, synchronous=sync))

    rows: dict[str, dict[str, float]] = {}
    for name, make in [("bare", lambda: Pipeline(model=model, schema=schema)),
                       ("guard without audit", lambda: guarded(None)),
                       ("guarded, audit synchronous=NORMAL", lambda: guarded("NORMAL")),
                       ("guarded, audit synchronous=FULL (default)", lambda: guarded("FULL"))]:
        rows[name] = measure(make(), keys, key, bodies, args.clients)
    suite = default_monitors(data.x_test, ref_logits)
    batch = x[: 50]
    with torch.no_grad():
        logits = model(batch)
    for _ in range(5):
        suite.update(batch, logits)
    t = time.perf_counter()
    for _ in range(40):
        suite.update(batch, logits)
    per_sample_us = 1e6 * (time.perf_counter() - t) / (40 * len(batch))

    print(f"python benchmarks/serve.py --requests {args.requests} --batch {args.batch} "
          f"--clients {args.clients} — "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, "
          f"torch {torch.__version__}, 1 torch thread, {args.clients} client(s) on loopback\n")
    print("| variant | req/s | p50 ms | p99 ms | p50 vs bare |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = rows["bare"]["p50_ms"]
    for name, r in rows.items():
        print(f"| {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{100 * (r['p50_ms'] / base - 1):+.0f}% |")
    print(f"\nmonitor update (4 default monitors, window 200, batches of 50): "
          f"{per_sample_us:.1f} µs per sample")


if __name__ == "__main__":
    main()
