"""Load an untrusted-but-not-dangerous checkpoint in a child process with resource limits.

For files that scan ``unknown`` (a user's own classes, say), a restricted load is impossible by
definition. ``load_isolated`` runs the ordinary loader in a child process that has: a CPU-time
limit, an address-space limit, a zero file-size limit (``RLIMIT_FSIZE`` = 0: a payload cannot
write *data* into a file), no core dumps, a scrubbed environment (no inherited secrets, tokens
or credentials) and an empty temporary working directory. Only tensors come back, as
safetensors bytes parsed by the safetensors library. Files that scan ``unsafe`` are never run,
isolated or not.

This is resource isolation, not a sandbox. Code in the file runs with the user's full
permissions, so the child can still: create empty files and directories, delete, rename and
truncate files, change permissions, read any file the user can read, open network connections
(and send what it read), and start other programs (which inherit the same limits). Use it only
for files whose author you trust but whose classes bastion cannot check; for hostile files,
run bastion itself inside a container or VM without network and with a read-only file system.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bastion.core.errors import ArtifactError, ConfigurationError, UnsafeArtifactError

__all__ = ["IsolationLimits", "load_isolated"]


_MAX_CPU_SECONDS = 86_400


@dataclasses.dataclass(frozen=True, kw_only=True)
class IsolationLimits:
    """Limits for the child process.

    Attributes:
        cpu_seconds: CPU time before the child is killed.
        memory_bytes: address-space limit (``None``: 4 GiB plus 8 times the file size).
        max_output_bytes: the most tensor bytes accepted back.
    """

    cpu_seconds: int = 120
    memory_bytes: int | None = None
    max_output_bytes: int = 16 << 30

    def __post_init__(self) -> None:
        if isinstance(self.cpu_seconds, bool) or not isinstance(self.cpu_seconds, int) or not (
                0 < self.cpu_seconds <= _MAX_CPU_SECONDS):  # setrlimit overflows far above
            raise ConfigurationError(f"cpu_seconds must be an integer from 1 to "
                                     f"{_MAX_CPU_SECONDS} (a day), got {self.cpu_seconds!r}")
        if self.memory_bytes is not None and self.memory_bytes < 1 << 30:
            raise ConfigurationError("memory_bytes below 1 GiB cannot even import torch")


# The child needs the parent's import path (the user's own classes live there) but nothing from
# its environment, so the path travels as an argument and -E ignores PYTHON* variables.
_BOOTSTRAP = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1])['sys_path']; "
    "from bastion.artifacts._isolated_worker import main; main()"
)


def _limit(cpu: int, memory: int) -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead


def load_isolated(
    data: bytes, fmt: str, *, limits: IsolationLimits | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Unpickle ``data`` (format ``fmt``) in a limited child; return its tensors and metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    limits = limits or IsolationLimits()
    memory = limits.memory_bytes or (4 << 30) + 8 * len(data)
    with tempfile.TemporaryDirectory(prefix="bastion-isolated-") as tmp:
        source = Path(tmp) / "input.bin"
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        workdir = Path(tmp) / "cwd"
        workdir.mkdir()
        config = {"input": str(source), "format": fmt, "sys_path": [p for p in sys.path if p]}
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "OMP_NUM_THREADS": "1",
            "LANG": "C.UTF-8",
        }
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-E", "-s", "-B", "-c", _BOOTSTRAP, json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            start_new_session=True,
            preexec_fn=lambda: _limit(limits.cpu_seconds, memory),  # noqa: PLW0108
        )
        try:
            out, err = proc.communicate(timeout=limits.cpu_seconds * 2 + 60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise ArtifactError("isolated load timed out and was killed") from None
    if proc.returncode != 0:
        reason = _describe_exit(proc.returncode, err.decode("utf-8", "replace"))
        raise ArtifactError(f"isolated load failed: {reason}")
    if len(out) > limits.max_output_bytes:
        raise UnsafeArtifactError(
            f"isolated load returned {len(out)} bytes, over the limit of {limits.max_output_bytes}"
        )
    try:
        tensors = load_safetensors(out)
        header_len = int.from_bytes(out[:8], "little")
        metadata = json.loads(out[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise UnsafeArtifactError(f"isolated load returned malformed data: {exc}") from None
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _describe_exit(code: int, stderr: str) -> str:
    if code == -signal.SIGXCPU or code == -signal.SIGKILL:
        return "it exceeded its CPU time limit and was killed"
    if "MemoryError" in stderr or code == -signal.SIGSEGV:
        return "it exceeded its memory limit"
    last = [line for line in stderr.strip().splitlines() if line.strip()]
    return last[-1] if last else f"exit status {code}"
