"""Prometheus metrics of the service: requests, latency histogram, errors by status, inference time.

Each app has its own registry (several apps can live in one process, e.g. in tests). Under several uvicorn
workers set ``PROMETHEUS_MULTIPROC_DIR`` (``atc-il serve`` does) and /metrics aggregates every worker.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class Metrics:
    def __init__(self):
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("atc_il_api_requests", "HTTP requests by method, route and status",
                                ["method", "route", "status"], registry=r)
        self.errors = Counter("atc_il_api_errors", "HTTP error responses (status >= 400) by route and status",
                              ["route", "status"], registry=r)
        self.latency = Histogram("atc_il_api_request_duration_seconds", "request latency, seconds",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("atc_il_api_inference_seconds", "time in the prediction function, seconds",
                                   ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("atc_il_api_inference_batch_requests",
                                    "requests answered by one forward pass (micro-batching)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.predicted = Counter("atc_il_api_conflicts_predicted", "conflicts given a decision", ["endpoint"],
                                 registry=r)
        mode = {"multiprocess_mode": "livesum"} if self.multiprocess else {}
        self.in_progress = Gauge("atc_il_api_requests_in_progress", "requests being served", registry=r, **mode)
        self.ready = Gauge("atc_il_api_model_ready", "1 once the model is loaded",
                           registry=r, **({"multiprocess_mode": "min"} if self.multiprocess else {}))

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            from prometheus_client import multiprocess
            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request (including those answered by the auth and size middlewares)."""

    def __init__(self, app, metrics: Metrics, routes):
        self.app = app
        self.m = metrics
        self.routes = routes

    def _route(self, scope) -> str:
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return route.path
        for r in _flat(self.routes):   # answered before routing (401, 413): find the template, no raw paths as labels
            try:
                if r.matches(scope)[0] != Match.NONE:
                    return r.path
            except Exception:   # noqa: BLE001  (a route type without matches)
                continue
        return "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_wrapper(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        t0 = time.perf_counter()
        self.m.in_progress.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.m.in_progress.dec()
            method = scope["method"] if scope["method"] in METHODS else "other"
            route, code = self._route(scope), str(status[0])
            self.m.requests.labels(method, route, code).inc()
            self.m.latency.labels(method, route).observe(time.perf_counter() - t0)
            if status[0] >= 400:
                self.m.errors.labels(route, code).inc()


def _flat(routes):
    """The routes themselves, also those of included routers (FastAPI includes an APIRouter as one entry)."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from _flat(inner.routes)
        else:
            yield r
