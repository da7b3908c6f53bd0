"""Regression tests for scanner holes found while hardening it, one per hole, named after it.

Where a sample attacks the loader's host (memory bombs), the real CPython behaviour is checked
in a child process capped at 1 GiB of address space, so that a test proves the hazard exists
without ever running it unguarded.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import payloads
from bastion.artifacts._unpickler import restricted_loads
from bastion.artifacts.load import load_bytes
from bastion.artifacts.scan import Severity, Verdict, scan_bytes
from bastion.core.errors import UnsafeArtifactError

MEMO_BOMB = b"\x80\x02K\x01r\xff\xff\xff\x7f."  # LONG_BINPUT 0x7fffffff
LYING_FRAME = b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\x00\x00K\x01."


def _kinds(data: bytes) -> set[str]:
    return {f.kind for f in scan_bytes(data).findings}


def _capped(code: str, tmp_path: Path) -> str:
    """Run ``code`` in a child limited to 1 GiB of address space; returns its stdout."""
    script = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
    path = tmp_path / "child.py"
    path.write_text(script + textwrap.dedent(code))
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    return done.stdout


def _refused(data: bytes) -> None:
    report = scan_bytes(data)
    assert report.verdict is not Verdict.SAFE, report.findings
    with pytest.raises(UnsafeArtifactError):
        load_bytes(data)


# -- memo and frames ---------------------------------------------------------------------------


def test_bomb_memo_index(tmp_path: Path) -> None:
    out = _capped(f"""
        import pickle
        try:
            pickle.loads({MEMO_BOMB!r})
        except MemoryError:
            print("MemoryError")
    """, tmp_path)
    assert out.strip() == "MemoryError"  # CPython sizes its memo array by the index
    assert "memo-bomb" in _kinds(MEMO_BOMB)
    _refused(MEMO_BOMB)
    # an index beyond ScanLimits.max_memo, with a plausible opcode count, is flagged too
    assert "memo-bomb" in _kinds(b"\x80\x02K\x01r\x00\x00\x20\x00.")
    # BINPUT indices a real pickler writes are fine
    assert scan_bytes(pickle.dumps([[i] for i in range(3000)], protocol=2)).verdict \
        is Verdict.SAFE


def test_bypass_memo_get_of_unset_index() -> None:
    report = scan_bytes(b"\x80\x02K\x01q\x00h\x05.")
    assert report.verdict is not Verdict.SAFE
    assert any("never set" in f.detail for f in report.findings)


def test_bomb_lying_frame_length(tmp_path: Path) -> None:
    sample = tmp_path / "frame.pkl"
    sample.write_bytes(LYING_FRAME)
    out = _capped(f"""
        import pickle
        try:
            pickle.load(open({str(sample)!r}, "rb"))
        except MemoryError:
            print("MemoryError")
    """, tmp_path)
    assert out.strip() == "MemoryError"  # a buffered file allocates the announced length
    assert "frame-anomaly" in _kinds(LYING_FRAME)
    _refused(LYING_FRAME)


def test_bypass_frame_straddled_by_opcode() -> None:
    """FRAME of 2 bytes, then a 3-byte opcode: the C unpickler loads it, the Python one does
    not; readers that disagree on a stream must not be trusted with it."""
    data = b"\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00M\x01\x00."
    assert pickle.loads(data) == 1  # noqa: S301 - constant sample
    with pytest.raises(pickle.UnpicklingError):
        pickle._loads(data)  # type: ignore[attr-defined]  # noqa: S301
    assert "frame-anomaly" in _kinds(data)


def test_frames_of_real_pickles_are_fine() -> None:
    for protocol in (4, 5):
        data = pickle.dumps({"a": list(range(100_000)), "b": "x" * 200_000}, protocol=protocol)
        assert scan_bytes(data).verdict is Verdict.SAFE


# -- zips only one reader can read ------------------------------------------------------------


def _torch_zip() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    return buf.getvalue()


def test_bypass_zip_prepended_data(tmp_path: Path) -> None:
    benign = b"JUNK" * 10 + _torch_zip()
    with zipfile.ZipFile(io.BytesIO(benign)) as zf:
        assert any(n.endswith("data.pkl") for n in zf.namelist())  # Python reads it
    report = scan_bytes(benign)
    assert report.verdict is not Verdict.SAFE and "zip-disagreement" in _kinds(benign)
    marker = tmp_path / "MARKER"
    evil = payloads.prepended_zip(payloads.payload_pickle(marker))
    with zipfile.ZipFile(io.BytesIO(evil)) as zf:
        pickle.loads(zf.read("archive/extra/constants"))  # noqa: S301 - proves it fires
    assert marker.exists()
    marker.unlink()
    assert scan_bytes(evil).verdict is Verdict.UNSAFE
    _refused(evil)
    assert not marker.exists()


def test_bypass_zip_appended_with_own_offsets() -> None:
    """A pickle followed by a zip whose offsets are relative to itself (plain ``cat``)."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("evil.pkl", payloads.payload_pickle(Path("/nonexistent/x")))
    data = pickle.dumps([1]) + inner.getvalue()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.read("evil.pkl")
    assert scan_bytes(data).verdict is Verdict.UNSAFE


