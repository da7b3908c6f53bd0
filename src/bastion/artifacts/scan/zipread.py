"""A zip reader that reads archives the way torch's loader (miniz) does.

Python's :mod:`zipfile` refuses archives that torch loads happily: bad CRCs, flag bits it does
not know, local headers that disagree with the central directory. A scanner built on it can be
fooled by a file that torch will still load. This reader follows miniz instead: the central
directory lists the members; each member's data starts after *its local header* (whose own name
and extra lengths are used); sizes come from the central directory; CRCs are not checked.
Disagreements are returned as anomalies, not raised, so the scanner can report them.

Only the central directory and the members asked for are touched: nothing is read or
decompressed eagerly, and decompression is bounded.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

__all__ = ["ZipFormatError", "ZipListing", "ZipMember", "is_zip", "list_zip", "read_member"]

_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
_MAX_COMMENT = 0xFFFF
_MAX_MEMBERS = 1_000_000


class ZipFormatError(ValueError):
    """The bytes are not a zip archive miniz could open."""


@dataclasses.dataclass(frozen=True)
class ZipMember:
    """One central-directory entry, resolved against its local header."""

    name: str
    data_offset: int
    compressed_size: int
    size: int
    method: int
    flags: int
    header_offset: int
    anomalies: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ZipListing:
    members: tuple[ZipMember, ...]
    anomalies: tuple[str, ...]
    start_offset: int  # bytes before the first local header (prepended data)
    archive_end: int  # offset just past the end-of-central-directory record


def is_zip(data: bytes | memoryview) -> bool:
    """True when an end-of-central-directory record can be found (wherever the file starts)."""
    return _find_eocd(memoryview(data)) >= 0


def _find_eocd(buf: memoryview) -> int:
    n = len(buf)
    lo = max(0, n - 22 - _MAX_COMMENT)
    tail = bytes(buf[lo:])
    pos = tail.rfind(_EOCD)
    while pos >= 0:
        if pos + 22 <= len(tail):
            return lo + pos
        pos = tail.rfind(_EOCD, 0, pos)
    return -1


def list_zip(data: bytes | memoryview, *, max_members: int = _MAX_MEMBERS) -> ZipListing:
    """List the members of a zip archive as miniz would see them.

    Raises:
        ZipFormatError: no end-of-central-directory record, or a central directory that cannot
            be walked (torch could not open such a file either).
    """
    buf = memoryview(data)
    n = len(buf)
    eocd = _find_eocd(buf)
    if eocd < 0:
        raise ZipFormatError("no end-of-central-directory record")
    anomalies: list[str] = []
    (_, disk, cd_disk, _, count, cd_size, cd_offset, comment_len) = struct.unpack_from(
        "<4sHHHHIIH", buf, eocd
    )
    archive_end = eocd + 22 + comment_len
    if archive_end > n:
        anomalies.append("end-of-central-directory comment runs past the end of the file")
        archive_end = n
    elif archive_end < n:
        anomalies.append(f"{n - archive_end} bytes of data after the end of the archive")
    if disk != 0 or cd_disk != 0:
        anomalies.append("multi-disk archive fields are set")
    if count == 0xFFFF or cd_offset == 0xFFFFFFFF or cd_size == 0xFFFFFFFF:
        loc = eocd - 20
        if loc >= 0 and bytes(buf[loc : loc + 4]) == _EOCD64_LOCATOR:
            (eocd64_off,) = struct.unpack_from("<Q", buf, loc + 8)
            if eocd64_off + 56 <= n and bytes(buf[eocd64_off : eocd64_off + 4]) == _EOCD64:
                count, cd_size, cd_offset = struct.unpack_from("<QQQ", buf, eocd64_off + 32)
            else:
                raise ZipFormatError("zip64 end-of-central-directory record is missing")
        else:
            raise ZipFormatError("zip64 sizes without a zip64 locator")
    if cd_offset + cd_size > n:
        # Prepended data shifts every offset; miniz fails here, so do we (as a finding upstream).
        raise ZipFormatError("central directory lies outside the file")
    if count > max_members:
        raise ZipFormatError(f"archive claims {count} members (limit {max_members})")

    members: list[ZipMember] = []
    pos = cd_offset
    end = cd_offset + cd_size
    for index in range(count):
        if pos + 46 > end or bytes(buf[pos : pos + 4]) != _CENTRAL:
            raise ZipFormatError(f"central directory entry {index} is malformed")
        (flags, method, csize, usize, name_len, extra_len, comment_len2, local_off) = (
            struct.unpack_from("<8xHH8xIIHHH8xI", buf, pos)
        )
        name_bytes = bytes(buf[pos + 46 : pos + 46 + name_len])
        extra = bytes(buf[pos + 46 + name_len : pos + 46 + name_len + extra_len])
        pos += 46 + name_len + extra_len + comment_len2
        if pos > end:
            raise ZipFormatError(f"central directory entry {index} runs past the directory")
        usize, csize, local_off = _apply_zip64(extra, usize, csize, local_off)
        name = name_bytes.decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
        member_anomalies: list[str] = []
        if local_off + 30 > n or bytes(buf[local_off : local_off + 4]) != _LOCAL:
            member_anomalies.append("local header missing or malformed")
            data_offset = -1
        else:
            (l_flags, l_method, l_csize, l_usize, l_name_len, l_extra_len) = struct.unpack_from(
                "<4x2xHH8xIIHH", buf, local_off
            )
            l_name = bytes(buf[local_off + 30 : local_off + 30 + l_name_len])
            data_offset = local_off + 30 + l_name_len + l_extra_len
            if l_name != name_bytes:
                member_anomalies.append(
                    f"local header names {l_name.decode('utf-8', 'replace')!r}"
                )
            if l_method != method:
                member_anomalies.append("local header compression method differs")
            if not (flags & 0x8) and (l_csize, l_usize) != (csize, usize) and l_csize != 0xFFFFFFFF:
                member_anomalies.append("local header sizes differ from the central directory")
        if flags & ~0x080E & 0xFFFF:
            member_anomalies.append(f"unusual flag bits 0x{flags:04x}")
        if flags & 0x1:
            member_anomalies.append("member is encrypted")
        if data_offset >= 0 and data_offset + csize > n:
            member_anomalies.append("member data runs past the end of the file")
        members.append(
            ZipMember(
                name=name,
                data_offset=data_offset,
                compressed_size=csize,
                size=usize,
                method=method,
                flags=flags,
                header_offset=local_off,
                anomalies=tuple(member_anomalies),
            )
        )
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        anomalies.append("several members share a name (readers may pick different ones)")
    elif len({n.lower() for n in names}) != len(names):
        anomalies.append("member names differ only in case: miniz (torch) looks names up "
                         "without regard to case, so which one torch loads is ambiguous")
    start = min((m.header_offset for m in members), default=cd_offset)
    if start > 0:
        anomalies.append(f"{start} bytes of data before the first member")
    return ZipListing(tuple(members), tuple(anomalies), start, archive_end)


def _apply_zip64(extra: bytes, usize: int, csize: int, local_off: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + size]
        if tag == 0x0001:
            fields = [v for (v,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
            it = iter(fields)
            if usize == 0xFFFFFFFF:
                usize = next(it, usize)
            if csize == 0xFFFFFFFF:
                csize = next(it, csize)
            if local_off == 0xFFFFFFFF:
                local_off = next(it, local_off)
        pos += 4 + size
    return usize, csize, local_off


def read_member(
    data: bytes | memoryview, member: ZipMember, *, limit: int, length: int | None = None
) -> bytes:
    """The (decompressed) bytes of ``member``, at most ``limit`` of them, or the first ``length``.

    Raises:
        ZipFormatError: missing local header, unsupported method, corrupt deflate stream, or
            more than ``limit`` bytes after decompression (a zip bomb).
    """
    if member.data_offset < 0:
        raise ZipFormatError(f"{member.name}: local header missing")
    buf = memoryview(data)
    raw = buf[member.data_offset : member.data_offset + member.compressed_size]
    want = limit if length is None else min(limit, length)
    if member.method == 0:
        if length is None and len(raw) > limit:
            raise ZipFormatError(f"{member.name}: {len(raw)} bytes exceed the limit of {limit}")
        return bytes(raw[:want])
    if member.method == 8:
        decomp = zlib.decompressobj(-15)
        try:
            out = decomp.decompress(raw, want + 1)
        except zlib.error as exc:
            raise ZipFormatError(f"{member.name}: corrupt deflate data ({exc})") from None
        if len(out) > want and length is None:
            raise ZipFormatError(
                f"{member.name}: decompresses to more than {limit} bytes (possible zip bomb)"
            )
        if length is None and not decomp.eof:
            raise ZipFormatError(f"{member.name}: deflate stream is truncated")
        return out[:want]
    raise ZipFormatError(f"{member.name}: unsupported compression method {member.method}")
