"""``bastion convert``: turn a pickle checkpoint into safetensors, the format with no code in it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from bastion.artifacts._flatten import flatten_tensors
from bastion.artifacts.isolate import IsolationLimits, load_isolated
from bastion.artifacts.load import load_bytes, read_verified
from bastion.artifacts.scan import ScanLimits, Verdict, scan_bytes
from bastion.artifacts.scan.policy import DEFAULT_POLICY, Policy
from bastion.core.atomic import atomic_write_bytes
from bastion.core.errors import ConfigurationError, UnsafeArtifactError
from bastion.core.results import Result

__all__ = ["ConversionResult", "convert"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConversionResult(Result):
    """What ``convert`` wrote.

    Attributes:
        source: the checkpoint read.
        output: the safetensors file written.
        mode: ``restricted`` (in-process restricted unpickler) or ``isolated`` (child process).
        verdict: the scan verdict of the source.
        tensors: number of tensors written.
        nbytes: their total size in bytes.
        sha256: digest of the written file.
        skipped: entries that are not tensors or plain scalars and were left out.
    """

    source: str
    output: str
    mode: str
    verdict: str
    tensors: int
    nbytes: int
    sha256: str
    skipped: tuple[str, ...] = ()


def convert(
    source: str | Path,
    output: str | Path,
    *,
    isolated: bool = False,
    policy: Policy | None = None,
    signature: str | Path | None = None,
    public_keys: str | Path | Sequence[str | Path] | None = None,
    sha256: str | None = None,
    limits: IsolationLimits | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert ``source`` (torch, pickle, joblib, npy/npz) to a safetensors file at ``output``.

    Files that scan ``safe`` are read with the restricted unpickler of :func:`bastion.load`.
    Files that scan ``unknown`` (e.g. a checkpoint of your own classes) are refused unless
    ``isolated=True``, which unpickles them in a resource-limited child process and takes back
    only tensors. Files that scan ``unsafe`` are always refused. Plain scalars (epoch, step, ...)
    are kept as JSON in the safetensors metadata under ``bastion.extra``.

    Raises:
        UnsafeArtifactError: the source is unsafe, or unknown without ``isolated``.
        ConfigurationError: bad paths (existing output without ``overwrite``, ...).

    Example:
        >>> import torch, tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> torch.save({"w": torch.ones(2), "epoch": 3}, d / "ckpt.pt")
        >>> convert(d / "ckpt.pt", d / "ckpt.safetensors").tensors
        1
    """
    from safetensors.torch import save

    source, output = Path(source), Path(output)
    if output.suffix != ".safetensors":
        raise ConfigurationError(f"output {output} should end in .safetensors")
    if output.exists() and not overwrite:
        raise ConfigurationError(f"{output} exists; pass overwrite=True (--force) to replace it")
    if output.resolve() == source.resolve():
        raise ConfigurationError("output must differ from the source")
    policy = policy or DEFAULT_POLICY
    data = read_verified(source, signature=signature, public_keys=public_keys, sha256=sha256)
    report = scan_bytes(data, path=str(source), policy=policy, limits=ScanLimits())
    if report.verdict is Verdict.SAFE:
        tensors, metadata, skipped = flatten_tensors(
            load_bytes(data, path=str(source), policy=policy)
        )
        mode = "restricted"
    elif report.verdict is Verdict.UNKNOWN and isolated:
        tensors, metadata = load_isolated(data, report.format, limits=limits or IsolationLimits())
        skipped = json.loads(metadata.pop("bastion.skipped", "[]"))
        mode = "isolated"
    else:
        hint = (
            "it imports something dangerous; it is never loaded, isolated or not"
            if report.verdict is Verdict.UNSAFE
            else "it imports globals outside the allowlist; allow them (--allow) if you trust "
            "them, or convert it with --isolated"
        )
        raise UnsafeArtifactError(
            f"{source}: scan verdict is {report.verdict.value}: {hint}",
            path=source,
            findings=report.problems,
        )
    if not tensors:
        raise UnsafeArtifactError(f"{source} holds no tensors to convert", path=source)
    metadata = {**metadata, "bastion.source_sha256": hashlib.sha256(data).hexdigest()}
    blob = save(tensors, metadata=metadata)
    atomic_write_bytes(output, blob)
    return ConversionResult(
        source=str(source),
        output=str(output),
        mode=mode,
        verdict=report.verdict.value,
        tensors=len(tensors),
        nbytes=sum(t.numel() * t.element_size() for t in tensors.values()),
        sha256=hashlib.sha256(blob).hexdigest(),
        skipped=tuple(skipped),
    )
