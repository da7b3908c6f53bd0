"""The other way to read a zip: Python's :mod:`zipfile`, which corrects every offset for data
prepended to the archive.

torch reads zips with miniz (:mod:`~bastion.artifacts.scan.zipread`), which takes offsets as
written; :mod:`zipfile` (and so ``numpy.load``, and anyone who unpickles a member by hand) shifts
them by ``eocd_position - cd_size - cd_offset``. ``b"JUNK" + zip`` is unreadable to miniz and a
fine archive to :mod:`zipfile`. The scanner lists both readings, scans the members of each, and
reports when they differ. The real :mod:`zipfile` is used (on a zero-copy file view), so its
quirks - names cut at NUL, local headers checked against the directory - are its own.
"""

from __future__ import annotations

import io
import struct
import zipfile

from bastion.artifacts.scan.zipread import ZipListing, ZipMember

__all__ = ["member_key", "python_listing"]

_LOCAL = b"PK\x03\x04"


class _ViewFile(io.RawIOBase):
    """A read-only, seekable file over a memoryview (no copy of the buffer)."""

    def __init__(self, buf: memoryview) -> None:
        super().__init__()
        self._buf = buf
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._buf)}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, out: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._buf[self._pos : self._pos + len(out)]
        n = len(chunk)
        memoryview(out).cast("B")[:n] = chunk
        self._pos += n
        return n


def _data_offset(buf: memoryview, info: zipfile.ZipInfo) -> int:
    """Where :meth:`zipfile.ZipFile.open` would start reading ``info``'s data, or -1 where it
    would refuse (no local header, or one naming another file)."""
    at = info.header_offset
    if at < 0 or at + 30 > len(buf) or bytes(buf[at : at + 4]) != _LOCAL:
        return -1
    name_len: int
    extra_len: int
    name_len, extra_len = struct.unpack_from("<HH", buf, at + 26)
    if bytes(buf[at + 30 : at + 30 + name_len]) != _encoded_name(info):
        return -1
    return at + 30 + name_len + extra_len


def _encoded_name(info: zipfile.ZipInfo) -> bytes:
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    return info.orig_filename.encode(encoding, errors="replace")


def python_listing(buf: memoryview, *, max_members: int) -> ZipListing | None:
    """The members as :class:`zipfile.ZipFile` lists them, or None where it cannot open the
    archive at all."""
    try:
        with zipfile.ZipFile(_ViewFile(buf)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
            OverflowError, NotImplementedError, KeyError, IndexError, struct.error):
        return None
    if len(infos) > max_members:
        return None
    members = tuple(
        ZipMember(name=info.filename, data_offset=_data_offset(buf, info),
                  compressed_size=info.compress_size, size=info.file_size,
                  method=info.compress_type, flags=info.flag_bits,
                  header_offset=info.header_offset)
        for info in infos
    )
    start = min((m.header_offset for m in members), default=0)
    return ZipListing(members, (), max(0, start), len(buf))


def member_key(member: ZipMember) -> tuple[str, int, int, int]:
    """What decides the bytes a reader gets for a member."""
    return (member.name, member.data_offset, member.compressed_size, member.method)
