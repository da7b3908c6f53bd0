"""Prometheus metrics of one server, in a registry of its own (never the global one).

A private :class:`~prometheus_client.CollectorRegistry` keeps two apps in one process (tests,
benchmarks) from colliding, and is the registry the guard's ``PrometheusSink`` writes alerts
and monitor values to, so ``GET /metrics`` shows both.

Example:
    >>> metrics = ServerMetrics()
    >>> metrics.observe_request("/v1/predict", 200, 0.01)
    >>> b"bastion_requests_total" in metrics.render()
    True
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """Request counts and latencies, refusals by reason, samples and guard actions."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bastion_requests",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bastion_request_seconds",
            "Time to answer a request, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refusals = Counter(
            "bastion_refusals",
            "Requests refused, by reason (auth, size, rate, validation, timeout, ...).",
            ["reason"],
            registry=self.registry,
        )
        self.samples = Counter(
            "bastion_samples", "Samples that reached the model.", registry=self.registry
        )
        self.guard_actions = Counter(
            "bastion_guard_actions",
            "Input guard actions taken (repair, substitute), by action.",
            ["action"],
            registry=self.registry,
        )
        self.output_flags = Counter(
            "bastion_output_flags",
            "Samples flagged by the output checks, by flag.",
            ["flag"],
            registry=self.registry,
        )

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
