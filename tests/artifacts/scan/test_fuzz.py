"""Property tests: mutated files never make the scanner raise, and broken pickles never pass."""

from __future__ import annotations

import io
import json
import pickle
import struct
from functools import cache

import joblib
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.artifacts.scan import FileReport, ScanLimits, Verdict, scan_bytes

_LIMITS = ScanLimits(max_opcodes=200_000, max_member_bytes=1 << 22, max_total_bytes=1 << 24)
_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow])


@cache
def _samples() -> dict[str, bytes]:
    torch.manual_seed(0)
    out: dict[str, bytes] = {}
    buf = io.BytesIO()
    torch.save({"w": torch.randn(2, 2), "b": torch.zeros(2)}, buf)
    out["torch-zip"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"w": torch.randn(3)}, buf, _use_new_zipfile_serialization=False)
    out["torch-legacy"] = buf.getvalue()
    buf = io.BytesIO()
    joblib.dump({"a": np.arange(6.0)}, buf)
    out["joblib"] = buf.getvalue()
    out["pickle"] = pickle.dumps({"a": np.arange(3), "b": [1, "x", 2.5]}, protocol=4)
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "__metadata__": {"k": "v"}}).encode()
    out["safetensors"] = struct.pack("<Q", len(header)) + header + b"\x00" * 8
    return out


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(_samples()[draw(st.sampled_from(sorted(_samples())))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            del data[pos:]
    return bytes(data)


@_SETTINGS
@given(_mutated())
def test_mutated_files_never_raise(data: bytes) -> None:
    report = scan_bytes(data, limits=_LIMITS)
    assert isinstance(report, FileReport)
    assert report.size == len(data)


@_SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert isinstance(scan_bytes(data, limits=_LIMITS), FileReport)


@_SETTINGS
@given(st.data())
def test_truncated_pickle_is_never_safe(data: st.DataObject) -> None:
    full = _samples()["pickle"]
    cut = data.draw(st.integers(1, len(full) - 1))
    assert scan_bytes(full[:cut]).verdict is not Verdict.SAFE


@_SETTINGS
@given(st.data())
def test_truncated_torch_zip_is_never_safe(data: st.DataObject) -> None:
    full = _samples()["torch-zip"]
    cut = data.draw(st.integers(1, len(full) - 1))
    assert scan_bytes(full[:cut]).verdict is not Verdict.SAFE
