"""Malformed requests never get a 5xx: hypothesis against the app, schemathesis against a live
server and its own OpenAPI document."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.guard.outputs import OutputChecker
from bastion.guard.policy import InputGuard
from bastion.guard.schema import TensorSchema
from bastion.serve.app import create_app
from bastion.serve.auth import KeyStore
from bastion.serve.config import ServeConfig
from bastion.serve.pipeline import Pipeline

SCHEMA = TensorSchema(shape=("batch", 2, 3), min=0.0, max=1.0)


@pytest.fixture(scope="module")
def small_app(keys: tuple[Path, str]) -> Any:
    """A tiny model behind the same app: fast enough for hundreds of examples."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4))
    pipeline = Pipeline(model=model, schema=SCHEMA, guard=InputGuard(SCHEMA, policy="repair"),
                        output_checker=OutputChecker(4))
    config = ServeConfig(max_body_bytes=20_000, max_batch=8, rate_per_second=1e6, burst=10**6)
    return create_app(pipeline, KeyStore.load(keys[0]), config)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=40,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps({"inputs": v}).encode()),
    st.text(max_size=50).map(lambda t: json.dumps({"npy": t}).encode()),
    st.binary(max_size=200).map(
        lambda b: json.dumps({"npy": __import__("base64").b64encode(b).decode()}).encode()
    ),
)


@pytest.fixture(scope="module")
def small_server(small_app: Any, start: Any, connect: Any) -> Any:
    with start(small_app) as live, connect(live) as client:
        yield live, client


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies, content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_malformed_bodies_never_5xx(small_server: Any, body: bytes, content_type: str) -> None:
    r = small_server[1].post("/v1/predict", content=body, headers={"content-type": content_type})
    assert r.status_code < 500, (body, r.status_code, r.text)
    answer = r.json()
    assert ("predictions" in answer) == (r.status_code == 200), answer
    if r.status_code != 200:
        assert answer["error"] and "Traceback" not in r.text


@pytest.mark.skipif(shutil.which("st", path=str(Path(sys.executable).parent)) is None,
                    reason="schemathesis is not installed in this environment")
def test_schemathesis_against_own_openapi_no_5xx(small_server: Any,
                                                 keys: tuple[Path, str]) -> None:
    st_cli = str(Path(sys.executable).parent / "st")
    result = subprocess.run(
        [st_cli, "run", f"{small_server[0].url}/openapi.json",
         "-H", f"Authorization: Bearer {keys[1]}",
         "--checks", "not_a_server_error,status_code_conformance,"
         "content_type_conformance,response_schema_conformance",
         "--max-examples", "25", "--seed", "1", "--generation-database", "none",
         "--request-timeout", "20", "--max-time", "20"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
