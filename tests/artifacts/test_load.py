"""bastion.load: verify, scan and deserialize the same bytes; refuse everything else."""

from __future__ import annotations

import builtins
import io
import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bastion
from _helpers.custom_classes import Checkpoint
from _helpers.payloads import ALL_KINDS, build
from bastion.artifacts.load import load_bytes
from bastion.artifacts.scan.policy import DEFAULT_POLICY


def deep_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and type(a) is type(b)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.stride() == b.stride()
            and a.requires_grad == b.requires_grad
            and torch.equal(a, b)
        )
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return type(a) is type(b) and list(a) == list(b) and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(deep_equal, a, b))
    return type(a) is type(b) and a == b


def _training_state() -> dict[str, Any]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 1, 5, 5)).sum().backward()
    opt.step()
    base = torch.arange(24.0).reshape(4, 6)
    return {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "view": base[1:3],
        "transposed": base.t(),
        "half": torch.ones(3, dtype=torch.float16),
        "bf16": torch.full((2,), 0.5, dtype=torch.bfloat16),
        "int8": torch.arange(-3, 3, dtype=torch.int8),
        "bool": torch.tensor([True, False]),
        "param": torch.nn.Parameter(torch.ones(2)),
        "empty": torch.empty(0),
        "epoch": 7,
        "note": "hello",
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_checkpoint_loads_like_torch_load(tmp_path: Path, legacy: bool) -> None:
    state = _training_state()
    path = tmp_path / "ckpt.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    expected = torch.load(path, weights_only=False)
    got = bastion.load(path)
    assert deep_equal(expected, got)
    # views share their storage exactly as torch.load rebuilds them
    assert (
        got["view"].untyped_storage().data_ptr() == got["transposed"].untyped_storage().data_ptr()
    )


def test_numpy_joblib_pickle_and_safetensors_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    arrays = {"x": np.arange(6.0).reshape(2, 3), "labels": np.array([1, 2], dtype=np.int64)}
    np.save(tmp_path / "a.npy", arrays["x"])
    np.savez(tmp_path / "b.npz", **arrays)
    joblib.dump(arrays, tmp_path / "c.joblib", compress=3)
    (tmp_path / "d.pkl").write_bytes(pickle.dumps({"a": [1, 2.5, "x"], "t": (None, True)}))
    save_file({"w": torch.ones(2, 2)}, tmp_path / "e.safetensors")
    assert deep_equal(bastion.load(tmp_path / "a.npy"), arrays["x"])
    assert deep_equal(bastion.load(tmp_path / "b.npz"), arrays)
    assert deep_equal(bastion.load(tmp_path / "c.joblib"), arrays)
    assert bastion.load(tmp_path / "d.pkl") == {"a": [1, 2.5, "x"], "t": (None, True)}
    assert torch.equal(bastion.load(tmp_path / "e.safetensors")["w"], torch.ones(2, 2))


def test_sklearn_estimator_loads_and_predicts(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    joblib.dump(model, tmp_path / "model.joblib")
    loaded = bastion.load(tmp_path / "model.joblib")
    assert np.array_equal(loaded.predict(x), model.predict(x))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_malicious_sample_is_refused_and_never_fires(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "MARKER"
    path = build(kind, tmp_path, marker)
    with pytest.raises(bastion.UnsafeArtifactError):
        bastion.load(path)
    assert not marker.exists(), f"{kind}: payload ran during bastion.load"


def test_refusal_lists_the_findings(tmp_path: Path) -> None:
    path = build(ALL_KINDS[0], tmp_path, tmp_path / "MARKER")
    with pytest.raises(bastion.UnsafeArtifactError) as info:
        bastion.load(path)
    assert info.value.findings, "the error carries the findings that caused it"
    assert info.value.path == path


def test_user_class_is_unknown_until_allowed(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pkl"
    # numpy weights: a tensor pickled with plain pickle goes through torch.storage._load_from_bytes
    path.write_bytes(pickle.dumps(Checkpoint({"w": np.ones(2)}, 3)))
    with pytest.raises(bastion.UnsafeArtifactError, match="unknown"):
        bastion.load(path)
    policy = DEFAULT_POLICY.extended(["_helpers.custom_classes.Checkpoint"])
    loaded = bastion.load(path, policy=policy)
    assert isinstance(loaded, Checkpoint) and loaded.step == 3


def test_sha256_is_checked_on_the_bytes(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, path)
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(bastion.load(path, sha256=good.upper())["w"], torch.ones(2))
    with pytest.raises(bastion.IntegrityError, match="SHA-256"):
        bastion.load(path, sha256="0" * 64)
    with pytest.raises(bastion.ConfigurationError, match="64 hex"):
        bastion.load(path, sha256="abc")


def test_signature_is_checked_on_the_bytes(tmp_path: Path) -> None:
    from bastion.artifacts.keys import generate_keypair
    from bastion.artifacts.sign import sign

    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, path)
    keys = generate_keypair(tmp_path / "k.pem")
    other = generate_keypair(tmp_path / "other.pem")
    sig = sign(path, keys.private_key)
    assert torch.equal(
        bastion.load(path, signature=sig, public_keys=keys.public_key)["w"], torch.ones(2)
    )
    with pytest.raises(bastion.SignatureError):
        bastion.load(path, signature=sig, public_keys=other.public_key)
    with pytest.raises(bastion.ConfigurationError):
        bastion.load(path, signature=sig)
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF  # flip a byte inside the archive
    path.write_bytes(bytes(data))
    with pytest.raises(bastion.IntegrityError, match="w.pt"):
        bastion.load(path, signature=sig, public_keys=keys.public_key)


def test_file_is_opened_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checks and load see the same bytes: nothing re-reads the file after it was checked."""
    import hashlib

    path = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    opened: list[str] = []
    real_open = builtins.open
    real_path_open = Path.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(path):
            opened.append("open")
        return real_open(file, *args, **kwargs)

    def counting_path_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        if str(self) == str(path):
            opened.append("Path.open")
        return real_path_open(self, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(Path, "open", counting_path_open)
    bastion.load(path, sha256=digest)
    assert len(opened) == 1


def test_failed_restricted_load_never_falls_back(tmp_path: Path) -> None:
    # Only allowlisted globals, but the call is malformed: OrderedDict(1, 2, 3).
    data = b"\x80\x02ccollections\nOrderedDict\nK\x01K\x02K\x03\x87R."
    with pytest.raises(bastion.UnsafeArtifactError, match="could not be loaded safely"):
        load_bytes(data)


def test_allocation_by_integer_is_bounded() -> None:
    data = b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00\x7f\x85R."  # bytearray(2**31 - ...)
    with pytest.raises(bastion.UnsafeArtifactError):
        load_bytes(data)


def test_storage_larger_than_its_record_is_refused(tmp_path: Path) -> None:
    import zipfile

    buf = io.BytesIO()
    torch.save({"w": torch.ones(4)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename.endswith("/data/0"):
                payload = payload[:4]  # one float instead of four
            dst.writestr(info.filename, payload)
    with pytest.raises(bastion.UnsafeArtifactError, match="declares"):
        load_bytes(out.getvalue())


def test_duplicate_record_names_are_ambiguous(tmp_path: Path) -> None:
    import zipfile

    buf = io.BytesIO()
    torch.save({"w": torch.ones(1)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        dst.writestr("archive/DATA.pkl", pickle.dumps({"other": 1}, protocol=2))
    with pytest.raises(bastion.UnsafeArtifactError, match="ambiguous"):
        load_bytes(out.getvalue())


def test_missing_and_non_regular_paths(tmp_path: Path) -> None:
    with pytest.raises(bastion.ConfigurationError, match="does not exist"):
        bastion.load(tmp_path / "nope.pt")
    with pytest.raises(bastion.ConfigurationError, match="not a regular file"):
        bastion.load(tmp_path)


def _benign_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save(OrderedDict(w=torch.arange(6.0).reshape(2, 3), b=torch.ones(2)), buf)
    return buf.getvalue()


_BENIGN = _benign_checkpoint()
_BENIGN_PICKLE = pickle.dumps({"w": np.arange(4.0), "n": [1, 2]}, protocol=2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.sampled_from(["zip", "pickle"]),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(1, 10**6)),
)
def test_mutated_files_load_or_refuse_cleanly(
    which: str, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(_BENIGN if which == "zip" else _BENIGN_PICKLE)
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        del data[cut % len(data) :]
    try:
        load_bytes(bytes(data))
    except bastion.BastionError:
        pass  # a clear refusal is the other acceptable outcome


def test_legacy_file_with_lying_storage_size_is_refused() -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf, _use_new_zipfile_serialization=False)
    data = bytearray(buf.getvalue())
    # the raw storage starts after the pickles: its 8-byte element count comes 12 bytes from the end
    pos = len(data) - 12 - 8
    assert struct.unpack("<q", data[pos : pos + 8]) == (3,)
    data[pos : pos + 8] = struct.pack("<q", 1000)
    with pytest.raises(bastion.UnsafeArtifactError):
        load_bytes(bytes(data))
