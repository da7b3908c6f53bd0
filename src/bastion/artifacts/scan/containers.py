"""Walk every container a loader could open and hand each pickle stream to the walker.

:func:`scan_blob` decides what some bytes are (by magic numbers), and recurses into archives
(zip, tar, gzip/bz2/xz/lzma/zlib), with a bounded depth and a bounded number of decompressed
bytes. Stored zip members and tar members are memoryview slices: tensor bytes are never copied.
"""

from __future__ import annotations

import ast
import bz2
import lzma
import struct
import zlib
from typing import Any

from bastion.artifacts.scan import legacy, zipscan
from bastion.artifacts.scan.context import ScanContext
from bastion.artifacts.scan.findings import Severity
from bastion.artifacts.scan.formats import TORCH_LEGACY_MAGIC, is_tar_header, sniff_format
from bastion.artifacts.scan.framing import JoblibHook, report_stream_error
from bastion.artifacts.scan.opcodes import walk_pickle
from bastion.artifacts.scan.safetensors_check import check_safetensors

__all__ = ["scan_blob", "scan_nested", "scan_pickles", "scan_trailing"]

_ZIPS = frozenset({"torch-zip", "pt2", "npz", "zip"})
_COMPRESSED = frozenset({"gzip", "bz2", "xz", "lzma", "zlib", "joblib-zfile"})


def scan_blob(buf: memoryview, ctx: ScanContext, loc: str, depth: int = 0, *,
              strict: bool = True) -> str:
    """Scan ``buf`` as everything a loader could take it for; returns the format name.

    Args:
        buf: the bytes (a file or an archive member).
        ctx: findings, policy and limits of the file.
        loc: where ``buf`` is, for findings.
        depth: how many containers enclose it.
        strict: a loader will read it as a pickle (a top-level file, ``data.pkl``): if it does
            not parse that is a warning; inside archives, bytes that are no pickle are data.
    """
    outer, ctx.depth = ctx.depth, depth
    if ctx.scan_nested is None:
        ctx.scan_nested = scan_nested
    try:
        return _scan_blob(buf, ctx, loc, depth, strict)
    finally:
        ctx.depth = outer


def _scan_blob(buf: memoryview, ctx: ScanContext, loc: str, depth: int, strict: bool) -> str:
    fmt = sniff_format(buf)
    if depth > ctx.limits.max_archive_depth:
        ctx.add(Severity.WARNING, "limit-exceeded",
                f"containers nested deeper than {ctx.limits.max_archive_depth}; not opened", loc)
        return fmt
    if fmt in _ZIPS:
        zipscan.scan_zip(buf, ctx, loc, depth)
        return fmt
    if fmt == "npy":
        _scan_npy(buf, ctx, loc)
    elif fmt == "safetensors":
        check_safetensors(buf, ctx, loc)
    elif fmt == "torch-legacy":
        legacy.scan_sequential(buf, ctx, loc)
    elif fmt == "tar":
        _scan_tar(buf, ctx, loc, depth)
    elif fmt in _COMPRESSED:
        _scan_compressed(buf, fmt, ctx, loc, depth)
    elif fmt == "lz4":
        ctx.add(Severity.WARNING, "unsupported-compression",
                "lz4-compressed data cannot be checked without the lz4 package", loc)
    elif fmt in ("pickle", "unknown"):
        # Text that fails to parse before any import cannot run code under any unpickler;
        # a stream that starts with PROTO, or sits where a loader unpickles, must parse.
        fmt = scan_pickles(buf, ctx, loc, strict=fmt == "pickle" or (strict and depth > 0))
    if fmt != "empty":
        zipscan.scan_zip(buf, ctx, loc, depth, probe=True)
    return fmt


#: Findings that make a pickle found inside bytes worth reporting: it imports or calls something,
#: or hides deeper than the scanner goes. (Random bytes that merely fail to parse are data.)
_NESTED_SIGNAL = frozenset({"limit-exceeded"})


def scan_nested(ctx: ScanContext, data: memoryview, loc: str) -> None:
    """Bytes a pickle passes to a callable: if they hold a pickle or an archive, scan it.

    The content is scanned in a scratch context and its findings are kept only when it really
    is something a loader runs (an import, a call, a container too deep to open): most bytes
    arguments are plain data that happen not to parse.
    """
    scratch = ctx.child()
    scan_blob(data, scratch, loc, ctx.depth + 1, strict=False)
    keep = any(f.module is not None or f.severity is Severity.CRITICAL
               or f.kind in _NESTED_SIGNAL for f in scratch.findings)
    ctx.absorb(scratch, findings=keep)


