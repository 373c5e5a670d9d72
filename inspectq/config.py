"""All configuration, in one typed place, read from the environment (prefix ``INSPECTQ_``).

Nothing reads ``os.environ`` elsewhere: build a :class:`Settings` once at process start
(``Settings()``) and pass it down.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from inspectq.linehealth import MonitorConfig, RateKind

#: The development API key of the local stack. README documents it; never use it in production.
DEV_API_KEY = "inspectq-dev-key"
#: The line-health monitor's own defaults, which the alert_* settings start from.
_MONITOR = MonitorConfig()


class Settings(BaseSettings):
    """Every knob of inspectq. Each field is the env var ``INSPECTQ_<FIELD>`` upper-cased."""

    model_config = SettingsConfigDict(env_prefix="INSPECTQ_", extra="ignore", frozen=True)

    # --- Redis (job cache, broker, rate limits) ---
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = Field(
        default=None, description="Celery broker; defaults to redis_url."
    )

    # --- S3 (the durable record: images, accepted jobs, results) ---
    s3_endpoint_url: str | None = "http://127.0.0.1:8333"
    s3_bucket: str = "inspectq"
    s3_region: str = "us-east-1"
    s3_access_key_id: str = "inspectq"
    s3_secret_access_key: SecretStr = SecretStr("inspectq-secret")
    s3_connect_timeout_s: float = 3.0
    s3_read_timeout_s: float = 10.0
    s3_max_attempts: int = 2

    # --- Triton ---
    triton_url: str = "127.0.0.1:8001"
    triton_model: str = "inspectq_seg"
    triton_timeout_s: float = 30.0
    triton_batch_tiles: int = Field(
        default=16, ge=1, description="Most tiles a worker sends in one request."
    )
    model_repository: str | None = Field(
        default=None, description="The Triton model repository (GPU layout) whose versions "
        "and model cards GET /v1/model shows; default: the shipped triton_models/repository."
    )

    # --- API ---
    api_key: SecretStr = Field(
        default=SecretStr(DEV_API_KEY),
        description="A bootstrap key bound to tenant 'default'; empty disables it.",
    )
    api_keys_file: str | None = Field(
        default=None, description="JSON file of hashed API keys (see `inspectq keys`)."
    )
    public_url: str = Field(
        default="http://127.0.0.1:8080",
        description="The API's public base URL, used in status_url and Location. Never taken "
        "from the request's Host header, which any client can set.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API (CORS), e.g. "
        '["https://dashboard.example"]; empty (the default) sends no CORS headers.',
    )
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_batch_images: int = Field(default=32, ge=1)
    max_wait_s: float = Field(default=30.0, ge=0)
    rate_limit: str = Field(
        default="100/second", description="Per API key (limits syntax); a camera line is fast."
    )
    max_pending_jobs: int = Field(
        default=5000, ge=1, description="Queued + in-flight bound; above it ingest answers 429."
    )

    # --- Decisions and tiling ---
    pass_threshold: float = Field(default=0.40, ge=0, le=1)
    reject_threshold: float = Field(default=0.65, ge=0, le=1)
    tile_size: int = Field(default=256, ge=32)
    tile_stride: int = Field(default=128, ge=16)
    min_region_px: int = Field(default=12, ge=1, description="Smaller regions are noise.")
    focus_min_sharpness: float = Field(
        default=0.03, ge=0,
        description="Image-quality check: a frame whose sharpness (inspectq/quality.py) is"
        " below this is out_of_focus and cannot PASS; 0 turns the check off. The default"
        " suits textured surfaces; imaging that is soft by nature (electroluminescence,"
        " X-ray) measures lower in focus and needs a lower limit.",
    )

    # --- Jobs ---
    result_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    max_deliveries: int = Field(
        default=3, ge=1, description="Deliveries of one job before it is dead-lettered."
    )
    max_retries: int = Field(default=8, ge=0, description="Retries on Triton/S3 outages.")
    retry_backoff_max_s: int = Field(default=60, ge=1)
    task_soft_time_limit_s: int = Field(
        default=120, ge=1, description="Time limit of a job of one tile (a small image)."
    )
    task_time_limit_s: int = Field(default=150, ge=1)
    task_time_per_tile_s: float = Field(
        default=0.5, ge=0,
        description="Added to a job's time limits per model tile its image makes (a 12 MP "
        "image is ~680 tiles), so big images get time in proportion to their work; capped "
        "below visibility_timeout_s.",
    )
    visibility_timeout_s: int = Field(
        default=600, ge=1, description="Redis redelivery delay; must exceed the worst job."
    )
    reconcile_interval_s: int = Field(
        default=60, ge=5, description="How often Celery beat runs the reconciler."
    )
    worker_shutdown_grace_s: float = Field(
        default=25.0, ge=0,
        description="On SIGTERM (with REMAP_SIGTERM=SIGQUIT) a worker waits this long for its "
        "in-flight job, then hands it back to the queue; keep it under k8s' grace period.",
    )

    # --- Line health alerts (inspectq.linehealth; each line may override these through
    # PUT /v1/lines/<line>/alerting; the defaults are the monitor's own) ---
    alert_rates: Annotated[tuple[RateKind, ...], NoDecode] = Field(
        default=_MONITOR.rates,
        description="The rates watched, comma-separated: reject, review, failure.",
    )
    alert_per_camera: bool = Field(
        default=_MONITOR.per_camera,
        description="Watch every (line, camera) as well as the whole line.",
    )
    alert_false_alarms_per_week: float = Field(
        default=_MONITOR.false_alarms_per_week, gt=0,
        description="Sensitivity: false alerts one stream may raise per week; the tests' "
        "limits are derived from it.",
    )
    alert_images_per_second: float = Field(
        default=_MONITOR.images_per_second, gt=0,
        description="A line's image rate, which turns the weekly budget into images.",
    )
    alert_warmup_images: int = Field(
        default=_MONITOR.warmup_images, ge=0,
        description="Images a new stream learns its baseline from (judged against the prior "
        "rates meanwhile).",
    )
    alert_recovery_images: int = Field(
        default=_MONITOR.recovery_images, ge=1,
        description="Images in control before an alert resolves.",
    )
    alert_min_images: int = Field(
        default=_MONITOR.min_images, ge=0, description="No alert before a stream saw this many."
    )
    alert_prior_reject_rate: float = Field(default=_MONITOR.prior_rate("reject"), gt=0, lt=1)
    alert_prior_review_rate: float = Field(default=_MONITOR.prior_rate("review"), gt=0, lt=1)
    alert_prior_failure_rate: float = Field(default=_MONITOR.prior_rate("failure"), gt=0, lt=1)
    slack_webhook_url: SecretStr | None = Field(
        default=None, description="Slack incoming webhook: the 'slack' channel."
    )
    smtp_host: str | None = Field(
        default=None, description="Mail server: with alert_email_to, the 'email' channel."
    )
    smtp_port: int = 25
    smtp_security: Literal["none", "starttls", "tls"] = Field(
        default="none",
        description="none (a local relay), starttls (port 587) or tls (implicit, port 465).",
    )
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    alert_email_from: str = "inspectq@localhost"
    alert_email_to: str | None = Field(
        default=None, description="Alert email recipients, comma-separated."
    )
    alert_webhook_url: SecretStr | None = Field(
        default=None,
        description="Generic JSON webhook (the 'webhook' channel), signed like the job "
        "callbacks with webhook_secret.",
    )
    alert_send_timeout_s: float = Field(default=10.0, gt=0)
    alert_retry_hours: float = Field(
        default=24.0, gt=0,
        description="How long a failing notification is retried before it is marked failed.",
    )
    alert_retry_base_s: float = Field(
        default=10.0, gt=0, description="The first retry's delay; it doubles per attempt."
    )
    alert_retry_max_s: float = Field(
        default=300.0, gt=0,
        description="Longest delay between retries (at most half of visibility_timeout_s: "
        "a delayed message waits unacknowledged in a worker; longer waits take several hops).",
    )

    # --- Results index ---
    database_url: str = Field(
        default="sqlite:///var/index.sqlite3",
        description="SQLAlchemy URL of the results index (inspectq.index). The default, a "
        "SQLite file under var/, needs no setup for local use; production uses PostgreSQL: "
        "postgresql+psycopg://user:password@host:5432/inspectq.",
    )
    retention_days: int = Field(
        default=0, ge=0,
        description="Days a job stays in the results index (and its partitions on "
        "PostgreSQL); 0 keeps every job forever.",
    )
    index_batch_size: int = Field(
        default=500, ge=1, description="Job records written to the index per round trip."
    )

    # --- Callbacks and signed webhooks ---
    webhook_secret: SecretStr = Field(
        default=SecretStr("inspectq-dev-webhook-secret"),
        description="Signs the bootstrap tenant's job callbacks and the alert webhooks "
        "(X-Inspectq-Signature); other tenants' secrets come from `inspectq keys add`.",
    )
    callback_allow_private: bool = Field(
        default=False,
        description="Accept callback URLs on loopback, link-local and private addresses "
        "(local development and tests only: in production they would let a client make the "
        "service call into its own network).",
    )
    callback_timeout_s: float = Field(default=10.0, gt=0)
    callback_retry_hours: float = Field(
        default=24.0, gt=0, description="How long a failing callback is retried (backoff "
        "doubling up to callback_retry_max_s) before it is marked failed."
    )
    callback_retry_max_s: float = Field(default=600.0, gt=0)

    @field_validator("s3_endpoint_url")
    @classmethod
    def _empty_endpoint_means_aws(cls, value: str | None) -> str | None:
        """``INSPECTQ_S3_ENDPOINT_URL=`` (empty) selects AWS S3's own endpoint: an environment
        variable cannot be None, and leaving it unset keeps the local default."""
        return value or None

    @field_validator("alert_rates", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """``reject,review`` from the environment; also the ``('reject', 'review')`` that
        ``str()`` of the tuple gives (how devstack hands settings to a child process)."""
        if isinstance(value, str):
            names = (part.strip().strip("'\"") for part in value.strip("()[] ").split(","))
            return tuple(name for name in names if name)
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.pass_threshold < self.reject_threshold:
            raise ValueError("pass_threshold must be below reject_threshold")
        if self.tile_stride > self.tile_size:
            raise ValueError("tile_stride must not exceed tile_size")
        if self.task_time_limit_s <= self.task_soft_time_limit_s:
            raise ValueError("task_time_limit_s must exceed task_soft_time_limit_s")
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                "visibility_timeout_s must exceed task_time_limit_s, or long jobs run twice"
            )
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError("smtp_username and smtp_password go together")
        arl0 = (self.alert_images_per_second * 7 * 24 * 3600
                / (self.alert_false_alarms_per_week * (1 - _MONITOR.spike_share)))
        if arl0 > 1e9:  # inspectq.alerting.MAX_ARL0_IMAGES: the CUSUM design's limit
            raise ValueError("alert_false_alarms_per_week is too small for "
                             "alert_images_per_second (over 1e9 images between false alarms)")
        return self

    @property
    def alert_email_recipients(self) -> list[str]:
        return [address.strip() for address in (self.alert_email_to or "").split(",")
                if address.strip()]

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url
