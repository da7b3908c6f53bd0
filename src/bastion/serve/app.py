"""The FastAPI app of ``bastion serve``: auth, limits, the guarded pipeline, clean JSON errors.

Endpoints: ``POST /v1/predict``, ``GET /v1/monitor``, ``GET /metrics`` (Prometheus text),
``GET /healthz`` (the only one without a key) and the OpenAPI document and docs page.

Every answer that is not a success is ``{"error": CODE, "message": TEXT, "request_id": ID}``
(plus ``detail`` where there is more to say): a refused request gets a 4xx naming the problem;
an unexpected failure gets a bare 500 with no traceback; a timed-out inference gets a 503.

Example:
    >>> import torch
    >>> from bastion.guard.policy import InputGuard
    >>> from bastion.guard.schema import TensorSchema
    >>> from bastion.serve.auth import ApiKey, KeyStore, hash_key
    >>> schema = TensorSchema(shape=("batch", 2), min=0.0, max=1.0)
    >>> pipeline = Pipeline(model=torch.nn.Linear(2, 3), schema=schema, guard=InputGuard(schema))
    >>> app = create_app(pipeline, KeyStore(keys=(ApiKey(name="a", sha256=hash_key("k")),)))
    >>> sorted(r.path for r in app.routes if r.path.startswith("/v1"))
    ['/v1/monitor', '/v1/predict']
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from bastion._version import __version__
from bastion.guard._json_text import JsonText, object_text
from bastion.guard.outputs import FLAGS
from bastion.serve.auth import KeyStore
from bastion.serve.config import ServeConfig
from bastion.serve.limits import (
    BodySizeLimit,
    Gate,
    RateLimiter,
    Refusal,
    read_body,
    run_bounded,
)
from bastion.serve.metrics import CONTENT_TYPE, ServerMetrics
from bastion.serve.payload import PredictRequest, parse_predict
from bastion.serve.pipeline import Inference, Pipeline

__all__ = ["create_app"]

_log = logging.getLogger("bastion.serve")
_JSON = "application/json"
_bearer = HTTPBearer(auto_error=False, description="An API key from `bastion apikey create`.")
_BEARER = Depends(_bearer)


class PredictResponse(BaseModel):
    """The answer to a predict request."""

    predictions: list[int] = Field(description="Predicted class per sample.")
    probabilities: list[list[float]] = Field(description="Softmax probabilities per sample.")
    request_id: str = Field(description="The id under which the request is in the audit log.")
    checks: dict[str, Any] = Field(description="Input guard, output check and monitor results.")


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str = Field(description="A short machine-readable code, e.g. 'rate_limited'.")
    message: str = Field(description="What was wrong, for a human.")
    request_id: str | None = None
    detail: Any = None


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


def _error_response(request: Request, refusal: Refusal) -> JSONResponse:
    body = {
        "error": refusal.error,
        "message": refusal.message,
        "request_id": getattr(request.state, "request_id", None),
    }
    if refusal.detail is not None:
        body["detail"] = refusal.detail
    return JSONResponse(body, status_code=refusal.status, headers=refusal.headers)


def create_app(
    pipeline: Pipeline,
    keys: KeyStore,
    config: ServeConfig | None = None,
    *,
    metrics: ServerMetrics | None = None,
    public_docs: bool = False,
) -> FastAPI:
    """Build the app around a pipeline and a key store.

    Args:
        pipeline: the guarded (or bare) model.
        keys: the accepted API keys; at least one.
        config: limits (default :class:`ServeConfig`).
        metrics: the Prometheus metrics (default: a fresh registry).
        public_docs: serve ``/docs`` and ``/openapi.json`` without a key (default: keyed).
    """
    config = config or ServeConfig()
    metrics = metrics or ServerMetrics()
    limiter = RateLimiter(rate=config.rate_per_second, burst=config.burst)
    pools = _Pools(config.workers)
    checks_text = _ChecksText()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pools.start()
        yield
        pools.stop()
        pipeline.close()

    app = FastAPI(
        title="bastion serve",
        version=__version__,
        description="A guarded model: validated inputs, checked outputs, monitors, audit log.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.metrics, app.state.pipeline = metrics, pipeline
    if pipeline.output_checker is not None:
        for flag in FLAGS:
            metrics.output_flags.labels(flag=flag)  # shown at 0 until a sample is flagged

    async def authenticate(
        request: Request, credentials: HTTPAuthorizationCredentials | None = _BEARER
    ) -> str:
        name = keys.authenticate(credentials.credentials if credentials else None)
        if name is None:
            metrics.refusals.labels(reason="unauthorized").inc()
            raise Refusal(
                401,
                "unauthorized",
                "missing or unknown API key; send 'Authorization: Bearer KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        limiter.check(name)
        request.state.key_name = name
        return name

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: no key needed, says nothing about the model but its name."""
        return {"status": "ok", "model": pipeline.name, "version": __version__}

    @app.get("/metrics", tags=["ops"], response_class=Response, responses=_errors(401, 429))
    async def prometheus(_: str = Depends(authenticate)) -> Response:
        """Prometheus metrics: requests, latencies, refusals, guard actions, alerts."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/monitor", tags=["guard"], responses=_errors(401, 429))
    async def monitor(_: str = Depends(authenticate)) -> dict[str, Any]:
        """The monitors' current state: statistics, thresholds, whether each is firing, and the
        alert rules with the active alerts."""
        state: dict[str, Any] = await _on(pools.commit, pipeline.monitor_state)
        return state

    @app.post(
        "/v1/predict",
        tags=["guard"],
        response_model=PredictResponse,
        responses=_errors(400, 401, 413, 422, 429, 500, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
    )
    async def predict(request: Request, key_name: str = Depends(authenticate)) -> Response:
        """Classify one batch through the guard; the audit row is written before the answer."""
        rid = request.state.request_id
        body = await read_body(request.stream(), config.max_body_bytes)
        gate = Gate()

        def compute() -> tuple[Inference, dict[str, Any]] | None:
            # Parse, guard and run, then commit on this same thread (monitors, audit row)
            # unless the request timed out first: one hand-off between threads per request.
            try:
                batch = parse_predict(body, pipeline.schema, max_batch=config.max_batch)
                inference = pipeline.infer(batch)
            except Refusal as refusal:
                if gate.enter():
                    pipeline.record_refusal(
                        request_id=rid, body=body, refusal=refusal, api_key=key_name
                    )
                raise
            if not gate.enter():
                return None  # the client has its 503: nothing may be recorded as answered
            return inference, pipeline.commit(  # rid: a uuid4 minted by _Observed
                request_id=rid, body=body, inference=inference, api_key=key_name, fresh_id=True
            )

        try:
            done = await run_bounded(pools.infer, config.timeout_seconds, compute, gate=gate)
        except Refusal as refusal:
            if not gate.entered:  # timed out before the worker recorded anything
                record = functools.partial(
                    pipeline.record_refusal,
                    request_id=rid, body=body, refusal=refusal, api_key=key_name,
                )
                await _on(pools.commit, record)
            raise
        assert done is not None  # None only when abandoned, and then run_bounded refused
        inference, checks = done
        metrics.samples.inc(len(inference.predictions))
        _count_checks(metrics, checks)
        # Encoded here by the C encoder, splicing in the checks' texts (the pieces repeated from
        # request to request were encoded once, and so is their object while they stay the
        # same): the answer is made of JSON values already (probabilities finite, checked), so
        # the response model's validation and its generic serialisation would only redo work;
        # PredictResponse still documents it.
        text = object_text([
            ("checks", checks_text(checks)),
            ("predictions", inference.prediction_text.text),
            ("probabilities", json.dumps(inference.probabilities, allow_nan=False)),
            ("request_id", json.dumps(rid)),
        ])
        return Response(text.encode(), media_type=_JSON)

    _add_docs(app, authenticate, public_docs)
    _add_error_handlers(app, metrics)
    app.add_middleware(BodySizeLimit, limit=config.max_body_bytes)
    app.add_middleware(_Observed, metrics=metrics)  # outermost
    return app


class _Pools:
    """The threads of one app run (created at startup, so an app can be started again).

    ``infer`` runs parsing, the guard, the model and then, on the same thread, the commit (the
    batch handed to the monitors' thread, the audit row) unless the request timed out first
    (see :class:`~bastion.serve.limits.Gate`); concurrent requests' rows share one group commit.
    ``commit`` runs what must not block the event loop otherwise: ``/v1/monitor`` (which waits
    for the monitors) and the audit rows of requests refused by their timeout.
    """

    COMMIT_THREADS = 4

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.infer = self.commit = concurrent.futures.ThreadPoolExecutor(1)
        self.stop()

    def start(self) -> None:
        self.infer = concurrent.futures.ThreadPoolExecutor(self.workers, "bastion-infer")
        self.commit = concurrent.futures.ThreadPoolExecutor(self.COMMIT_THREADS, "bastion-commit")

    def stop(self) -> None:
        self.infer.shutdown(wait=False, cancel_futures=True)
        self.commit.shutdown(wait=True)


class _ChecksText:
    """The ``checks`` object of an answer: its text is remembered for the last set of parts
    (the same objects from request to request while nothing is flagged and the monitors'
    verdict stands), so that most answers reuse it."""

    def __init__(self) -> None:
        self._last: tuple[tuple[tuple[str, JsonText], ...], str] = ((), "{}")

    def __call__(self, checks: dict[str, JsonText]) -> str:
        parts = tuple(checks.items())
        last_parts, last_text = self._last  # one read: another thread may replace it
        if len(parts) == len(last_parts) and all(
            name == last_name and part is last_part
            for (name, part), (last_name, last_part) in zip(parts, last_parts, strict=True)
        ):
            return last_text
        text = object_text((name, part.text) for name, part in parts)
        self._last = (parts, text)
        return text


async def _on(pool: concurrent.futures.Executor, fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(pool, fn)


def _count_checks(metrics: ServerMetrics, checks: dict[str, JsonText]) -> None:
    guarded = checks.get("input")
    for action in guarded.value.get("actions", ()) if guarded is not None else ():
        metrics.guard_actions.labels(action=str(action.get("action"))).inc()
    output = checks["output"].value if "output" in checks else None
    if isinstance(output, dict):
        for flag, count in (output.get("counts") or {}).items():
            if count:  # every flag's series exists from the start (create_app), at 0
                metrics.output_flags.labels(flag=str(flag)).inc(int(count))


def _add_docs(app: FastAPI, authenticate: Callable[..., Awaitable[str]], public: bool) -> None:
    deps = [] if public else [Depends(authenticate)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=deps)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=deps)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="bastion serve")


def _add_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Refusal)
        if exc.status != 401:  # counted where it happens
            metrics.refusals.labels(reason=exc.error).inc()
        _log.info("refused %s %s: %s", request.method, request.url.path, exc.message)
        return _error_response(request, exc)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{k: e.get(k) for k in ("loc", "msg", "type")} for e in exc.errors()]
        metrics.refusals.labels(reason="invalid_request").inc()
        refusal = Refusal(422, "invalid_request", "the request is not valid", detail=errors)
        return _error_response(request, refusal)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        refusal = Refusal(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))
        return _error_response(request, refusal)

    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        _log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        metrics.refusals.labels(reason="internal_error").inc()
        refusal = Refusal(500, "internal_error", "the server failed on this request")
        return _error_response(request, refusal)

    app.add_exception_handler(Refusal, refused)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, crashed)


class _Observed:
    """ASGI middleware: a request id for every request, its status and latency in the metrics."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        start, status = time.perf_counter(), [500]

        async def observed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.observe_request(endpoint, status[0], time.perf_counter() - start)
