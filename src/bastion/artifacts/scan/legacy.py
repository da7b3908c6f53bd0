"""torch's legacy (pre-zip) formats: every pickle they hold, and the raw storages in between.

* Sequential (``torch.save(..., _use_new_zipfile_serialization=False)``): five pickles - magic
  number, protocol version, system info, the object, the sorted storage keys - then, per key,
  ``int64 count`` + ``count * element_size`` raw bytes. ``torch.load`` unpickles all five.
* Tar (torch < 0.4): members ``storages`` (a count, then per storage a pickle and a raw record,
  then a views pickle), ``tensors`` (a count, then per tensor a pickle and a raw record) and
  ``pickle`` (the object).
"""

from __future__ import annotations

from bastion.artifacts.scan import containers
from bastion.artifacts.scan.context import ScanContext
from bastion.artifacts.scan.findings import Severity
from bastion.artifacts.scan.framing import (
    report_stream_error,
    skip_storage,
    skip_tensor_record,
    storage_element_size,
)
from bastion.artifacts.scan.opcodes import PickleWalk, walk_pickle

__all__ = ["scan_sequential", "scan_tar_member"]

_NAMES = ("magic number", "protocol version", "system info", "object", "storage keys")


def _walk(buf: memoryview, pos: int, ctx: ScanContext, loc: str) -> PickleWalk | None:
    walk = walk_pickle(buf, pos, ctx, f"{loc}@{pos}")
    if walk.end is None:
        report_stream_error(ctx, f"{loc}@{pos}", walk.error)
        return None
    return walk


def scan_sequential(buf: memoryview, ctx: ScanContext, loc: str) -> None:
    """Scan all five pickles of a legacy sequential file, step over its storages, and report
    anything after them."""
    pos = 0
    walks: list[PickleWalk] = []
    for _ in _NAMES:
        walk = _walk(buf, pos, ctx, loc)
        if walk is None:
            return
        walks.append(walk)
        pos = walk.end or pos
    sizes: dict[str, int | None] = {}
    for pid in walks[3].persistent_ids:
        if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage":
            sizes[str(pid[2])] = storage_element_size(pid[1])
    keys = walks[4].top
    if not isinstance(keys, list):
        ctx.add(Severity.WARNING, "malformed-legacy",
                "the storage-keys pickle is not a list; the storages cannot be located",
                f"{loc}@{pos}")
        return
    for key in keys:
        size = sizes.get(str(key))
        if size is None:
            ctx.add(Severity.WARNING, "malformed-legacy",
                    f"storage {key!r} has no known element size; the rest was not checked",
                    f"{loc}@{pos}")
            return
        try:
            pos = skip_storage(buf, pos, len(buf), size)
        except ValueError as exc:
            ctx.add(Severity.WARNING, "truncated", str(exc), f"{loc}@{pos}")
            return
    containers.scan_trailing(buf, pos, ctx, loc)


def scan_tar_member(buf: memoryview, name: str, ctx: ScanContext, loc: str) -> None:
    """The ``storages`` or ``tensors`` member of a legacy tar file."""
    count_walk = _walk(buf, 0, ctx, loc)
    if count_walk is None:
        return
    pos = count_walk.end or 0
    count = count_walk.top
    if type(count) is not int or count < 0 or count > ctx.limits.max_streams:
        ctx.add(Severity.WARNING, "malformed-legacy", f"{name}: bad record count", loc)
        return
    for _ in range(count):
        walk = _walk(buf, pos, ctx, loc)
        if walk is None:
            return
        pos = walk.end or pos
        try:
            if name == "storages":
                top = walk.top
                size = storage_element_size(top[2]) if isinstance(top, tuple) and len(top) == 3 \
                    else None
                if size is None:
                    raise ValueError("storage record with an unknown storage type")
                pos = skip_storage(buf, pos, len(buf), size)
            else:
                pos = skip_tensor_record(buf, pos, len(buf))
        except ValueError as exc:
            ctx.add(Severity.WARNING, "malformed-legacy", f"{name}: {exc}", f"{loc}@{pos}")
            return
    if name == "storages":
        views = _walk(buf, pos, ctx, loc)
        if views is None:
            return
        pos = views.end or pos
    containers.scan_trailing(buf, pos, ctx, loc)
