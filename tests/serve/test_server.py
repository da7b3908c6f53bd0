"""The server on loopback: auth, limits, validation policies, checks in the answer, metrics."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bastion.core.errors import ConfigurationError
from bastion.guard.monitors import Calibration
from bastion.guard.outputs import OutputChecker
from bastion.guard.policy import InputGuard
from bastion.guard.schema import TensorSchema
from bastion.serve.build import ModelSpec, guard_stages
from bastion.serve.pipeline import Pipeline


@pytest.fixture(scope="module")
def schema(demo_parts: Any) -> TensorSchema:
    return TensorSchema.infer(demo_parts[1], bounds=(0.0, 1.0))


def make(demo_parts: Any, schema: TensorSchema, policy: str = "reject", **kw: Any) -> Pipeline:
    model, _, x_test = demo_parts
    default = x_test.mean(0) if policy == "substitute" else None
    return Pipeline(model=model, schema=schema,
                    guard=InputGuard(schema, policy=policy, default=default),
                    output_checker=OutputChecker(10), **kw)


@pytest.fixture(scope="module")
def server(demo_parts: Any, schema: TensorSchema, start: Any) -> Any:
    with start(make(demo_parts, schema), max_body_bytes=200_000, max_batch=16) as live:
        yield live


def body(x: torch.Tensor) -> dict[str, Any]:
    return {"inputs": x.tolist()}


def test_auth_on_every_endpoint_but_health(server: Any, connect: Any, demo_parts: Any) -> None:
    x = demo_parts[2][:2]
    with connect(server, None) as anon, connect(server, "wrong-key") as wrong, \
            connect(server) as ok:
        assert anon.get("/healthz").json()["status"] == "ok"
        for c in (anon, wrong):
            for method, path in [("POST", "/v1/predict"), ("GET", "/metrics"),
                                 ("GET", "/v1/monitor"), ("GET", "/openapi.json"),
                                 ("GET", "/docs")]:
                r = c.request(method, path, json=body(x) if method == "POST" else None)
                assert r.status_code == 401, (path, r.text)
                assert r.json()["error"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
        r = ok.post("/v1/predict", json=body(x))
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["predictions"] == demo_parts[0](x).argmax(1).tolist()
        assert len(answer["probabilities"]) == 2
        assert all(math.isclose(sum(p), 1.0, abs_tol=1e-4) for p in answer["probabilities"])
        assert answer["request_id"] == r.headers["x-request-id"]
        assert answer["checks"]["input"]["valid"] and answer["checks"]["output"]["ok"]
        assert ok.get("/openapi.json").json()["paths"]["/v1/predict"]
        assert 'bastion_requests_total{endpoint="/v1/predict",status="200"}' in ok.get(
            "/metrics").text


def test_npy_body_gives_the_same_answer(server: Any, connect: Any, demo_parts: Any) -> None:
    x = demo_parts[2][:3]
    buf = io.BytesIO()
    np.save(buf, x.numpy(), allow_pickle=False)
    with connect(server) as c:
        by_npy = c.post("/v1/predict", json={"npy": base64.b64encode(buf.getvalue()).decode()})
        by_json = c.post("/v1/predict", json=body(x))
    assert by_npy.status_code == 200, by_npy.text
    assert by_npy.json()["predictions"] == by_json.json()["predictions"]


def test_size_limits_refuse_with_413(server: Any, connect: Any, demo_parts: Any) -> None:
    with connect(server) as c:
        r = c.post("/v1/predict", content=b"[" + b"0," * 200_000 + b"0]",
                   headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"

        def chunks() -> Any:  # no Content-Length: counted while streaming
            for _ in range(100):
                yield b" " * 10_000

        r = c.post("/v1/predict", content=chunks())
        assert r.status_code == 413 and "200000 bytes" in r.json()["message"]
        r = c.post("/v1/predict", json=body(demo_parts[2][:17] * 0))
        assert r.status_code in (413,), r.text  # 17 samples > max_batch 16


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"inputs": [[1, 2, 3]]}', 422, "levels of nested lists"),
        (b'{"inputs": "x"}', 422, "invalid_request"),
        (b'{"npy": "AAAA"}', 422, "npy"),
    ],
)
def test_malformed_requests_are_4xx_naming_the_problem(
    server: Any, connect: Any, payload: bytes, status: int, needle: str
) -> None:
    with connect(server) as c:
        r = c.post("/v1/predict", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.text and "Traceback" not in r.text


def test_reject_policy_names_every_violation(server: Any, connect: Any, demo_parts: Any) -> None:
    x = demo_parts[2][:3].clone()
    x[0, 0, 0, 0] = float("nan")
    x[2, 0, 5, 5] = 7.0
    with connect(server) as c:
        r = c.post("/v1/predict", content=json.dumps(body(x)),  # NaN: Python's JSON extension
                   headers={"content-type": "application/json"})
        wrong = c.post("/v1/predict", json=body(demo_parts[2][:2, :, :20, :20]))
    assert r.status_code == 422, r.text
    violations = r.json()["detail"]
    assert {(v["rule"], v["sample_index"]) for v in violations} >= {("non_finite", 0), ("max", 2)}
    assert wrong.status_code == 422 and "shape" in wrong.json()["message"]


@pytest.mark.parametrize("policy", ["repair", "substitute"])
def test_repair_and_substitute_are_applied_and_reported(
    demo_parts: Any, schema: TensorSchema, start: Any, connect: Any, policy: str
) -> None:
    x = demo_parts[2][:3].clone()
    x[1, 0, 3, 3] = 5.0
    with start(make(demo_parts, schema, policy)) as live, connect(live) as c:
        r = c.post("/v1/predict", json=body(x))
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]["input"]
    assert checks["policy"] == policy and not checks["valid"]
    assert {a["sample_index"] for a in checks["actions"]} == {1}
    expected = {"repair": "clip", "substitute": "substitute"}[policy]
    assert {a["action"] for a in checks["actions"]} == {expected}


def test_rate_limit_429_per_key(demo_parts: Any, schema: TensorSchema, start: Any,
                                connect: Any) -> None:
    with start(make(demo_parts, schema), rate_per_second=0.01, burst=3) as live, \
            connect(live) as c:
        codes = [c.get("/v1/monitor").status_code for _ in range(5)]
        r = c.get("/metrics")
    assert codes == [200, 200, 200, 429, 429]
    assert r.status_code == 429 and r.json()["error"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1


def test_the_checks_text_is_reused_only_for_the_same_parts() -> None:
    from bastion.guard._json_text import JsonText, object_text
    from bastion.serve.app import _ChecksText

    texts = _ChecksText()
    valid, clean = JsonText.of({"valid": True}), JsonText.of({"ok": True})
    first = texts({"input": valid, "output": clean})
    assert first == object_text([("input", valid.text), ("output", clean.text)])
    assert texts({"input": valid, "output": clean}) is first  # the same parts: reused
    flagged = JsonText.of({"ok": True, "flagged": {"low_margin": [0]}})
    assert json.loads(texts({"input": valid, "output": flagged}))["output"] == flagged.value
    equal_but_new = JsonText.of({"valid": True})  # equal text, another object: encoded again
    again = texts({"input": equal_but_new, "output": flagged})
    assert again == texts({"input": valid, "output": flagged})
    assert json.loads(texts({"input": valid})) == {"input": {"valid": True}}  # fewer parts
    assert texts({}) == "{}"


_CAL = Calibration(window=20, n_windows=20)


def _npz(tmp_path: Path, x: torch.Tensor) -> Path:
    path = tmp_path / "ref.npz"
    np.savez(path, x=x.numpy())
    return path


@pytest.mark.parametrize(
    ("schema", "match"),
    [
        ('shape = ["batch", 3]', r"schema .*s.toml \(shape \(batch, 3\), dtype float32\) does not "
         r"fit the model: .*shape \(2, 3\).* RuntimeError: .*conv2d"),
        ('shape = ["batch", 1, 28, 28]\ndtype = "float64"', r"s.toml \(shape \(batch, 1, 28, 28\), "
         r"dtype float64\) does not fit the model: .*RuntimeError: Input type \(double\)"),
        ('shape = ["*", "*", "*", "*"]', r"leaves sample dimension\(s\) 1, 2, 3 free; .*"
         r"shape = \[batch, 1, 28, 28\]"),
        ('shape = ["batch", 1, 28, 28]\nmax = 0.5', r"reference data .*MNIST.* has shape "
         r"\(1000, 1, 28, 28\), dtype float32; the schema .*s.toml expects .*: [0-9]+ violation"),
    ],
)
def test_a_schema_that_does_not_fit_the_model_stops_the_build(
    demo_parts: Any, tmp_path: Path, schema: str, match: str
) -> None:
    (tmp_path / "s.toml").write_text(schema)
    with pytest.raises(ConfigurationError, match=match):
        guard_stages(demo_parts[0], ModelSpec(), schema=tmp_path / "s.toml", calibration=_CAL)


@pytest.mark.parametrize(
    ("reference", "match"),
    [
        (torch.rand(50, 3), r"shape \(50, 3\), dtype float32; the model expects shape "
         r"\(N, 1, 28, 28\), dtype float32 and fails on it: RuntimeError"),
        (torch.rand(50, 784), r"shape \(50, 784\), dtype float32; the model expects"),
        (torch.rand(50, 1, 28, 28).double(), r"ref.npz \(array 'x'\) has shape "
         r"\(50, 1, 28, 28\), dtype float64; the model expects .* dtype float32"),
        (torch.rand(50, 1, 28, 28) > 0.5, r"dtype bool; the model expects"),
    ],
)
def test_a_reference_the_model_cannot_take_stops_the_build(
    demo_parts: Any, tmp_path: Path, reference: torch.Tensor, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        guard_stages(demo_parts[0], ModelSpec(), reference=_npz(tmp_path, reference),
                     calibration=_CAL)


def test_a_reference_dtype_is_converted_only_when_the_schema_accepts_it(
    demo_parts: Any, tmp_path: Path
) -> None:
    ref = _npz(tmp_path, demo_parts[2][:200].double())
    only32 = tmp_path / "f32.toml"
    only32.write_text('shape = ["batch", 1, 28, 28]')
    with pytest.raises(ConfigurationError, match=r"dtype float64; the schema .*f32.toml expects "
                       r"shape \(batch, 1, 28, 28\), dtype float32: 1 violation\(s\): dtype x1"):
        guard_stages(demo_parts[0], ModelSpec(), schema=only32, reference=ref, calibration=_CAL)
    both = tmp_path / "both.toml"
    both.write_text('shape = ["batch", 1, 28, 28]\ndtype = ["float32", "float64"]')
    stages = guard_stages(demo_parts[0], ModelSpec(), schema=both, reference=ref,
                          calibration=_CAL)
    assert stages.reference.dtype == torch.float32  # as the server builds requests: dtype[0]
    assert torch.equal(stages.reference_logits, demo_parts[0](demo_parts[2][:200]).detach())
