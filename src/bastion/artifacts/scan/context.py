"""The state one file scan accumulates: findings, byte budget, policy and limits."""

from __future__ import annotations

from collections.abc import Callable

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
        self.depth = 0  # containers enclosing what is being scanned now
        #: Scans bytes found inside a pickle (set by the container walker).
        self.scan_nested: Callable[[ScanContext, memoryview, str], None] | None = None
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

    def child(self) -> ScanContext:
        """A scratch context with the same policy, limits, depth and budgets so far."""
        scratch = ScanContext(self.policy, self.limits)
        scratch.decompressed, scratch.streams, scratch.depth = (
            self.decompressed, self.streams, self.depth)
        scratch.scan_nested = self.scan_nested
        return scratch

    def absorb(self, scratch: ScanContext, *, findings: bool) -> None:
        """Take back the budgets a scratch context spent (and its findings, if asked)."""
        self.decompressed, self.streams = scratch.decompressed, scratch.streams
        if findings:
            for f in scratch.findings:
                self.add(f.severity, f.kind, f.detail, f.location, f.module, f.name)

    def charge(self, nbytes: int) -> bool:
        """Count decompressed bytes; False once the per-file budget is spent."""
        self.decompressed += nbytes
        return self.decompressed <= self.limits.max_total_bytes

    def sorted_findings(self) -> tuple[Finding, ...]:
        """Worst first, then in the order found."""
        order = {id(f): i for i, f in enumerate(self.findings)}
        return tuple(sorted(self.findings, key=lambda f: (-f.severity, order[id(f)])))
