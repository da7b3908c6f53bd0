"""The "Model file" section of an audit: scan, signature, integrity and a trial safe load."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bastion.artifacts.load import load_bytes, read_once
from bastion.artifacts.scan import ScanLimits, Verdict, scan_bytes
from bastion.artifacts.scan.findings import Finding
from bastion.artifacts.scan.policy import Policy
from bastion.core.errors import ArtifactError, BastionError
from bastion.core.results import Result

__all__ = ["CheckStatus", "ModelFileAudit", "ModelFileSection", "audit_model_file"]


class CheckStatus(enum.Enum):
    """Outcome of one check; the worst one decides the section's status."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIPPED = "skipped"

    @staticmethod
    def worst(statuses: Sequence[CheckStatus]) -> CheckStatus:
        order = [CheckStatus.SKIPPED, CheckStatus.PASS, CheckStatus.WARN, CheckStatus.FAIL]
        return max(statuses, key=order.index, default=CheckStatus.SKIPPED)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Check(Result):
    """One named check with its status and a sentence about it."""

    name: str
    status: CheckStatus
    detail: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelFileAudit(Result):
    """Everything the audit found out about one model file.

    Attributes:
        path: the file.
        format: what its bytes are (by magic, not by name).
        size: bytes.
        sha256: digest of the bytes that every check below looked at (read once).
        verdict: the scan verdict.
        findings: the scan's problems (warnings and critical findings).
        checks: signature, scan and trial-load results.
        tensors: number of tensors in the file, when it could be loaded.
    """

    path: str
    format: str
    size: int
    sha256: str
    verdict: str
    findings: tuple[Finding, ...]
    checks: tuple[Check, ...]
    tensors: int | None = None

    @property
    def status(self) -> CheckStatus:
        return CheckStatus.worst([c.status for c in self.checks])

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["status"] = self.status.value
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelFileSection(Result):
    """The "Model file" section: one entry per audited file, plus advice."""

    title: str = "Model file"
    files: tuple[ModelFileAudit, ...]
    advice: tuple[str, ...] = ()

    @property
    def status(self) -> CheckStatus:
        return CheckStatus.worst([f.status for f in self.files])

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["status"] = self.status.value
        return out


def audit_model_file(
    path: str | Path,
    *,
    policy: Policy,
    signature: str | Path | None = None,
    public_keys: str | Path | Sequence[str | Path] | None = None,
    sha256: str | None = None,
) -> ModelFileAudit:
    """Audit one model file: every check runs on the same bytes, read once."""
    path = Path(path)
    data = read_once(path)
    digest = hashlib.sha256(data).hexdigest()
    checks: list[Check] = []
    checks.append(_integrity_check(path, data, digest, signature, public_keys, sha256))
    report = scan_bytes(data, path=str(path), policy=policy, limits=ScanLimits())
    verdict = report.verdict
    scan_status = {
        Verdict.SAFE: CheckStatus.PASS,
        Verdict.UNKNOWN: CheckStatus.WARN,
        Verdict.UNSAFE: CheckStatus.FAIL,
    }[verdict]
    problems = report.problems
    checks.append(
        Check(
            name="scan",
            status=scan_status,
            detail=f"{verdict.value} under policy {policy.name!r}"
            + (f"; {len(problems)} finding(s)" if problems else "; no code, nothing unknown"),
        )
    )
    tensors: int | None = None
    if verdict is Verdict.SAFE:
        try:
            obj = load_bytes(data, path=str(path), policy=policy)
            tensors = _count_tensors(obj)
            checks.append(Check(name="safe load", status=CheckStatus.PASS,
                                detail=f"restricted load succeeded: {tensors} tensor(s)"))
        except BastionError as exc:
            checks.append(Check(name="safe load", status=CheckStatus.FAIL, detail=str(exc)))
    else:
        checks.append(Check(name="safe load", status=CheckStatus.SKIPPED,
                            detail="not attempted: the scan did not say safe"))
    return ModelFileAudit(
        path=str(path),
        format=report.format,
        size=len(data),
        sha256=digest,
        verdict=verdict.value,
        findings=problems,
        checks=tuple(checks),
        tensors=tensors,
    )


def _integrity_check(
    path: Path,
    data: bytes,
    digest: str,
    signature: str | Path | None,
    public_keys: str | Path | Sequence[str | Path] | None,
    sha256: str | None,
) -> Check:
    if sha256 is not None and sha256.strip().lower() != digest:
        return Check(name="integrity", status=CheckStatus.FAIL,
                     detail=f"SHA-256 is {digest}, expected {sha256.strip().lower()}")
    if signature is None:
        if sha256 is not None:
            return Check(name="integrity", status=CheckStatus.PASS, detail="SHA-256 matches")
        return Check(name="signature", status=CheckStatus.WARN,
                     detail="unsigned: sign it with `bastion sign` and verify before loading")
    if public_keys is None:
        return Check(name="signature", status=CheckStatus.FAIL,
                     detail="a signature was given without trusted public keys")
    from bastion.artifacts.verify import check_bytes_digest, read_signed_digests

    try:
        manifest = read_signed_digests(signature, public_keys)
        check_bytes_digest(manifest, path.name, data)
    except ArtifactError as exc:
        return Check(name="signature", status=CheckStatus.FAIL, detail=str(exc))
    return Check(name="signature", status=CheckStatus.PASS,
                 detail=f"verified with trusted key {Path(manifest.key).name}")


def _count_tensors(obj: Any) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return 1
    if isinstance(obj, dict):
        return sum(_count_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_count_tensors(v) for v in obj)
    return 0