def scan_pickles(buf: memoryview, ctx: ScanContext, loc: str, *, strict: bool) -> str:
    """Walk the pickle at offset 0, then whatever follows its STOP; returns the format name."""
    hook = JoblibHook(ctx)
    walk = walk_pickle(buf, 0, ctx, loc, hook=hook)
    if walk.end is None:
        if walk.risky or strict:
            report_stream_error(ctx, loc, walk.error)
            return "pickle"
        ctx.add(Severity.INFO, "not-a-model",
                "no known model format and no pickle stream: nothing a loader could run", loc)
        return "unknown"
    fmt = "joblib" if hook.seen else "pickle"
    if walk.top == 0x1950A86A20F9469CFC6C and bytes(buf[: walk.end]) != TORCH_LEGACY_MAGIC:
        legacy.scan_sequential(buf, ctx, loc)  # a legacy file written with another protocol
        return "torch-legacy"
    scan_trailing(buf, walk.end, ctx, loc)
    return fmt


def scan_trailing(buf: memoryview, pos: int, ctx: ScanContext, loc: str) -> None:
    """Report bytes after the last stream a loader reads: more pickles (scanned) or junk."""
    n = len(buf)
    while pos < n:
        rest = buf[pos:]
        if not bytes(rest[:4096]).strip(b"\x00 \t\r\n"):
            if not any(bytes(rest)):
                return  # zero padding
        walk = walk_pickle(buf, pos, ctx, f"{loc}@{pos}")
        if walk.end is None or walk.end <= pos:
            ctx.add(Severity.WARNING, "trailing-data",
                    f"{n - pos} bytes after the last pickle stream that no loader reads; "
                    "scanners and loaders may disagree about them", f"{loc}@{pos}")
            return
        ctx.add(Severity.WARNING, "trailing-pickle",
                "another pickle stream follows the first one: a loader that reads on would run "
                "it (its imports are reported)", f"{loc}@{pos}")
        pos = walk.end


def _scan_tar(buf: memoryview, ctx: ScanContext, loc: str, depth: int) -> None:
    members = _tar_members(buf, ctx, loc)
    names = {name for name, _ in members}
    torch_legacy = {"storages", "tensors", "pickle"} <= names
    for name, content in members:
        mloc = f"{loc}!{name}"
        if torch_legacy and name in ("storages", "tensors"):
            legacy.scan_tar_member(content, name, ctx, mloc)
        else:
            scan_blob(content, ctx, mloc, depth + 1, strict=torch_legacy and name == "pickle")


def _tar_members(buf: memoryview, ctx: ScanContext, loc: str) -> list[tuple[str, memoryview]]:
    out: list[tuple[str, memoryview]] = []
    pos, n, long_name = 0, len(buf), None
    while pos + 512 <= n:
        block = buf[pos : pos + 512]
        if not any(bytes(block)):
            return out
        if not is_tar_header(block):
            ctx.add(Severity.WARNING, "malformed-tar", "bad tar header checksum", f"{loc}@{pos}")
            return out
        head = bytes(block)
        name = head[:100].split(b"\x00", 1)[0].decode("utf-8", "replace")
        if head[257:262] == b"ustar" and head[345]:
            name = head[345:500].split(b"\x00", 1)[0].decode("utf-8", "replace") + "/" + name
        size_field = head[124:136]
        if size_field[0] & 0x80:
            size = int.from_bytes(size_field[1:], "big")
        else:
            size = int(size_field.split(b"\x00", 1)[0].strip() or b"0", 8)
        start, typ = pos + 512, head[156:157]
        body = buf[start : min(n, start + size)]
        if start + size > n:
            ctx.add(Severity.WARNING, "truncated", f"tar member {name} is truncated", loc)
        if typ == b"L":
            long_name = bytes(body).split(b"\x00", 1)[0].decode("utf-8", "replace")
        elif typ in (b"x", b"g"):
            pax = _pax_records(bytes(body))
            long_name = pax.get("path", long_name)
            if "size" in pax:
                ctx.add(Severity.WARNING, "tar-anomaly",
                        "a pax header overrides the next member's size: tar readers and this "
                        "scanner may split the archive differently", f"{loc}@{pos}")
        elif typ in (b"1", b"2"):
            ctx.add(Severity.WARNING, "tar-link",
                    f"tar member {long_name or name} is a link: a loader that extracts the "
                    "archive (torch's legacy tar format does) reads whatever it points to",
                    f"{loc}@{pos}")
            long_name = None
        elif typ in (b"0", b"\x00", b"7"):
            out.append((long_name or name, body))
            long_name = None
        if len(out) > ctx.limits.max_members:
            ctx.add(Severity.WARNING, "limit-exceeded", "too many tar members", loc)
            return out
        pos = start + (size + 511) // 512 * 512
    return out


