"""What a scan reports: findings per file, a verdict per file, a summary per run."""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from typing import Any

from bastion.core.results import Result

__all__ = ["FileReport", "Finding", "ScanReport", "Severity", "Verdict"]


class Severity(enum.IntEnum):
    """Ordered: the worst severity of a file's findings decides its verdict."""

    INFO = 0  # an import on the allowlist, a note
    WARNING = 1  # outside the allowlist, or not fully readable: the file is not known safe
    CRITICAL = 2  # can run code, or hides content from scanners: the file is unsafe

    def __str__(self) -> str:
        return self.name.lower()


class Verdict(enum.Enum):
    SAFE = "safe"
    UNKNOWN = "unknown"
    UNSAFE = "unsafe"

    @staticmethod
    def from_severity(worst: Severity | None) -> Verdict:
        if worst is None or worst is Severity.INFO:
            return Verdict.SAFE
        return Verdict.UNKNOWN if worst is Severity.WARNING else Verdict.UNSAFE


@dataclasses.dataclass(frozen=True, kw_only=True)
class Finding:
    """One observation about a file.

    Attributes:
        severity: how much it matters.
        kind: a stable rule id, e.g. ``dangerous-import``, ``unknown-import``, ``parse-error``.
        module: the imported module, for import findings.
        name: the imported name, for import findings.
        detail: a sentence a person can act on.
        location: where: ``member.pkl@offset`` style path into the container.
    """

    severity: Severity
    kind: str
    detail: str
    location: str
    module: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": str(self.severity),
            "kind": self.kind,
            "module": self.module,
            "name": self.name,
            "detail": self.detail,
            "location": self.location,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileReport(Result):
    """The scan of one file.

    Attributes:
        path: the file as given.
        format: what its bytes are (``torch-zip``, ``pickle``, ``safetensors``, ...).
        findings: everything noticed, worst first.
        sha256: digest of the bytes that were scanned.
        size: their length.
    """

    path: str
    format: str
    findings: tuple[Finding, ...]
    sha256: str = ""
    size: int = 0

    @property
    def verdict(self) -> Verdict:
        worst = max((f.severity for f in self.findings), default=None)
        return Verdict.from_severity(worst)

    @property
    def problems(self) -> tuple[Finding, ...]:
        """The findings that stop the file from being safe."""
        return tuple(f for f in self.findings if f.severity > Severity.INFO)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "verdict": self.verdict.value,
            "sha256": self.sha256,
            "size": self.size,
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScanReport(Result):
    """The scan of every file a run was given."""

    files: tuple[FileReport, ...]
    policy: str = "default"

    @property
    def verdict(self) -> Verdict:
        order = [Verdict.SAFE, Verdict.UNKNOWN, Verdict.UNSAFE]
        return max((f.verdict for f in self.files), key=order.index, default=Verdict.SAFE)

    def summary(self) -> dict[str, Any]:
        counts = Counter(f.verdict.value for f in self.files)
        return {
            "files": len(self.files),
            "safe": counts.get("safe", 0),
            "unknown": counts.get("unknown", 0),
            "unsafe": counts.get("unsafe", 0),
            "verdict": self.verdict.value,
            "policy": self.policy,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "files": [f.to_dict() for f in self.files],
            "summary": self.summary(),
        }
