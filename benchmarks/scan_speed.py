"""How fast ``scan_file`` checks a large torch checkpoint, next to other pickle scanners.

Builds a >= 1 GB torch zip checkpoint (a state dict of a few big float tensors, written from
``torch.empty`` so it costs only the disk write), times ``bastion.artifacts.scan.scan_file`` on
it (with and without the whole-file SHA-256), and the CLIs of picklescan, modelscan and
fickling when they can be found (``--peers-bin DIR`` points at a venv's ``bin`` with them;
otherwise the current environment is searched). Prints best/median seconds, GB/s (file size
over time: only the pickle and the zip directory are read, so this can exceed disk speed) and
each tool's time relative to bastion's API call (CLI rows include
interpreter start-up). The file is deleted afterwards.

Usage: python benchmarks/scan_speed.py [--dir DIR] [--gb 1.0] [--repeat 5] [--peers-bin DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bastion.artifacts.scan import Verdict, scan_file


def build_checkpoint(path: Path, gigabytes: float) -> int:
    """Write a state dict of 16 float32 tensors totalling ``gigabytes``; return the file size."""
    per_tensor = int(gigabytes * 1e9 / 4 / 16) + 1
    state = {f"layer{i}.weight": torch.empty(per_tensor, dtype=torch.float32)
             for i in range(16)}
    for tensor in state.values():
        tensor.zero_()  # deterministic bytes, no page faults while saving
    torch.save(state, path)
    return path.stat().st_size


def _time(fn: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _peer_commands(path: Path, peers_bin: Path | None) -> dict[str, list[str] | None]:
    def find(name: str) -> str | None:
        if peers_bin is not None and (peers_bin / name).exists():
            return str(peers_bin / name)
        return shutil.which(name)

    exe = {name: find(name) for name in ("picklescan", "modelscan", "fickling")}
    return {
        "picklescan": [exe["picklescan"], "--path", str(path)] if exe["picklescan"] else None,
        "modelscan": [exe["modelscan"], "-p", str(path)] if exe["modelscan"] else None,
        "fickling": [exe["fickling"], "--check-safety", str(path)] if exe["fickling"] else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write the checkpoint")
    parser.add_argument("--gb", type=float, default=1.0, help="checkpoint size in GB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--peers-bin", type=Path, default=None)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(dir=args.dir, prefix="bastion-scan-bench-"))
    path = workdir / "big.pt"
    try:
        start = time.perf_counter()
        size = build_checkpoint(path, args.gb)
        print(f"checkpoint: {size / 1e9:.2f} GB written in {time.perf_counter() - start:.1f} s")
        report = scan_file(path, digest=False)
        assert report.verdict is Verdict.SAFE, report.problems
        rows: list[tuple[str, list[float] | None, str]] = [
            ("bastion scan_file (no digest)",
             _time(lambda: scan_file(path, digest=False), args.repeat), ""),
            ("bastion scan_file (+sha256)",
             _time(lambda: scan_file(path), max(1, args.repeat // 2)), ""),
        ]
        commands = {"bastion": [str(Path(sys.executable).parent / "bastion"), "scan", str(path)],
                    **_peer_commands(path, args.peers_bin)}
        for name, cmd in commands.items():
            if cmd is None:
                rows.append((name, None, "not installed"))
                continue
            probe = subprocess.run(cmd, capture_output=True, text=True, check=False)
            note = f"exit {probe.returncode}"
            times = _time(lambda c=cmd: subprocess.run(c, capture_output=True, check=False),
                          max(1, args.repeat // 2))
            rows.append((f"{name} (CLI)", times, note))
        base = min(rows[0][1] or [1.0])
        print(f"{'tool':32} {'best s':>8} {'median s':>9} {'GB/s':>8} {'x bastion':>10}  note")
        for name, times, note in rows:
            if times is None:
                print(f"{name:32} {'-':>8} {'-':>9} {'-':>8} {'-':>10}  {note}")
                continue
            best, median = min(times), statistics.median(times)
            print(f"{name:32} {best:8.4f} {median:9.4f} {size / best / 1e9:8.1f} "
                  f"{best / base:10.1f}  {note}")
        print(f"python {sys.version.split()[0]}, torch {torch.__version__}, "
              f"{os.cpu_count()} CPUs, {os.uname().machine}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
