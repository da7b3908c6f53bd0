"""Rebuild torch checkpoints (zip and legacy formats) from bytes, without torch's unpickler.

Mirrors what ``torch.load`` does for the two formats, but every pickle goes through
:class:`~bastion.artifacts._unpickler.RestrictedUnpickler`, storages are built from the archive
members (sizes checked against the declared element counts), and everything lands on the CPU.
"""

from __future__ import annotations

import io
import struct
import sys
from typing import Any

import torch

from bastion.artifacts._unpickler import RestrictedUnpickler, StorageTag
from bastion.artifacts.scan.policy import Policy
from bastion.artifacts.scan.zipread import ZipListing, ZipMember, list_zip, read_member
from bastion.core.errors import UnsafeArtifactError

__all__ = ["load_torch_legacy", "load_torch_zip"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _dtype_of(storage_type: Any) -> torch.dtype:
    if isinstance(storage_type, StorageTag):
        return storage_type.dtype
    raise UnsafeArtifactError(f"persistent id names {storage_type!r}, not a torch storage type")


def _typed(untyped: torch.UntypedStorage, dtype: torch.dtype) -> torch.storage.TypedStorage:
    return torch.storage.TypedStorage(  # type: ignore[no-untyped-call]
        wrap_storage=untyped, dtype=dtype, _internal=True
    )


def _archive_members(listing: ZipListing) -> tuple[str, dict[str, ZipMember]]:
    if not listing.members:
        raise UnsafeArtifactError("torch archive has no members")
    prefix = listing.members[0].name.split("/", 1)[0]
    by_name: dict[str, ZipMember] = {}
    folded: set[str] = set()
    for member in listing.members:
        key = member.name.lower()  # miniz looks records up without regard to case
        if key in folded:
            raise UnsafeArtifactError(
                f"torch archive has two records named {member.name!r} (ignoring case); which one "
                "torch would load is ambiguous"
            )
        folded.add(key)
        by_name[member.name] = member
    return prefix, by_name


def load_torch_zip(data: bytes | memoryview, *, policy: Policy, limit: int) -> Any:
    """Load a torch zip checkpoint held in ``data`` under ``policy``."""
    listing = list_zip(data)
    prefix, members = _archive_members(listing)
    pkl = members.get(f"{prefix}/data.pkl")
    if pkl is None:
        raise UnsafeArtifactError(f"torch archive has no {prefix}/data.pkl record")
    byteorder = "little"
    if f"{prefix}/byteorder" in members:
        byteorder = read_member(data, members[f"{prefix}/byteorder"], limit=16).decode(
            "ascii", "replace"
        )
        if byteorder not in {"little", "big"}:
            raise UnsafeArtifactError(f"unknown byte order {byteorder!r} in torch archive")
    storages: dict[str, torch.storage.TypedStorage] = {}

    def persistent_load(pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise UnsafeArtifactError(f"unexpected persistent id {pid!r:.80} in torch archive")
        _, storage_type, key, _location, numel = pid
        dtype = _dtype_of(storage_type)
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise UnsafeArtifactError("malformed storage reference in torch archive")
        if key in storages:
            return storages[key]
        member = members.get(f"{prefix}/data/{key}")
        if member is None:
            raise UnsafeArtifactError(f"storage {key!r} is referenced but missing from the archive")
        nbytes = numel * _element_size(dtype)
        if member.size < nbytes:
            raise UnsafeArtifactError(
                f"storage {key!r} declares {nbytes} bytes but its record holds {member.size}"
            )
        raw = read_member(data, member, limit=limit, length=nbytes)
        untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if nbytes else (
            torch.UntypedStorage(0)  # type: ignore[no-untyped-call]
        )
        if byteorder != sys.byteorder:
            untyped.byteswap(dtype)  # type: ignore[no-untyped-call]
        storages[key] = _typed(untyped, dtype)
        return storages[key]

    raw_pickle = read_member(data, pkl, limit=limit)
    return RestrictedUnpickler(
        io.BytesIO(raw_pickle), policy=policy, persistent_load=persistent_load
    ).load()


def load_torch_legacy(data: bytes | memoryview, *, policy: Policy) -> Any:
    """Load a pre-zip (``_use_new_zipfile_serialization=False``) torch file under ``policy``."""
    stream = io.BytesIO(data)

    def plain() -> Any:
        return RestrictedUnpickler(stream, policy=policy).load()

    if plain() != _LEGACY_MAGIC:
        raise UnsafeArtifactError("not a torch legacy file: bad magic number")
    if plain() != _LEGACY_PROTOCOL:
        raise UnsafeArtifactError("unsupported torch legacy protocol version")
    sys_info = plain()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
        raise UnsafeArtifactError("big-endian or malformed legacy torch file is not supported")
    roots: dict[str, torch.UntypedStorage] = {}
    views: dict[str, torch.storage.TypedStorage] = {}
    element_sizes: dict[str, int] = {}
    budget = [len(data)]

    def persistent_load(pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            raise UnsafeArtifactError(f"unexpected persistent id {pid!r:.80} in legacy file")
        _, storage_type, root_key, _location, numel, view = pid
        dtype = _dtype_of(storage_type)
        esize = _element_size(dtype)
        if not isinstance(root_key, str) or not isinstance(numel, int) or numel < 0:
            raise UnsafeArtifactError("malformed storage reference in legacy file")
        if root_key not in roots:
            # As torch does: allocate now, fill from the raw data that follows the pickles.
            # Every byte must come from the file, so the file size bounds the allocation.
            budget[0] -= numel * esize
            if budget[0] < 0:
                raise UnsafeArtifactError("legacy file declares more storage than it contains")
            roots[root_key] = torch.UntypedStorage(numel * esize)  # type: ignore[no-untyped-call]
            element_sizes[root_key] = esize
        root = roots[root_key]
        if view is None:
            return _typed(root, dtype)
        view_key, offset, size = view
        if not (isinstance(offset, int) and isinstance(size, int) and 0 <= offset
                and 0 <= size and (offset + size) * esize <= root.nbytes()):
            raise UnsafeArtifactError("storage view lies outside its storage in legacy file")
        if view_key not in views:
            views[view_key] = _typed(root[offset * esize : (offset + size) * esize], dtype)
        return views[view_key]

    result = RestrictedUnpickler(stream, policy=policy, persistent_load=persistent_load).load()
    keys = plain()
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(roots):
        raise UnsafeArtifactError("legacy file's storage key list does not match its storages")
    for key in keys:
        root = roots[key]
        header = stream.read(8)
        if len(header) != 8:
            raise UnsafeArtifactError("legacy file is truncated in its storage data")
        (count,) = struct.unpack("<q", header)
        if count * element_sizes[key] != root.nbytes():
            raise UnsafeArtifactError(f"storage {key!r} size does not match its declaration")
        raw = stream.read(root.nbytes())
        if len(raw) != root.nbytes():
            raise UnsafeArtifactError(f"legacy file is truncated in storage {key!r}")
        if raw:
            root.copy_(torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8))
    return result
