"""The app factory: ``gunicorn -c api/gunicorn.conf.py 'api.app:create_app()'``.

Wiring only; each stage lives in its own module: ``images`` (accept), ``ingest`` (store +
record + enqueue), ``routes/`` (HTTP), ``auth``/``apikeys`` (who), ``ratelimit``,
``health``, ``metrics``, ``errors``.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify
from flask_cors import CORS
from spectree import SecurityScheme, SecuritySchemeData, SpecTree
from spectree.models import SecureType

from api.auth import require_api_key
from api.dashboard import dashboard_blueprint
from api.errors import register_error_handlers
from api.health import health_blueprint
from api.inputs import refuse_nul_in_url
from api.openapi import complete
from api.ratelimit import install_rate_limits
from api.routes.alerts import add_alert_routes
from api.routes.batches import add_batch_routes
from api.routes.common import raise_validation_error
from api.routes.jobs import add_job_routes
from api.routes.model import add_model_routes
from api.routes.results import add_results_routes
from api.services import Services
from api.uploads import FORM_OVERHEAD_BYTES
from inspectq.config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings()
    app = Flask(__name__)
    # The default body limit; /v1 routes set their own per request (api.uploads).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + FORM_OVERHEAD_BYTES

    svc = Services.build(settings)
    app.extensions["inspectq"] = svc
    register_error_handlers(app)
    svc.metrics.install(app)

    spec = SpecTree(
        "flask",
        title="inspectq ingest API",
        version="1",
        path="apidoc",
        annotations=False,
        validation_error_status=400,
        before=raise_validation_error,
        # Schema names as the classes are named ("JobOut", "Region"), no hash suffixes.
        naming_strategy=lambda model: model.__name__,
        nested_naming_strategy=lambda _parent, child: child,
        security_schemes=[
            SecurityScheme(
                name="bearer", data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer")
            )
        ],
    )

    v1 = Blueprint("v1", __name__, url_prefix="/v1")
    v1.before_request(require_api_key)
    v1.before_request(refuse_nul_in_url)
    add_job_routes(v1, spec)
    add_batch_routes(v1, spec)
    add_results_routes(v1, spec)
    add_alert_routes(v1, spec)
    add_model_routes(v1, spec)
    install_rate_limits(app, settings, v1)
    app.register_blueprint(v1)
    app.register_blueprint(health_blueprint())
    app.register_blueprint(dashboard_blueprint())
    if settings.cors_origins:
        # Browsers send the key as a bearer header, never a cookie: no credentials mode.
        CORS(app, resources={r"/v1/*": {"origins": settings.cors_origins}},
             allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
             expose_headers=["Location", "Retry-After", "Idempotent-Replayed"], max_age=600)

    spec.register(app)
    with app.app_context():  # spectree reads the routes from the current app
        document = complete(spec.spec)

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(document)

    return app
