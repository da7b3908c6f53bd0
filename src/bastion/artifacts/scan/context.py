"""The state one file scan accumulates: findings, byte budget, policy and limits."""

from __future__ import annotations

from bastion.artifacts.scan.findings import Finding, Severity
from bastion.artifacts.scan.limits import ScanLimits
from bastion.artifacts.scan.policy import Policy

__all__ = ["ScanContext"]


class ScanContext:
    """Collects findings for one file; duplicates (same kind, module, name, location) collapse.

    Mutable on purpose: every walker appends to the same list as it goes, so a scan that stops
    half-way still reports what it saw.
    """

    def __init__(self, policy: Policy, limits: ScanLimits) -> None:
        self.policy = policy
        self.limits = limits
        self.findings: list[Finding] = []
        self.decompressed = 0
        self.streams = 0
        self._seen: set[tuple[str, str | None, str | None, str]] = set()

    def add(self, severity: Severity, kind: str, detail: str, location: str,
            module: str | None = None, name: str | None = None) -> None:
        """Record one finding unless an identical one is already there."""
        key = (kind, module, name, location)
        if key in self._seen:
            return
        self._seen.add(key)
        self.findings.append(Finding(severity=severity, kind=kind, detail=detail,
                                     location=location, module=module, name=name))

    def charge(self, nbytes: int) -> bool:
        """Count decompressed bytes; False once the per-file budget is spent."""
        self.decompressed += nbytes
        return self.decompressed <= self.limits.max_total_bytes

    def sorted_findings(self) -> tuple[Finding, ...]:
        """Worst first, then in the order found."""
        order = {id(f): i for i, f in enumerate(self.findings)}
        return tuple(sorted(self.findings, key=lambda f: (-f.severity, order[id(f)])))
