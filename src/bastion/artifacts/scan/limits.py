"""Bounds that keep a scan of a hostile file finite in time and memory."""

from __future__ import annotations

import dataclasses

__all__ = ["ScanLimits"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScanLimits:
    """How much work one scan may do before it stops with a finding.

    A limit reached is reported as a ``limit-exceeded`` warning: the file was not fully read, so
    it is never reported safe. The defaults are far above what real checkpoints need.

    Attributes:
        max_opcodes: pickle opcodes walked per stream.
        max_memo: memo entries per stream.
        max_stack: items on the simulated stack (and in one MARK frame).
        max_nesting: MARK nesting depth (lists in lists in ...).
        max_archive_depth: containers inside containers (zip in gzip in tar ...).
        max_member_bytes: decompressed bytes of one archive member or compressed stream.
        max_total_bytes: decompressed bytes over the whole file.
        max_members: members of one archive.
        max_streams: pickle streams per file (legacy torch files and joblib hold several).
    """

    max_opcodes: int = 10_000_000
    max_memo: int = 1_000_000
    max_stack: int = 1_000_000
    max_nesting: int = 10_000
    max_archive_depth: int = 6
    max_member_bytes: int = 1 << 30
    max_total_bytes: int = 4 << 30
    max_members: int = 100_000
    max_streams: int = 100_000

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ScanLimits.{field.name} must be a positive int, got {value!r}")
