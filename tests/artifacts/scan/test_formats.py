"""Format sniffing, safetensors header checks, the tolerant zip reader, odd files."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bastion.artifacts.scan import Verdict, scan_bytes, scan_file, sniff_format
from bastion.artifacts.scan.zipread import ZipFormatError, list_zip, read_member


def _torch_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    return buf.getvalue()


def _safetensors(header: Any, data: bytes = b"\x00" * 8) -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw)) + raw + data


def test_sniff_format_by_bytes_not_name() -> None:
    assert sniff_format(_torch_bytes()) == "torch-zip"
    assert sniff_format(pickle.dumps(1, protocol=2)) == "pickle"
    assert sniff_format(b"") == "empty"
    npy = io.BytesIO()
    np.save(npy, np.arange(3))
    assert sniff_format(npy.getvalue()) == "npy"
    assert sniff_format(_safetensors({})) == "safetensors"
    legacy = io.BytesIO()
    torch.save({}, legacy, _use_new_zipfile_serialization=False)
    assert sniff_format(legacy.getvalue()) == "torch-legacy"


def test_empty_and_text_files_are_not_models(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    assert scan_file(tmp_path / "empty.pt").verdict is Verdict.SAFE
    report = scan_bytes(b'{"hidden_size": 768}\n')
    assert report.verdict is Verdict.SAFE and report.format == "unknown"


_F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(("header", "message"), [
    ({"a": {**_F32, "dtype": "F99"}}, "unknown dtype"),
    ({"a": {**_F32, "shape": [-2]}}, "non-negative"),
    ({"a": {**_F32, "data_offsets": [0, 800]}}, "outside"),
    ({"a": {**_F32, "shape": [3]}}, "do not hold"),
    ({"a": _F32, "b": {**_F32, "data_offsets": [4, 8], "shape": [1]}}, "overlap"),
    ({"__metadata__": {"k": 1}}, "strings to strings"),
    (b"{not json", "not valid JSON"),
])
def test_malformed_safetensors(header: Any, message: str) -> None:
    report = scan_bytes(_safetensors(header))
    assert report.verdict is Verdict.UNKNOWN
    assert any(message in f.detail for f in report.findings), report.findings


def test_safetensors_header_length_past_end() -> None:
    data = struct.pack("<Q", 10**6) + b"{}"
    assert scan_bytes(data).verdict is not Verdict.SAFE


def test_valid_safetensors_is_safe() -> None:
    assert scan_bytes(_safetensors({"a": _F32, "__metadata__": {"k": "v"}})).verdict is \
        Verdict.SAFE


def test_zipread_reads_what_zipfile_refuses() -> None:
    from _helpers.payloads import _patch_zip

    data = _patch_zip(bytearray(_torch_bytes()), crc=True)  # bad CRCs everywhere
    listing = list_zip(bytes(data))
    first = listing.members[0]
    assert read_member(bytes(data), first, limit=1 << 20)
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf, pytest.raises(zipfile.BadZipFile):
        zf.read(first.name)


def test_zipread_truncated_deflate_is_an_error() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.pkl", bytes(range(256)) * 64)
    data = bytearray(buf.getvalue())
    member = list_zip(bytes(data)).members[0]
    short = type(member)(**{**member.__dict__, "compressed_size": member.compressed_size // 2})
    with pytest.raises(ZipFormatError, match="truncated"):
        read_member(bytes(data), short, limit=1 << 20)


def test_zipread_duplicate_names_are_an_anomaly() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning):
        zf.writestr("data.pkl", pickle.dumps(1))
        zf.writestr("data.pkl", pickle.dumps(2))
    assert any("share a name" in a for a in list_zip(buf.getvalue()).anomalies)


def test_scan_bytes_does_not_copy_tensor_payloads() -> None:
    """A memoryview over read-only bytes works, and the result matches bytes input."""
    data = _torch_bytes()
    assert scan_bytes(memoryview(data)).to_dict() == scan_bytes(data).to_dict()


def _pt2(path: Path) -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x).relu()

    torch.export.save(torch.export.export(Net(), (torch.randn(1, 3),)), str(path))


@pytest.mark.filterwarnings("ignore")
def test_pt2_archive_benign_and_with_pickled_member(tmp_path: Path) -> None:
    from _helpers.payloads import payload_pickle

    path = tmp_path / "model.pt2"
    _pt2(path)
    report = scan_file(path)
    assert (report.format, report.verdict) == ("pt2", Verdict.SAFE), report.problems
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename.endswith("/data/weights/weight_0"):
                body = payload_pickle(tmp_path / "MARKER")  # a weight saved with use_pickle
            dst.writestr(info, body)
    assert scan_file(evil).verdict is Verdict.UNSAFE


def test_pt2_raw_weights_that_start_like_an_opcode_are_tensor_bytes(tmp_path: Path) -> None:
    """Regression: a .pt2 weight file is read by torch.export.load as raw bytes when its config
    says use_pickle=false; a bias whose first byte is LONG_BINGET ('j') was walked as a pickle
    and reported as a memo bomb."""
    import io

    import torch

    from bastion.artifacts.scan import Verdict, scan_file

    model = torch.nn.Linear(4, 2)
    with torch.no_grad():
        raw = bytearray(model.bias.detach().numpy().tobytes())
        raw[0:2] = b"ji"  # LONG_BINGET with a huge memo index, as opcodes
        model.bias.copy_(torch.frombuffer(raw, dtype=torch.float32))
    program = torch.export.export(model, (torch.zeros(1, 4),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path = tmp_path / "linear.pt2"
    path.write_bytes(buffer.getvalue())
    report = scan_file(path)
    assert report.verdict is Verdict.SAFE, [f.detail for f in report.findings]
