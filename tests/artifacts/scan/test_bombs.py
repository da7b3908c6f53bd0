"""Hostile inputs end in a finding within bounded work, never an exception or a safe verdict."""

from __future__ import annotations

import bz2
import gzip
import io
import struct
import zipfile

import pytest

from bastion.artifacts.scan import ScanLimits, Verdict, scan_bytes

_SMALL = ScanLimits(max_opcodes=50_000, max_memo=1_000, max_stack=5_000, max_nesting=200,
                    max_member_bytes=1 << 20, max_total_bytes=4 << 20, max_archive_depth=3)


def _kinds(data: bytes, limits: ScanLimits = _SMALL) -> set[str]:
    report = scan_bytes(data, limits=limits)
    assert report.verdict is not Verdict.SAFE, report.findings
    return {f.kind for f in report.findings}


def test_memo_bomb() -> None:
    data = b"\x80\x04" + b"N\x940" * 5_000 + b"N."
    assert "limit-exceeded" in _kinds(data)


def test_deep_nesting() -> None:
    assert "limit-exceeded" in _kinds(b"\x80\x02" + b"(" * 10_000 + b"N.")
    assert "limit-exceeded" in _kinds(b"\x80\x02" + b"]" * 10_000 + b".")


def test_millions_of_opcodes_are_cut() -> None:
    assert "limit-exceeded" in _kinds(b"\x80\x02" + b"N0" * 100_000 + b"N.")


def test_self_referencing_memo_stays_small() -> None:
    # A list that appends itself many times: references only, never expanded.
    data = b"\x80\x02]\x94" + b"h\x00a" * 20_000 + b"."
    report = scan_bytes(data)
    assert report.verdict is Verdict.SAFE


@pytest.mark.parametrize("op", [b"\x8d", b"\x8e", b"\x96", b"X", b"B", b"T"])
def test_huge_claimed_lengths(op: bytes) -> None:
    width = 8 if op in (b"\x8d", b"\x8e", b"\x96") else 4
    length = (1 << 62) if width == 8 else 0x7FFFFFFF
    data = b"\x80\x04" + op + length.to_bytes(width, "little") + b"abc"
    assert "parse-error" in _kinds(data)


def test_zip_bomb() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data.pkl", b"\x80\x02" + b"N" * (8 << 20))
    assert {"unreadable-member"} & _kinds(buf.getvalue())


def test_nested_zip_depth() -> None:
    data = b"\x80\x02N."
    for i in range(6):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr(f"layer{i}.zip", data)
        data = buf.getvalue()
    assert "limit-exceeded" in _kinds(data)


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress])
def test_compression_bomb(compress: object) -> None:
    data = compress(b"\x80\x02" + b"\x00" * (8 << 20))  # type: ignore[operator]
    assert "limit-exceeded" in _kinds(data)


def test_truncated_compressed_stream() -> None:
    data = gzip.compress(b"\x80\x02N." * 1000)[:-40]
    assert _kinds(data) & {"truncated", "malformed-compression", "parse-error"}


def test_zip_with_huge_member_count() -> None:
    eocd = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFE, 0xFFFE, 0, 0, 0)
    assert "malformed-zip" in _kinds(b"PK\x03\x04" + b"\x00" * 26 + eocd)


@pytest.mark.slow
def test_default_limits_cut_a_huge_stream() -> None:
    """With the default limits (10M opcodes), 12M opcodes end in a finding."""
    data = b"\x80\x02" + b"N0" * 6_000_000 + b"N."
    assert "limit-exceeded" in _kinds(data, ScanLimits())
