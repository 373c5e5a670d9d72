"""Prometheus metrics of one API process, in the app's own registry (not the global one).

Run one process per container or pod (gunicorn threads, see ``api/gunicorn.conf.py``) and
let Prometheus scrape each: counters are per process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis
from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from inspectq import keyspace


class SharedCounts(Collector):
    """Counts every process keeps in Redis (workers, the reconciler, the API), read at
    scrape time: records quarantined because no reader could parse them."""

    def __init__(self, redis_client: redis.Redis) -> None:
        self._redis = redis_client

    @staticmethod
    def _family(value: float | None = None) -> CounterMetricFamily:
        return CounterMetricFamily(
            "inspectq_quarantined_records",
            "Stored job records no reader could parse, moved to quarantine/ in S3 (all "
            "processes of the deployment).",
            value=value,
        )

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        try:
            value = int(self._redis.get(keyspace.QUARANTINED_COUNT) or 0)
        except redis.RedisError:
            return  # Redis is down: /readyz says so; the scrape still answers
        yield self._family(value)


class ApiMetrics:
    def __init__(self, redis_client: redis.Redis) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(SharedCounts(redis_client))
        self.requests = Counter(
            "inspectq_api_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inspectq_api_request_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            registry=self.registry,
        )
        self.jobs_accepted = Counter(
            "inspectq_api_jobs_accepted_total",
            "Jobs accepted and enqueued (idempotent replays not counted).",
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "inspectq_api_ingest_seconds",
            "Time to accept one image: validate, store, record, enqueue.",
            registry=self.registry,
        )
        self.rejections = Counter(
            "inspectq_api_rejections_total",
            "Requests answered with an error, by error code.",
            ["reason", "status"],
            registry=self.registry,
        )

    def install(self, app: Flask) -> None:
        app.before_request(self._start)
        app.after_request(self._observe)
        blueprint = Blueprint("metrics", __name__)
        blueprint.add_url_rule("/metrics", "metrics", self._expose)
        app.register_blueprint(blueprint)

    @staticmethod
    def _start() -> None:
        g.request_started = time.perf_counter()

    def _observe(self, response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        started = g.get("request_started")
        if started is not None:
            self.latency.labels(route, request.method).observe(time.perf_counter() - started)
        self.requests.labels(route, request.method, str(response.status_code)).inc()
        code = g.get("error_code")
        if code is not None:
            self.rejections.labels(code, str(response.status_code)).inc()
        return response

    def _expose(self) -> Response:
        # content_type, not mimetype: Flask would add a second "; charset=utf-8".
        return Response(generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)
