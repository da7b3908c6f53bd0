"""What a file is, decided by its bytes (magic numbers), never by its name."""

from __future__ import annotations

import struct

from bastion.artifacts.scan.zipread import ZipFormatError, list_zip

__all__ = ["TORCH_LEGACY_MAGIC", "is_tar_header", "sniff_format"]

#: ``pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)``: the first pickle of a legacy torch file.
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."

_COMPRESSED = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"ZF", "joblib-zfile"),
    (b"\x04\x22\x4d\x18", "lz4"),
)


def is_tar_header(block: bytes | memoryview) -> bool:
    """True when ``block`` is a tar header whose checksum is right (what :mod:`tarfile` checks,
    and so what torch's legacy loader relies on)."""
    if len(block) < 512:
        return False
    head = bytes(block[:512])
    if head[0] == 0:
        return False
    field = head[148:156].split(b"\x00", 1)[0].strip()
    try:
        stored = int(field or b"x", 8)
    except ValueError:
        return False
    unsigned = sum(head[:148]) + 8 * 32 + sum(head[156:])
    signed = unsigned - 2 * sum(b for b in head[:148] + head[156:] if b > 127)
    return stored in (unsigned, signed)


def _zip_kind(data: memoryview) -> str:
    try:
        names = [m.name for m in list_zip(data, max_members=100_000).members]
    except (ZipFormatError, struct.error):
        return "zip"
    if any(n.endswith("archive_format") or "serialized_exported_program" in n for n in names):
        return "pt2"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch-zip"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    return "zip"


def sniff_format(data: bytes | memoryview) -> str:
    """Name the format of ``data`` from its first bytes.

    Returns one of ``empty``, ``torch-zip``, ``pt2``, ``npz``, ``zip``, ``npy``,
    ``safetensors``, ``torch-legacy``, ``pickle``, ``tar``, ``gzip``, ``bz2``, ``xz``, ``lzma``,
    ``zlib``, ``joblib-zfile``, ``lz4`` or ``unknown`` (which may still be a protocol 0/1
    pickle: the scanner walks it to find out).

    >>> sniff_format(b"\\x80\\x04N.")
    'pickle'
    """
    view = memoryview(data)
    head = bytes(view[:16])
    if not head:
        return "empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")) or (
        len(head) < 4 and b"PK\x03\x04".startswith(head)  # a zip cut short
    ):
        return _zip_kind(view)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if len(view) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack_from("<Q", head)
        if 2 <= n < 1 << 40:  # a length past the end is the checker's finding, not another format
            return "safetensors"
    if bytes(view[: len(TORCH_LEGACY_MAGIC)]) == TORCH_LEGACY_MAGIC:
        return "torch-legacy"
    if head[0] == 0x80 and (len(head) == 1 or head[1] <= 5):
        return "pickle"
    if len(view) >= 512 and is_tar_header(view[:512]):
        return "tar"
    for magic, name in _COMPRESSED:
        if head.startswith(magic):
            return name
    if head[0] == 0x78 and len(head) > 1 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib"
    return "unknown"
