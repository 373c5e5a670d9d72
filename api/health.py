"""``/healthz`` (the process is alive; touches nothing) and ``/readyz`` (every dependency
answers: Redis, the S3 bucket, the Celery broker, Triton; 503 when any is down).

The checks run in parallel with short timeouts so a probe answers within a few seconds even
when a dependency hangs. Failures name the exception type only: no URLs or secrets leak.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import tritonclient.grpc as triton_grpc
from flask import Blueprint, Response, jsonify

from api.services import Services, services

PROBE_TIMEOUT_S = 2.0


def _redis(svc: Services) -> None:
    svc.redis.ping()


def _s3(svc: Services) -> None:
    svc.store.ping()


def _broker(svc: Services) -> None:
    with svc.celery.connection_for_write() as connection:
        connection.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=PROBE_TIMEOUT_S
        )


def _triton(svc: Services) -> None:
    client = triton_grpc.InferenceServerClient(svc.settings.triton_url)
    try:
        if not client.is_server_ready(client_timeout=PROBE_TIMEOUT_S):
            raise RuntimeError("Triton answered: not ready")
    finally:
        client.close()


CHECKS: dict[str, Callable[[Services], None]] = {
    "redis": _redis,
    "s3": _s3,
    "broker": _broker,
    "triton": _triton,
}


def _run(check: Callable[[Services], None], svc: Services) -> dict[str, str]:
    try:
        check(svc)
    except Exception as error:
        return {"status": "down", "error": type(error).__name__}
    return {"status": "up"}


def health_blueprint() -> Blueprint:
    bp = Blueprint("health", __name__)

    @bp.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @bp.get("/readyz")
    def readyz() -> Response:
        svc = services()
        with ThreadPoolExecutor(max_workers=len(CHECKS)) as pool:
            futures = {name: pool.submit(_run, check, svc) for name, check in CHECKS.items()}
            components = {name: future.result() for name, future in futures.items()}
        ready = all(component["status"] == "up" for component in components.values())
        response = jsonify({"status": "ready" if ready else "not_ready", "components": components})
        response.status_code = 200 if ready else 503
        return response

    return bp
