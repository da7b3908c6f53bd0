"""Scan a zip archive under every reading a real loader applies.

torch (miniz) takes the offsets in the archive as written; Python's :mod:`zipfile` (numpy, and
anyone reading members by hand) corrects them for data prepended to the archive. Both readings
are listed; every member of each is scanned once; and where they differ - one reader cannot open
the archive, or the two see other members or other bytes - that is itself a finding, so that such
a file is never reported safe.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from bastion.artifacts.scan import containers
from bastion.artifacts.scan.context import ScanContext
from bastion.artifacts.scan.findings import Severity
from bastion.artifacts.scan.opcodes import walk_pickle
from bastion.artifacts.scan.zipread import (
    ZipFormatError,
    ZipListing,
    is_zip,
    list_zip,
    read_member,
)
from bastion.artifacts.scan.zipviews import member_key, python_listing

__all__ = ["scan_zip"]


def scan_zip(buf: memoryview, ctx: ScanContext, loc: str, depth: int, *,
             probe: bool = False) -> None:
    """Scan the zip archive in ``buf`` as miniz and as :mod:`zipfile` read it.

    Args:
        probe: ``buf`` is not a zip at offset 0 (a pickle, a tar, unknown bytes): an archive is
            reported (``polyglot``) only if some reader finds members with data in it.
    """
    if probe and not is_zip(buf):
        return
    try:
        miniz: ZipListing | None = list_zip(buf, max_members=ctx.limits.max_members)
        error = ""
    except (ZipFormatError, struct.error) as exc:
        miniz, error = None, str(exc)
    python = python_listing(buf, max_members=ctx.limits.max_members)
    readings = [r for r in (miniz, python) if r is not None]
    if probe and not any(m.data_offset >= 0 for r in readings for m in r.members):
        return
    if probe:
        ctx.add(Severity.WARNING, "polyglot",
                "the file also holds a zip archive (zip loaders find it from the end); both views "
                "are scanned", loc)
    if miniz is None:
        if python is None or not probe:
            ctx.add(Severity.WARNING, "malformed-zip", f"the zip archive cannot be read: {error}",
                    loc)
        if python is None or not python.members:
            return
        ctx.add(Severity.WARNING, "zip-disagreement",
                f"torch's zip reader (miniz) cannot open this archive ({error}) but Python's "
                "zipfile can, after correcting offsets for prepended data: numpy.load or a "
                "zipfile reader would load members that torch never sees", loc)
    elif python is not None and sorted(map(member_key, miniz.members)) != sorted(
            map(member_key, python.members)):
        ctx.add(Severity.WARNING, "zip-disagreement",
                "torch's zip reader (miniz) and Python's zipfile see different members or "
                "different member bytes in this archive; both readings are scanned", loc)
    scanned: set[tuple[str, int, int, int]] = set()
    if miniz is not None:
        _scan_listing(buf, miniz, ctx, loc, depth, scanned)
    if python is not None:
        _scan_listing(buf, python, ctx, loc, depth, scanned)


def _scan_listing(buf: memoryview, listing: ZipListing, ctx: ScanContext, loc: str, depth: int,
                  scanned: set[tuple[str, int, int, int]]) -> None:
    if scanned and all(member_key(m) in scanned for m in listing.members):
        return
    for anomaly in listing.anomalies:
        ctx.add(Severity.WARNING, "zip-anomaly", anomaly, loc)
    if listing.start_offset > 0:
        containers.scan_blob(buf[: listing.start_offset], ctx, f"{loc}[prefix]", depth + 1,
                             strict=False)
    storages = _storage_members(buf, listing.members, ctx, loc)
    for member in listing.members:
        key = member_key(member)
        if key in scanned:
            continue
        scanned.add(key)
        mloc = f"{loc}!{member.name}"
        for anomaly in member.anomalies:
            severity = Severity.INFO if anomaly.startswith("unusual flag") else Severity.WARNING
            ctx.add(severity, "zip-anomaly", f"{member.name}: {anomaly}", mloc)
        if member.data_offset < 0 or member.name.endswith("/"):
            continue
        if member.flags & 0x1:
            ctx.add(Severity.WARNING, "unreadable-member", "encrypted member cannot be checked",
                    mloc)
            continue
        content = _member_bytes(buf, member, ctx, mloc)
        if content is None:
            continue
        if member.name in storages:
            _scan_storage(content, ctx, mloc)
            continue
        strict = member.name.endswith((".pkl", ".pickle"))
        containers.scan_blob(content, ctx, mloc, depth + 1, strict=strict)

def _storage_members(buf: memoryview, members: Any, ctx: ScanContext, loc: str) -> set[str]:
    """Names of the raw tensor storages that a torch ``data.pkl`` refers to (``data/<key>``).

    torch reads those bytes as tensor data, never as a pickle; walking random tensor bytes as
    opcodes would only produce noise, so they are judged by :func:`_scan_storage` instead.
    """
    names: set[str] = set()
    for member in members:
        if member.name.endswith(_PT2_CONFIGS):
            names |= _pt2_raw_members(buf, member, ctx, loc)
            continue
        if not (member.name == "data.pkl" or member.name.endswith("/data.pkl")):
            continue
        content = _member_bytes(buf, member, ScanContext(ctx.policy, ctx.limits), loc)
        if content is None:
            continue
        walk = walk_pickle(content, 0, ScanContext(ctx.policy, ctx.limits), loc)
        prefix = member.name[: -len("data.pkl")]
        for pid in walk.persistent_ids:
            if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage":
                names.add(f"{prefix}data/{pid[2]}")
    return names


_PT2_CONFIGS = ("data/weights/model_weights_config.json",
                "data/constants/model_constants_config.json")


def _pt2_raw_members(buf: memoryview, member: Any, ctx: ScanContext, loc: str) -> set[str]:
    """The raw tensor files a ``torch.export`` archive's weights/constants config names.

    Entries with ``use_pickle: false`` are read by ``torch.export.load`` as plain tensor bytes
    (``torch.frombuffer``); entries with ``use_pickle: true`` are unpickled, so they stay
    ordinary members that are scanned as pickles. A config that does not parse names nothing.
    """
    content = _member_bytes(buf, member, ScanContext(ctx.policy, ctx.limits), loc)
    if content is None or len(content) > 16 * 2**20:
        return set()
    try:
        config = json.loads(bytes(content).decode("utf-8")).get("config")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return set()
    if not isinstance(config, dict):
        return set()
    folder = member.name.rsplit("/", 1)[0]
    names: set[str] = set()
    for entry in config.values():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            continue
        path = entry.get("path_name")
        if isinstance(path, str) and path and "/" not in path and path not in (".", ".."):
            names.add(f"{folder}/{path}")
    return names


def _scan_storage(content: memoryview, ctx: ScanContext, loc: str) -> None:
    """A tensor storage member: only a *complete* pickle stream inside it is reported."""
    scratch = ScanContext(ctx.policy, ctx.limits)
    walk = walk_pickle(content, 0, scratch, loc)
    if walk.end is None or not walk.risky:
        return
    ctx.add(Severity.WARNING, "pickle-in-storage",
            "a tensor storage member holds a complete pickle stream (its imports are reported)",
            loc)
    for f in scratch.findings:
        ctx.add(f.severity, f.kind, f.detail, f.location, f.module, f.name)


def _member_bytes(buf: memoryview, member: Any, ctx: ScanContext, loc: str) -> memoryview | None:
    if member.method == 0:
        end = member.data_offset + member.compressed_size
        if end > len(buf):
            ctx.add(Severity.WARNING, "truncated", "member data runs past the end of the file",
                    loc)
        return buf[member.data_offset : min(end, len(buf))]
    limit = min(ctx.limits.max_member_bytes,
                max(0, ctx.limits.max_total_bytes - ctx.decompressed))
    try:
        data = read_member(buf, member, limit=limit)
    except ZipFormatError as exc:
        ctx.add(Severity.WARNING, "unreadable-member", f"{exc}", loc)
        return None
    if not ctx.charge(len(data)):
        ctx.add(Severity.WARNING, "limit-exceeded", "decompressed byte budget spent", loc)
        return None
    return memoryview(data)