def _pax_records(body: bytes) -> dict[str, str]:
    """``"<len> key=value\\n"`` records of a pax extended header (malformed ones end the list)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos)
        if space < 0 or not body[pos:space].isdigit():
            break
        length = int(body[pos:space])
        record = body[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            break
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


def _decompressor(fmt: str) -> Any:
    return {
        "gzip": lambda: zlib.decompressobj(31),
        "zlib": zlib.decompressobj,
        "joblib-zfile": zlib.decompressobj,
        "bz2": bz2.BZ2Decompressor,
        "xz": lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ),
        "lzma": lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE),
    }[fmt]


def _scan_compressed(buf: memoryview, fmt: str, ctx: ScanContext, loc: str, depth: int) -> None:
    data = buf[21:] if fmt == "joblib-zfile" else buf  # "ZF" + hex length, then zlib
    limit = min(ctx.limits.max_member_bytes, max(0, ctx.limits.max_total_bytes - ctx.decompressed))
    out, pending, truncated = bytearray(), bytes(data), False
    try:
        while pending and len(out) <= limit:  # concatenated streams (gzip members, bz2 streams)
            dec = _decompressor(fmt)()
            out += dec.decompress(pending, limit + 1 - len(out))
            if not dec.eof:
                truncated = len(out) <= limit
                break
            pending = dec.unused_data if fmt in ("gzip", "bz2", "xz") else b""
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        ctx.add(Severity.WARNING, "malformed-compression", f"{fmt} data is corrupt: {exc}", loc)
        return
    if len(out) > limit:
        ctx.add(Severity.WARNING, "limit-exceeded",
                f"{fmt} data decompresses to more than {limit} bytes (a decompression bomb?); "
                "not checked", loc)
        return
    if truncated:
        ctx.add(Severity.WARNING, "truncated", f"{fmt} stream is truncated", loc)
    ctx.charge(len(out))
    scan_blob(memoryview(bytes(out)), ctx, f"{loc}|{fmt}", depth + 1, strict=True)


def _has_object(descr: Any) -> bool:
    """Would ``numpy.load`` unpickle this array? Decided by numpy's own reading of the header's
    ``descr`` (``"object"``, ``"i8,O"`` and nested fields all mean objects); a descr numpy
    rejects cannot be loaded, anything else odd is assumed to hold objects."""
    import numpy as np  # noqa: PLC0415 - only .npy files need it

    try:
        return bool(np.lib.format.descr_to_dtype(descr).hasobject)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError,
            MemoryError, OverflowError):
        return True


def _scan_npy(buf: memoryview, ctx: ScanContext, loc: str) -> None:
    major = buf[6] if len(buf) > 7 else 0
    if major == 1 and len(buf) >= 10:
        (hlen,) = struct.unpack_from("<H", buf, 8)
        start = 10
    elif major in (2, 3) and len(buf) >= 12:
        (hlen,) = struct.unpack_from("<I", buf, 8)
        start = 12
    else:
        ctx.add(Severity.WARNING, "malformed-npy", "unknown .npy version or truncated header",
                loc)
        return
    if hlen > 1 << 20 or start + hlen > len(buf):
        ctx.add(Severity.WARNING, "malformed-npy", "the .npy header length is out of bounds", loc)
        return
    try:
        text = bytes(buf[start : start + hlen]).decode("utf-8" if major == 3 else "latin-1")
        header = ast.literal_eval(text)
        descr = header["descr"]
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError) as exc:
        ctx.add(Severity.WARNING, "malformed-npy", f"the .npy header does not parse: {exc}", loc)
        return
    if _has_object(descr):
        scan_pickles(buf[start + hlen :], ctx, f"{loc}+object-array", strict=True)
