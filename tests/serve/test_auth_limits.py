"""API keys, token buckets and the .npy decoder, without a server."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import re
import stat
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from bastion.core.errors import ConfigurationError, InputValidationError
from bastion.guard.schema import TensorSchema
from bastion.serve.auth import ApiKey, KeyStore, create_key, hash_key
from bastion.serve.config import ServeConfig
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


_H1, _H2 = hash_key("k1"), hash_key("k2")


def _keys(*entries: tuple[object, object]) -> str:
    return json.dumps({"keys": [{"name": n, "sha256": h} for n, h in entries]})


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "bastion apikey create"),
        ("{", "not valid JSON"),
        ('{"keys": [{"name": 1}]}', "entry 0"),
        ("[" * 100_000, "not valid JSON: nested too deeply"),
        (_keys(("a", _H1), ("a", _H2)), "keys 0 and 1 are both named 'a'"),
        (_keys(("a", _H1), ("b", _H1)), r"keys 0 \('a'\) and 1 \('b'\) have the same digest"),
        (_keys(("", _H1)), "entry 0: key name must be 1-64 .* got ''"),
        (_keys(("a\nINFO fake", _H1)), r"entry 0: key name .* got 'a\\nINFO fake'"),
        (_keys(("a\n", _H1)), r"entry 0: key name .* got 'a\\n'"),
        (_keys(("ok", _H1), ("b", _H1.upper())), "entry 1: key 'b': 'sha256' must be 64 lowercase"),
        (json.dumps({"keys": [{"name": "a", "sha256": _H1, "created": 5}]}), "'created' must be"),
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


def test_create_key_refuses_a_file_the_load_refuses_and_non_str_names(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(_keys(("a", _H1), ("a", _H2)))
    with pytest.raises(ConfigurationError, match="both named 'a'"):
        create_key(path, "z")
    assert path.read_text() == _keys(("a", _H1), ("a", _H2))  # untouched
    for name in (5, None, b"a", "a\n"):
        with pytest.raises(ConfigurationError, match=f"key name .* got {re.escape(repr(name))}"):
            create_key(tmp_path / "other.json", name)  # type: ignore[arg-type]
    assert not (tmp_path / "other.json").exists()


def test_create_key_turns_os_errors_into_configuration_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    cases = [
        (tmp_path, "is a directory"),
        (Path("."), "is a directory"),
        (tmp_path / "file" / "k.json", "cannot create the folder of key file .*k.json: "),
        (Path("/proc/k.json"), "cannot write key file /proc/k.json: No such file"),
    ]
    for path, match in cases:
        with pytest.raises(ConfigurationError, match=match):
            create_key(path, "a")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores modes")
def test_create_key_in_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(ConfigurationError, match="cannot write key file .*Permission denied"):
        create_key(folder / "k.json", "a")


@given(st.one_of(st.text(), st.binary(), st.integers(), st.floats(), st.none(),
                 st.lists(st.text(max_size=3), max_size=2)))
def test_authenticate_never_raises_and_matches_only_the_key(key: object) -> None:
    assume(key != "k1")
    store = KeyStore(keys=(ApiKey(name="a", sha256=_H1),))
    assert store.authenticate(key) is None
    assert store.authenticate("k1") == "a"


def test_a_key_file_others_may_read_loads_with_a_warning(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.json"
    path.write_text(_keys(("a", _H1)))
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="bastion.serve"):
        KeyStore.load(path)
        assert not caplog.records
        path.chmod(0o666)
        assert KeyStore.load(path).authenticate("k1") == "a"
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "mode 0666" in caplog.text and f"chmod 600 {path}" in caplog.text


_INT_FIELDS = {"port": "an integer 0-65535", "max_body_bytes": "an integer >= 1",
               "max_batch": "an integer >= 1", "burst": "an integer >= 1",
               "workers": "an integer >= 1"}
_REAL_FIELDS = {"rate_per_second": "a finite number > 0", "timeout_seconds": "a finite number > 0"}


@pytest.mark.parametrize("field", [*_INT_FIELDS, *_REAL_FIELDS])
@pytest.mark.parametrize("value", [math.nan, math.inf, 0, -1, "3", True, 70_000.0])
def test_serve_config_names_each_field_and_its_rule(field: str, value: object) -> None:
    what = {**_INT_FIELDS, **_REAL_FIELDS}[field]
    if (field == "port" and value == 0) or (field in _REAL_FIELDS and value == 70_000.0):
        ServeConfig(**{field: value})  # type: ignore[arg-type]  # valid: no error
        return
    with pytest.raises(ConfigurationError, match=f"^{field} must be {what}, got "
                       f"{re.escape(repr(value))}$"):
        ServeConfig(**{field: value})  # type: ignore[arg-type]


def test_serve_config_keeps_valid_values() -> None:
    port: Any = np.int64(0)
    config = ServeConfig(port=port, rate_per_second=5, timeout_seconds=0.5)
    assert (config.port, config.rate_per_second, config.timeout_seconds) == (0, 5.0, 0.5)
    assert type(config.port) is int