# -- nested content ------------------------------------------------------------------------------


def test_bypass_nested_pickle_in_bytes_argument() -> None:
    benign = pickle.dumps(torch.ones(2))  # torch.storage._load_from_bytes(b"<legacy file>")
    report = scan_bytes(benign)
    assert report.verdict is Verdict.UNKNOWN
    assert any("+bytes" in f.location for f in report.findings)  # the inner file was walked
    evil = pickle.dumps(payloads._Reduce(torch.storage._load_from_bytes,  # noqa: SLF001
                                         (payloads.payload_pickle(Path("/nonexistent/x")),)),
                        protocol=2)
    report = scan_bytes(evil)
    assert report.verdict is Verdict.UNSAFE
    assert any(f.severity is Severity.CRITICAL and "+bytes" in f.location
               for f in report.findings)


def test_random_bytes_arguments_are_data() -> None:
    data = pickle.dumps(bytearray(bytes(range(256)) * 64), protocol=2)
    assert scan_bytes(data).verdict is Verdict.SAFE


# -- allowed globals that allocate or compute without bound --------------------------------------


def test_bomb_list_of_range(tmp_path: Path) -> None:
    data = b"\x80\x02c__builtin__\nlist\nc__builtin__\nrange\nJ\x00\x00\x00\x7f\x85R\x85R."
    out = _capped(f"""
        import pickle
        try:
            pickle.loads({data!r})
        except MemoryError:
            print("MemoryError")
    """, tmp_path)
    assert out.strip() == "MemoryError"
    assert {"allocation-bomb", "iterates-call"} <= _kinds(data)
    _refused(data)
    with pytest.raises(UnsafeArtifactError, match="range"):
        restricted_loads(data)  # the unpickler's own guard, even without a scan
    assert restricted_loads(pickle.dumps(range(10), protocol=2)) == range(10)


def test_bomb_fraction_exponent() -> None:
    data = b"\x80\x02cfractions\nFraction\nX\x0b\x00\x00\x001e300000000\x85R."
    assert "allocation-bomb" in _kinds(data)
    _refused(data)
    with pytest.raises(UnsafeArtifactError, match="Fraction"):
        restricted_loads(data)
    from fractions import Fraction

    assert restricted_loads(pickle.dumps(Fraction(3, 7), protocol=2)) == Fraction(3, 7)


@pytest.mark.parametrize("data", [
    b"\x80\x02c__builtin__\nlist\nctorch\nTensor\nJ\x00\x00\x00\x20\x85R\x85R.",
    b"\x80\x02ccopyreg\n_reconstructor\nctorch\nTensor\nctorch\nTensor\nJ\x00\x00\x00\x20\x87R.",
])
def test_bomb_type_tag_called(data: bytes) -> None:
    """torch.Tensor(n) allocates n floats; checkpoints only ever name the class."""
    assert "type-called" in _kinds(data)
    _refused(data)


def test_bomb_reconstruct_shape() -> None:
    data = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            b"\x8a\x05\x00\x00\x00\x00\x01\x85C\x01b\x87R.")
    assert "allocation-bomb" in _kinds(data)
    with pytest.raises(UnsafeArtifactError, match="_reconstruct"):
        restricted_loads(data)
    masked = (b"\x80\x02cnumpy.ma.core\n_mareconstruct\n(cnumpy.ma.core\nMaskedArray\n"
              b"cnumpy\nndarray\n\x8a\x05\x00\x00\x00\x00\x01\x85C\x01btR.")
    assert "allocation-bomb" in _kinds(masked)
    with pytest.raises(UnsafeArtifactError, match="_mareconstruct"):
        restricted_loads(masked)
    array = np.arange(3)
    assert np.array_equal(restricted_loads(pickle.dumps(array, protocol=2)), array)


