"""Request limits: body size (before reading the body), per-key rate, inference timeout.

Each limit refuses with a :class:`Refusal`, which the app turns into a 4xx JSON error naming the
problem; nothing here ever lets a refused request reach the model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

__all__ = [
    "BodySizeLimit",
    "Gate",
    "RateLimiter",
    "Refusal",
    "TokenBucket",
    "read_body",
    "run_bounded",
]

T = TypeVar("T")
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Refusal(Exception):
    """A request refused on purpose: an HTTP status, a short error code and a message.

    Example:
        >>> Refusal(413, "body_too_large", "the body exceeds 10 bytes").status
        413
    """

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.detail = detail
        self.headers = headers or {}


@dataclasses.dataclass(kw_only=True)
class TokenBucket:
    """A token bucket: ``capacity`` requests at once, refilled at ``rate`` per second.

    Example:
        >>> bucket = TokenBucket(rate=1.0, capacity=2, clock=lambda: 0.0)
        >>> [bucket.take() for _ in range(3)]
        [0.0, 0.0, 1.0]
    """

    rate: float
    capacity: int
    clock: Callable[[], float] = time.monotonic
    tokens: float = math.nan
    stamp: float = math.nan

    def take(self) -> float:
        """Take one token; 0.0 when granted, else the seconds until one is available."""
        now = self.clock()
        if math.isnan(self.tokens):
            self.tokens, self.stamp = float(self.capacity), now
        self.tokens = min(float(self.capacity), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One :class:`TokenBucket` per API key name (keys are few: the key file bounds them).

    Example:
        >>> limiter = RateLimiter(rate=1.0, burst=1, clock=lambda: 0.0)
        >>> limiter.check("a"); limiter.check("b")
        >>> limiter.check("a")
        Traceback (most recent call last):
        ...
        bastion.serve.limits.Refusal: rate limit of 1 request(s)/s exceeded for key 'a'
    """

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, key_name: str) -> None:
        """Spend one request of ``key_name``'s budget, or raise a 429 :class:`Refusal`."""
        with self._lock:
            bucket = self._buckets.get(key_name)
            if bucket is None:
                bucket = TokenBucket(rate=self._rate, capacity=self._burst, clock=self._clock)
                self._buckets[key_name] = bucket
            wait = bucket.take()
        if wait > 0.0:
            raise Refusal(
                429,
                "rate_limited",
                f"rate limit of {self._rate:g} request(s)/s exceeded for key {key_name!r}",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )


def _too_large(limit: int) -> Refusal:
    return Refusal(413, "body_too_large", f"the request body exceeds the limit of {limit} bytes")


class BodySizeLimit:
    """ASGI middleware: refuse a body whose ``Content-Length`` exceeds ``limit`` before reading it.

    Bodies without a length (chunked) are counted as they stream by :func:`read_body`.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-length":
                    length = value.decode("latin-1").strip()
                    if not length.isdigit() or int(length) > self.limit:
                        refusal = _too_large(self.limit) if length.isdigit() else Refusal(
                            400, "bad_content_length", "Content-Length is not a number"
                        )
                        await _send_json(send, refusal, scope.get("state", {}))
                        return
        await self.app(scope, receive, send)


async def _send_json(send: Send, refusal: Refusal, state: dict[str, Any]) -> None:
    answer: dict[str, Any] = {"error": refusal.error, "message": refusal.message}
    answer["request_id"] = state.get("request_id")
    body = json.dumps(answer).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))  # the unread body must not be taken as a request
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """Read a streamed body, refusing with 413 as soon as it grows past ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


class Gate:
    """Decides, once, whether a request's work commits or is abandoned to its timeout.

    The worker calls :meth:`enter` before it writes anything that must match the answer (the
    audit row); the event loop calls :meth:`abandon` when the timeout expires. Whichever comes
    first wins: a worker that entered finishes and the answer is sent even if late; a request
    abandoned first gets its 503 and its worker writes nothing.

    Example:
        >>> gate = Gate()
        >>> gate.enter(), gate.abandon(), gate.entered
        (True, False, True)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entered = False
        self.abandoned = False

    def enter(self) -> bool:
        """True (and the commit is on) unless the request was abandoned already."""
        with self._lock:
            if not self.abandoned:
                self.entered = True
            return self.entered

    def abandon(self) -> bool:
        """True (and the worker will commit nothing) unless the worker entered already."""
        with self._lock:
            if not self.entered:
                self.abandoned = True
            return self.abandoned


async def run_bounded(
    executor: concurrent.futures.Executor,
    timeout: float,
    fn: Callable[[], T],
    *,
    gate: Gate | None = None,
) -> T:
    """Run ``fn`` on ``executor``; a 503 :class:`Refusal` when it takes over ``timeout`` seconds.

    The worker thread cannot be interrupted; it finishes in the background and its result is
    dropped. Without a ``gate`` the caller must not commit anything from inside ``fn``; with
    one, ``fn`` may commit after ``gate.enter()`` returned True, and the timeout then waits for
    it (the work is done; only its commit remains) instead of refusing.
    """
    future = asyncio.get_running_loop().run_in_executor(executor, fn)
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except asyncio.TimeoutError:
        if gate is not None and not gate.abandon():
            return await future  # the worker is committing: the answer stands
        raise Refusal(
            503,
            "inference_timeout",
            f"inference did not finish within {timeout:g} s",
            headers={"Retry-After": "1"},
        ) from None
