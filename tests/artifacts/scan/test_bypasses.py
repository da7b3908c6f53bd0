"""One regression test per known scanner bypass class, named after it."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from _helpers import payloads
from bastion.artifacts.scan import Severity, Verdict, scan_bytes, scan_file


def _kinds(report: object) -> set[str]:
    return {f.kind for f in report.findings}  # type: ignore[attr-defined]


def _payload_report(kind: str, tmp_path: Path) -> object:
    return scan_file(payloads.build(kind, tmp_path, tmp_path / "MARKER"))


def _su(s: str) -> bytes:
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def test_bypass_non_data_pkl_member(tmp_path: Path) -> None:
    report = _payload_report("torch-zip-extra-member", tmp_path)
    assert report.verdict is Verdict.UNSAFE
    assert any("extra/constants" in f.location for f in report.findings
               if f.kind == "dangerous-import")


def test_bypass_legacy_later_pickle(tmp_path: Path) -> None:
    for kind in ("torch-legacy-sysinfo", "torch-legacy-keys"):
        assert _payload_report(kind, tmp_path).verdict is Verdict.UNSAFE


def test_bypass_legacy_tar_format(tmp_path: Path) -> None:
    assert _payload_report("torch-legacy-tar", tmp_path).verdict is Verdict.UNSAFE


@pytest.mark.parametrize("kind", ["torch-zip-bad-crc", "torch-zip-local-name"])
def test_bypass_bad_crc_zip(kind: str, tmp_path: Path) -> None:
    """Python's zipfile rejects these files; torch (miniz) loads them; so must we scan them."""
    path = payloads.build(kind, tmp_path, tmp_path / "MARKER")
    with zipfile.ZipFile(path) as zf, pytest.raises(zipfile.BadZipFile):
        for name in zf.namelist():
            zf.read(name)
    assert scan_file(path).verdict is Verdict.UNSAFE


def test_bypass_zip_odd_flags(tmp_path: Path) -> None:
    assert _payload_report("torch-zip-odd-flags", tmp_path).verdict is Verdict.UNSAFE


def test_bypass_ext_opcode(tmp_path: Path) -> None:
    report = _payload_report("pickle-ext-opcode", tmp_path)
    assert report.verdict is Verdict.UNSAFE and "ext-opcode" in _kinds(report)


def test_bypass_memo_built_stack_global(tmp_path: Path) -> None:
    report = _payload_report("pickle-memo-stack-global", tmp_path)
    assert any((f.module, f.name) == ("builtins", "exec") for f in report.findings)
    assert report.verdict is Verdict.UNSAFE


def test_bypass_dotted_name(tmp_path: Path) -> None:
    report = _payload_report("pickle-dotted-name", tmp_path)
    assert report.verdict is Verdict.UNSAFE


def test_bypass_python2_names() -> None:
    assert scan_bytes(b"c__builtin__\neval\n(S'1'\ntR.").verdict is Verdict.UNSAFE
    assert scan_bytes(b"(S'true'\nios\nsystem\n.").verdict is Verdict.UNSAFE  # INST


def test_bypass_unresolved_stack_global() -> None:
    """Module name produced by a call (here str(...)): the scanner cannot know it."""
    data = (b"\x80\x04" + _su("builtins") + _su("str") + b"\x93" + _su("os") + b"\x85R"
            + _su("system") + b"\x93" + b".")
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNSAFE and "unresolved-import" in _kinds(report)


def test_bypass_indirect_call() -> None:
    """REDUCE on something that is not an imported global (an earlier call's result)."""
    data = (b"\x80\x02ccollections\nOrderedDict\n)R\x94" + b"h\x00)R.")
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNSAFE and "indirect-call" in _kinds(report)


def test_bypass_build_on_global() -> None:
    """BUILD on a class itself sets attributes on it for the whole process."""
    data = b"\x80\x02ctorch._utils\n_rebuild_tensor\n}X\x01\x00\x00\x00aK\x01sb."
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNSAFE and "build-on-global" in _kinds(report)


def test_bypass_truncated_after_payload() -> None:
    """pickle.load runs REDUCE before it notices the missing STOP."""
    data = payloads.payload_pickle(Path("/nonexistent/x"), protocol=2)[:-1]
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNSAFE and "parse-error" in _kinds(report)


def test_bypass_trailing_pickle_after_stop() -> None:
    data = pickle.dumps([1, 2]) + payloads.payload_pickle(Path("/nonexistent/x"))
    report = scan_bytes(data)
    assert report.verdict is Verdict.UNSAFE and "trailing-pickle" in _kinds(report)


def test_bypass_legacy_trailing_data() -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4.0)}, buf, _use_new_zipfile_serialization=False)
    assert scan_bytes(buf.getvalue()).verdict is Verdict.SAFE
    evil = buf.getvalue() + payloads.payload_pickle(Path("/nonexistent/x"))
    assert scan_bytes(evil).verdict is Verdict.UNSAFE
    junk = scan_bytes(buf.getvalue() + b"\x01\x02junk")
    assert junk.verdict is Verdict.UNKNOWN and "trailing-data" in _kinds(junk)


def test_bypass_joblib_payload_after_array(tmp_path: Path) -> None:
    for kind in ("joblib", "joblib-gzip", "joblib-xz"):
        assert _payload_report(kind, tmp_path).verdict is Verdict.UNSAFE


def test_bypass_object_array(tmp_path: Path) -> None:
    for kind in ("npy-object", "npz-object"):
        assert _payload_report(kind, tmp_path).verdict is Verdict.UNSAFE


def test_bypass_nested_zip(tmp_path: Path) -> None:
    report = _payload_report("nested-zip", tmp_path)
    assert report.verdict is Verdict.UNSAFE
    assert any("weights.pt!" in f.location for f in report.findings if f.severity is
               Severity.CRITICAL)


def test_bypass_lying_extension(tmp_path: Path) -> None:
    report = _payload_report("lying-extension", tmp_path)
    assert report.format == "pickle" and report.verdict is Verdict.UNSAFE


def test_bypass_polyglot_pickle_zip(tmp_path: Path) -> None:
    assert _payload_report("polyglot-pickle-zip", tmp_path).verdict is Verdict.UNSAFE


def test_bypass_payload_zip_appended_to_pickle() -> None:
    """The other polyglot: a benign pickle whose end holds a malicious zip (zip readers look
    at the end)."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("evil.pkl", payloads.payload_pickle(Path("/nonexistent/x")))
    head = pickle.dumps([1])
    data = head + inner.getvalue()
    # Offsets in the zip are relative to its start: shift them as a self-extracting archive does.
    fixed = bytearray(data)
    eocd = fixed.rfind(b"PK\x05\x06")
    cd_off = struct.unpack_from("<I", fixed, eocd + 16)[0] + len(head)
    struct.pack_into("<I", fixed, eocd + 16, cd_off)
    struct.pack_into("<I", fixed, cd_off + 42,
                     struct.unpack_from("<I", fixed, cd_off + 42)[0] + len(head))
    with zipfile.ZipFile(io.BytesIO(bytes(fixed))) as zf:
        assert zf.read("evil.pkl")  # a real zip for Python's reader
    report = scan_bytes(bytes(fixed))
    assert report.verdict is Verdict.UNSAFE and "polyglot" in _kinds(report)
