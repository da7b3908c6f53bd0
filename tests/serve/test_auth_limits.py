"""API keys, token buckets and the .npy decoder, without a server."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard.schema import TensorSchema
from bastion.serve.auth import KeyStore, create_key, hash_key
from bastion.serve.limits import RateLimiter, Refusal, TokenBucket
from bastion.serve.payload import decode_npy, parse_predict


def test_key_file_holds_only_digests_mode_0600_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first, second = create_key(path, "alice"), create_key(path, "bob")
    text = path.read_text()
    assert first not in text and second not in text
    assert hash_key(first) in text and hash_key(second) in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    store = KeyStore.load(path)
    assert [store.authenticate(k) for k in (first, second, "nope", "")] == [
        "alice", "bob", None, None,
    ]
    assert len(first) >= 43  # 32 random bytes, url-safe base64
    with pytest.raises(ConfigurationError, match="already has a key named 'alice'"):
        create_key(path, "alice")
    with pytest.raises(ConfigurationError, match="key name"):
        create_key(path, "bad name!")


def test_concurrent_creates_keep_every_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    threads = [threading.Thread(target=create_key, args=(path, f"k{i}")) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(k.name for k in KeyStore.load(path).keys) == sorted(f"k{i}" for i in range(8))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "bastion apikey create"),
        ("{", "not valid JSON"),
        ('{"keys": [{"name": 1}]}', "entry 0"),
    ],
)
def test_bad_key_files_are_configuration_errors(tmp_path: Path, content: str | None,
                                                match: str) -> None:
    path = tmp_path / "keys.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigurationError, match=match):
        KeyStore.load(path)


def test_token_bucket_allows_burst_then_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(Refusal, match="rate limit") as info:
        limiter.check("a")
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "1"
    limiter.check("b")  # buckets are per key
    now[0] = 0.5  # one token refilled at 2/s
    limiter.check("a")
    with pytest.raises(Refusal):
        limiter.check("a")
    bucket = TokenBucket(rate=1.0, capacity=1, clock=lambda: 0.0)
    assert bucket.take() == 0.0 and bucket.take() == pytest.approx(1.0)


def _npy(array: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


SCHEMA = TensorSchema(shape=("batch", 1, 4, 4), min=0.0, max=1.0)


def test_npy_round_trip_casts_float_kinds_and_fortran_order() -> None:
    x = np.random.default_rng(0).random((3, 1, 4, 4))
    out = decode_npy(_npy(np.asfortranarray(x)), SCHEMA, max_elements=1000)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), torch.from_numpy(x), atol=1e-6)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ("@@@", "not valid base64"),
        (base64.b64encode(b"not an npy").decode(), "not a valid .npy header"),
        (_npy(np.zeros((2, 1, 4, 5), np.float32)), "dimension 3 is 5"),
        (_npy(np.zeros((2, 16), np.float32)), "rank 2"),
        (_npy(np.zeros((2, 1, 4, 4), np.int32)), "does not match"),
        (_npy(np.array([["a"] * 4] * 4)), "not a plain numeric dtype"),
        (_npy(np.zeros((100, 1, 4, 4), np.float32)), "more than the limit"),
        (_npy(np.zeros((2, 1, 4, 4), np.float32))[:-8], "header promises"),
    ],
)
def test_npy_refusals_name_the_problem(payload: str, match: str) -> None:
    with pytest.raises(InputValidationError, match=match):
        decode_npy(payload, SCHEMA, max_elements=1000)


def test_npy_object_arrays_are_refused_before_any_unpickling() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputValidationError, match="not a plain numeric dtype"):
        decode_npy(base64.b64encode(buf.getvalue()).decode(), SCHEMA, max_elements=1000)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{", 400, "malformed_json"),
        (b"\xff\xfe", 400, "malformed_json"),
        (b"[" * 100_000, 400, "malformed_json"),
        (b'{"inputs": [], "npy": ""}', 422, "invalid_request"),
        (b'{"other": 1}', 422, "invalid_request"),
        (json.dumps({"inputs": [[[["x"] * 4] * 4]]}).encode(), 422, "invalid_input"),
        (json.dumps({"inputs": [[[[0.0] * 4] * 4]] * 9}).encode(), 413, "batch_too_large"),
    ],
)
def test_parse_predict_refusals(body: bytes, status: int, error: str) -> None:
    with pytest.raises(Refusal) as info:
        parse_predict(body, SCHEMA, max_batch=8)
    assert (info.value.status, info.value.error) == (status, error)
