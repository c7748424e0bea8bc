"""Prometheus metrics: requests by route and status, latency, runs started and failed, and
MCP tool calls by tool and outcome.

Each app has its own registry (several apps can live in one process, as in the tests); with
several worker processes (``API_WORKERS``) the values live in ``PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` adds up every worker's.
The route label is the route's template (``/agents/training/status/{project_id}``), never the
raw path, so ids cannot blow up the number of series.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "training_api_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "training_api_request_duration_seconds",
            "Time to answer an HTTP request, by route and method.",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.tool_calls = Counter(
            "training_api_mcp_tool_calls",
            "MCP tool calls answered, by tool and outcome (ok, or the refusal's error code).",
            ["tool", "outcome"],
            registry=self.registry,
        )
        self.tool_latency = Histogram(
            "training_api_mcp_tool_duration_seconds",
            "Time to answer an MCP tool call, by tool (wait_for_training waits on purpose).",
            ["tool"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
            registry=self.registry,
        )
        self.runs_started = Counter(
            "training_runs_started",
            "Training runs recorded and handed to the launcher.",
            registry=self.registry,
        )
        self.runs_failed = Counter(
            "training_runs_launch_failed",
            "Training runs the launcher could not start (run marked Failed, claim undone).",
            registry=self.registry,
        )

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several workers: every one's counts
            pooled = CollectorRegistry()
            MultiProcessCollector(pooled)
            return generate_latest(pooled)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """A plain ASGI middleware (cheaper than ``BaseHTTPMiddleware`` on every request)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)
