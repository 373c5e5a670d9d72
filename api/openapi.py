"""The parts of the OpenAPI document that spectree cannot derive from the request models.

Spectree builds the document from the pydantic models of each route (so it cannot drift from
the code); what it has no model for is added here, once, when the app is built: the raw
``image/*`` upload body, the ``Idempotency-Key`` header, the PNG answers of ``/image``,
``/mask``, ``/overlay`` and ``/heatmap``, and the operational endpoints (``/healthz``, ``/readyz``,
``/metrics``).
"""

from __future__ import annotations

from typing import Any

BINARY = {"type": "string", "format": "binary"}

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes a retry safe: the same key with the same image and options answers"
    " the same job (header Idempotent-Replayed: true); the same key with another image or"
    " other options is 422 idempotency_key_reused. 1 to 255 visible ASCII characters. In a"
    " batch, image i uses the key '<key>:<i>'.",
    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
}

_HEALTH = {
    "type": "object",
    "properties": {"status": {"type": "string", "enum": ["ok", "ready", "not_ready"]},
                   "components": {"type": "object", "additionalProperties": {
                       "type": "object",
                       "properties": {"status": {"type": "string", "enum": ["up", "down"]},
                                      "error": {"type": "string"}}}}},
}

_OPERATIONS: dict[str, dict[str, Any]] = {
    "/healthz": {"get": {
        "summary": "The process is alive (touches no dependency).", "tags": ["operations"],
        "responses": {"200": {"description": "Alive.",
                              "content": {"application/json": {"schema": _HEALTH}}}}}},
    "/readyz": {"get": {
        "summary": "Every dependency answers: Redis, S3, the broker, Triton.",
        "tags": ["operations"],
        "responses": {
            "200": {"description": "Ready.",
                    "content": {"application/json": {"schema": _HEALTH}}},
            "503": {"description": "A dependency is down; `components` names it.",
                    "content": {"application/json": {"schema": _HEALTH}}}}}},
    "/metrics": {"get": {
        "summary": "Prometheus metrics of this API process.", "tags": ["operations"],
        "responses": {"200": {"description": "Prometheus text format.",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
}


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """Add what the models cannot say to spectree's ``document`` (changed in place)."""
    paths = document["paths"]
    for path in [path for path in paths if path.startswith("/dashboard")]:
        del paths[path]  # the web dashboard's pages and files are not part of the API
    create_job = paths["/v1/jobs"]["post"]
    create_job["requestBody"]["content"]["image/*"] = {"schema": BINARY}
    for operation in (create_job, paths["/v1/batches"]["post"]):
        operation.setdefault("parameters", []).append(IDEMPOTENCY_KEY)
    for which in ("image", "mask", "overlay", "heatmap"):
        responses = paths[f"/v1/jobs/{{job_id}}/{which}"]["get"]["responses"]
        responses["200"] = {"description": f"The job's {which} (PNG).",
                            "content": {"image/png": {"schema": BINARY}}}
    paths.update(_OPERATIONS)
    return document