def test_bypass_indirect_callee_through_rebuild_from_type() -> None:
    """``_rebuild_from_type_v2(func, ...)`` calls ``func``: a computed ``func`` is an indirect
    call exactly like a REDUCE on it."""
    data = (b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n("
            b"ccollections\nOrderedDict\n)R" + b"ctorch\nTensor\n)}tR.")
    assert "indirect-call" in _kinds(data)


# -- joblib framing ---------------------------------------------------------------------------


def test_bypass_joblib_dtype_elsize(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = payloads.build("joblib-dtype-elsize", tmp_path, marker)
    payloads.fire("joblib-dtype-elsize", path, marker)
    assert marker.exists()  # joblib reads 8 bytes per f8 item and runs what follows
    marker.unlink()
    report = scan_bytes(path.read_bytes())
    assert report.verdict is Verdict.UNSAFE
    assert any(f.name == "exec" for f in report.findings)


def test_bypass_joblib_array_read_as_opcodes(tmp_path: Path) -> None:
    """joblib skips the array bytes; pickle.load of the same file runs them as opcodes."""
    import joblib

    marker = tmp_path / "MARKER"
    path = payloads.build("joblib-array-opcodes", tmp_path, marker)
    assert joblib.load(path).shape == (64,) and not marker.exists()  # joblib: just data
    payloads.fire("joblib-array-opcodes", path, marker)
    assert marker.exists()  # pickle.load: the payload
    report = scan_bytes(path.read_bytes())
    assert report.verdict is Verdict.UNSAFE
    assert "joblib-pickle-disagreement" in {f.kind for f in report.findings}


def test_dtype_sizes_follow_numpy() -> None:
    from bastion.artifacts.scan.framing import _numpy_dtype
    from bastion.artifacts.scan.values import Call, Global

    def sized(code: str, elsize: int) -> tuple[int, bool] | None:
        call = Call(Global("numpy", "dtype"), (code, False, True))
        call.state = (3, "<", None, None, None, elsize, 1, 0)
        return _numpy_dtype(call)

    for code, elsize in [("f8", 1), ("f8", -1), ("i2", 64), ("U10", 4), ("S5", 2), ("V8", 3)]:
        real = np.dtype(code)
        real.__setstate__((3, "<" if code[0] in "fiU" else "|", None, None, None, elsize, 1, 0))
        assert sized(code, elsize) == (real.itemsize, False), code


# -- tar ------------------------------------------------------------------------------------------


def _tar(*members: tarfile.TarInfo, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info in members:
            body = payloads.payload_pickle(Path("/nonexistent/x")) if info.isfile() else b""
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def test_bypass_tar_link_member() -> None:
    """torch's legacy loader extracts ``pickle``/``storages`` and opens them: a link member
    makes it read a file the scanner never saw."""
    link = tarfile.TarInfo("pickle")
    link.type, link.linkname = tarfile.SYMTYPE, "/tmp/elsewhere.pkl"
    data = _tar(link)
    assert "tar-link" in _kinds(data) and scan_bytes(data).verdict is not Verdict.SAFE


def test_bypass_tar_pax_path_names_the_member() -> None:
    """A pax header renames the member (tarfile honours it): the legacy layout is recognised
    by the names tarfile reports, and a pax size override is an anomaly."""
    long = tarfile.TarInfo("p" * 120)  # long name: written through a pax 'path' record
    data = _tar(long)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["p" * 120]
    report = scan_bytes(data)
    assert any(f.location.endswith("p" * 120) for f in report.findings if f.module)


def test_bypass_zip_case_folded_member_names() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
        zf.writestr("archive/DATA.pkl", pickle.dumps({"w": 2}))
    report = scan_bytes(buf.getvalue())
    assert report.verdict is not Verdict.SAFE
    assert any("only in case" in f.detail for f in report.findings)


@pytest.mark.parametrize("spelling", ["'object'", "'i8,O'", "[('a', '<i8'), ('b', [('c', 'O')])]"])
def test_bypass_npy_object_descr_spellings(spelling: str, tmp_path: Path) -> None:
    """numpy.load reads the header's descr with numpy.dtype: every spelling of "objects"
    unpickles the data."""
    marker = tmp_path / "MARKER"
    good = io.BytesIO()
    np.save(good, np.array([None], dtype=object), allow_pickle=True)
    raw = good.getvalue()
    hlen = int.from_bytes(raw[8:10], "little")
    header = raw[10 : 10 + hlen].decode("latin-1").replace("'|O'", spelling).rstrip()
    header += " " * ((64 - (11 + len(header)) % 64) % 64) + "\n"
    data = (raw[:8] + len(header).to_bytes(2, "little") + header.encode("latin-1")
            + payloads.payload_pickle(marker, protocol=2))
    try:
        np.load(io.BytesIO(data), allow_pickle=True)
    except Exception:  # noqa: BLE001, S110 - the payload ran before the shape check failed
        pass
    assert marker.exists()
    marker.unlink()
    assert scan_bytes(data).verdict is Verdict.UNSAFE
    _refused(data)
    assert not marker.exists()
