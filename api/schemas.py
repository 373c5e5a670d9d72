"""Request and response models. Spectree validates requests with them and builds the OpenAPI
document (``/openapi.json``) from the same classes, so the document cannot drift from the code.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    field_validator,
)
from werkzeug.datastructures import FileStorage

from inspectq.alerting import EffectiveAlerting, LineAlerting
from inspectq.feedback import Feedback
from inspectq.instant import Instant
from inspectq.jobs import RetryState, Status
from inspectq.result import Decision, InspectionResult
from inspectq.text import Text

#: Production line and camera ids. They appear in records and metrics, never in S3 keys,
#: and the strict pattern keeps them from smuggling anything anywhere.
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
#: Metadata limits: a job record must stay small and readable by every JSON parser on its
#: way (the API, the workers, the reconciler); a 500-byte document 300 levels deep is not.
MAX_METADATA_CHARS = 16 * 1024
MAX_METADATA_DEPTH = 5
MAX_METADATA_KEYS = 64


def _require_file(value: Any) -> FileStorage:
    if not isinstance(value, FileStorage):
        raise ValueError("must be a file part (multipart/form-data with a filename)")
    return value


def _as_list(value: Any) -> Any:
    """A repeated multipart field arrives as a list, a single one as the bare value."""
    return value if isinstance(value, list) else [value]


UploadedFile = Annotated[
    FileStorage,
    PlainValidator(_require_file),
    WithJsonSchema({"type": "string", "format": "binary"}),
]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Threshold = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class JobOptions(BaseModel):
    """What a client may say about an image besides the image itself.

    Multipart uploads send these as form fields; raw-body uploads as query parameters.
    """

    model_config = ConfigDict(extra="ignore")

    line: Name = Field(default="default", description="Production line id.")
    camera: Name | None = Field(default=None, description="Camera id.")
    pass_threshold: Threshold | None = Field(
        default=None, description="Score below which the part passes (default from settings)."
    )
    reject_threshold: Threshold | None = Field(
        default=None, description="Score at or above which the part is rejected."
    )
    metadata: str | None = Field(
        default=None,
        max_length=MAX_METADATA_CHARS,
        description=f"A JSON object, stored with the job and returned with its status. At"
        f" most {MAX_METADATA_CHARS} characters, {MAX_METADATA_DEPTH} levels of nesting and"
        f" {MAX_METADATA_KEYS} keys in all.",
    )
    callback_url: Text | None = Field(
        default=None, max_length=2048,
        description="http(s) URL POSTed the job's JSON when it ends, signed with the"
        " tenant's secret (X-Inspectq-Signature); loopback and private hosts are refused.",
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_is_a_json_object(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parsed = json.loads(value, parse_constant=_refuse_constant)
        except RecursionError as error:
            raise ValueError(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels "
                             f"(the limit)") from error
        except ValueError as error:
            raise ValueError(f"metadata is not valid JSON: {error}") from error
        if not isinstance(parsed, dict):
            raise ValueError("metadata must be a JSON object")
        if "\x00" in json.dumps(parsed, ensure_ascii=False):
            raise ValueError("metadata must not contain NUL characters (\\u0000)")
        depth, keys = _shape(parsed)
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata nests {depth} levels deep; the limit is "
                             f"{MAX_METADATA_DEPTH}")
        if keys > MAX_METADATA_KEYS:
            raise ValueError(f"metadata has {keys} keys in all; the limit is {MAX_METADATA_KEYS}")
        return value

    def metadata_object(self) -> dict[str, Any]:
        return {} if self.metadata is None else json.loads(self.metadata)

    def as_sent(self) -> dict[str, Any]:
        """The options as the client sent them (unset ones None, metadata parsed), for the
        idempotency fingerprint."""
        return {"line": self.line, "camera": self.camera, "pass": self.pass_threshold,
                "reject": self.reject_threshold, "metadata": self.metadata_object(),
                **({"callback_url": self.callback_url} if self.callback_url else {})}

    def thresholds(self, default_pass: float, default_reject: float) -> tuple[float, float]:
        """The job's (pass, reject) pair, each defaulting to the service's own.

        Raises ValueError when pass is not below reject.
        """
        pass_t = default_pass if self.pass_threshold is None else self.pass_threshold
        reject_t = default_reject if self.reject_threshold is None else self.reject_threshold
        if not (math.isfinite(pass_t) and math.isfinite(reject_t) and pass_t < reject_t):
            raise ValueError(
                f"pass_threshold ({pass_t}) must be below reject_threshold ({reject_t})"
            )
        return pass_t, reject_t


def _shape(value: Any) -> tuple[int, int]:
    """(nesting depth, number of object keys) of parsed JSON, walked without recursion: an
    object or array is one level, its contents one more."""
    depth = keys = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
            keys += len(item)
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth = max(depth, level)
        stack.extend((child, level + 1) for child in children)
    return depth, keys


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class JobForm(JobOptions):
    """``multipart/form-data`` for ``POST /v1/jobs``."""

    image: UploadedFile = Field(description="The image: JPEG, PNG, BMP or TIFF.")


class BatchForm(JobOptions):
    """``multipart/form-data`` for ``POST /v1/batches``: the options apply to every image."""

    images: Annotated[list[UploadedFile], BeforeValidator(_as_list)] = Field(
        default_factory=list, description="The images, in order (or repeat `image`)."
    )
    image: Annotated[list[UploadedFile], BeforeValidator(_as_list)] = Field(
        default_factory=list, description="Alternative name for `images`."
    )


class WaitQuery(BaseModel):
    wait: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Long-poll: seconds to wait for the job to end (capped at max_wait_s).",
    )


class JobAccepted(BaseModel):
    id: str
    status: Status = Field(
        default=Status.QUEUED,
        description="queued for a new job; an idempotent replay answers the job's current"
        " status.",
    )
    status_url: str


class BatchAccepted(BaseModel):
    batch_id: str = Field(description="The batch's id: `GET /v1/batches/<id>` shows its jobs.")
    jobs: list[JobAccepted]


class JobErrorOut(BaseModel):
    code: str
    message: str


class FeedbackOut(BaseModel):
    latest: Feedback = Field(description="The entry that counts.")
    history: list[Feedback] = Field(description="Every entry, oldest first.")


class JobOut(BaseModel):
    """What ``GET /v1/jobs/<id>`` answers (``JobRecord.public()``)."""

    id: str
    status: Status
    created_at: str
    updated_at: str
    line: str
    camera: str | None = None
    batch_id: str | None = Field(default=None, description="When submitted in a batch.")
    metadata: dict[str, Any] | None = None
    result: InspectionResult | None = Field(default=None, description="When done.")
    error: JobErrorOut | None = Field(default=None, description="When failed: why.")
    retry: RetryState | None = Field(default=None, description="While retrying.")
    feedback: FeedbackOut | None = Field(
        default=None, description="Operator feedback, once given (POST .../feedback)."
    )



class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorOut(BaseModel):
    error: ErrorDetail


# --- The results index: listings, exports, line statistics, batches ---------------------


class JobFilterQuery(BaseModel):
    """Filters shared by ``GET /v1/jobs`` and ``GET /v1/exports`` (all optional; every one
    given must match). Times are ISO 8601; without a zone they are UTC."""

    model_config = ConfigDict(extra="forbid")

    line: str | None = Field(default=None, pattern=NAME_PATTERN)
    camera: str | None = Field(default=None, pattern=NAME_PATTERN)
    decision: Decision | None = None
    status: Literal["done", "failed"] | None = Field(
        default=None, description="Only ended jobs are indexed."
    )
    since: Instant | None = Field(default=None, description="Created at or after.")
    until: Instant | None = Field(default=None, description="Created before.")
    feedback: Literal["none", "any", "confirm", "correct"] | None = Field(
        default=None, description="none: not reviewed yet; any; or the latest verdict."
    )
    batch_id: str | None = Field(default=None, max_length=64)


class JobListQuery(JobFilterQuery):
    limit: int = Field(default=50, ge=1, le=1000)
    cursor: str | None = Field(
        default=None, max_length=200, description="next_cursor of the previous page."
    )


class ExportQuery(JobFilterQuery):
    format: Literal["csv", "jsonl"] = "csv"


class JobSummary(BaseModel):
    """One ended job as the index holds it."""

    id: str
    line: str
    camera: str | None
    batch_id: str | None
    status: Literal["done", "failed"]
    created_at: str
    finished_at: str | None
    decision: Decision | None
    score: float | None
    defects: dict[str, int] = Field(description="Regions per defect class.")
    defect_count: int
    error_code: str | None
    model_version: str | None
    thresholds: dict[str, float | None]
    feedback: dict[str, Any] | None = Field(
        description="The latest verdict: {verdict, decision, at, by}, or null."
    )


class JobPage(BaseModel):
    jobs: list[JobSummary] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class LineOut(BaseModel):
    name: str
    cameras: list[str]
    last_seen: str | None
    total: int
    PASS: int
    REVIEW: int
    REJECT: int
    failed: int


class LinesOut(BaseModel):
    lines: list[LineOut]


class LinesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: Instant | None = Field(default=None, description="Count jobs from this time on.")


class StatsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: Instant | None = Field(default=None, description="Default: 24 hours before until.")
    until: Instant | None = Field(default=None, description="Default: now.")
    bucket: Literal["minute", "hour", "day"] = "hour"


class Counts(BaseModel):
    total: int
    PASS: int
    REVIEW: int
    REJECT: int
    failed: int
    review_rate: float | None = Field(description="REVIEW / decided jobs.")
    reject_rate: float | None = Field(description="REJECT / decided jobs.")
    images_per_min: float


class BucketCounts(Counts):
    start: str = Field(description="The bucket's start (UTC).")


class LineStatsOut(BaseModel):
    line: str
    bucket: Literal["minute", "hour", "day"]
    since: str
    until: str
    buckets: list[BucketCounts] = Field(description="The non-empty buckets, oldest first.")
    cameras: dict[str, Counts] = Field(description='Per camera ("" = none) over the range.')
    totals: Counts


class BatchOut(BaseModel):
    batch_id: str
    jobs: list[JobOut] = Field(description="In submission order.")
    counts: dict[str, dict[str, int]] = Field(
        description='{"status": {status: n}, "decision": {decision: n}}'
    )


class DeliveryOut(BaseModel):
    id: str = Field(description="Sent as X-Inspectq-Delivery on every attempt.")
    url: str
    subscription_id: str | None = Field(description="null: the job's own callback_url.")
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: str
    last_attempt_at: str | None
    last_status: int | None = Field(description="The receiver's HTTP status, if it answered.")
    last_error: str | None
    delivered_at: str | None
    next_attempt_at: str | None = Field(description="While pending.")


class DeliveriesOut(BaseModel):
    deliveries: list[DeliveryOut]


# --- Line health alerts (api/routes/alerts.py) ---------------------------------------------

AlertStateName = Literal["open", "acknowledged", "resolved"]


class AlertListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line: Name | None = None
    state: AlertStateName | None = Field(
        default=None, description="open (neither acknowledged nor resolved), acknowledged "
        "(still open) or resolved.")
    limit: int = Field(default=50, ge=1, le=1000)
    cursor: str | None = Field(
        default=None, max_length=200, description="next_cursor of the previous page.")


class AlertDeliveryOut(BaseModel):
    event: Literal["opened", "resolved"]
    channel: Literal["slack", "email", "webhook"]
    state: Literal["pending", "deferred", "delivered", "failed"] = Field(
        description="deferred: waiting for the line's quiet hours to end.")
    attempts: int
    last_error: str | None
    last_attempt_at: str | None
    next_attempt_at: str | None
    delivered_at: str | None


class AlertResolutionOut(BaseModel):
    reason: str = Field(description="recovered, or relearn (the baseline was reset).")
    rate: float = Field(description="The rate over the last spike window at the resolution.")
    baseline: float
    limit: float
    window: int
    events: int


class AlertOut(BaseModel):
    """One line-health alert: what tripped, the numbers at its opening, its resolution and
    acknowledgement, and each channel's delivery."""

    id: str
    line: str
    camera: str | None
    rate_kind: Literal["reject", "review", "failure"]
    test: Literal["spike", "shift"] = Field(
        description="spike: p-chart over the last window; shift: CUSUM (sustained rise).")
    state: AlertStateName
    rate: float = Field(description="The observed rate over `window` images at the opening.")
    baseline: float = Field(description="The line's learned in-control rate.")
    limit: float = Field(description="The rate above which that window is out of control.")
    window: int
    events: int = Field(description="Images of the rate (e.g. REJECTs) in the window.")
    job_ids: list[str] = Field(description="A few offending jobs (see their overlays).")
    opened_at: str
    resolved_at: str | None
    resolution: AlertResolutionOut | None
    acknowledged_at: str | None
    acknowledged_by: str | None
    ack_note: str | None
    deliveries: list[AlertDeliveryOut]


class AlertPageOut(BaseModel):
    alerts: list[AlertOut] = Field(description="Newest opening first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class ModelVersionOut(BaseModel):
    version: int
    served: bool = Field(description="The version the repository's config serves.")
    card: dict[str, Any] | None = Field(
        description="Its model_card.json (classes, sha256, training, held-out metrics per "
        "class under metrics.per_class, ...); null when the version has none.")


class ModelOut(BaseModel):
    name: str
    served_version: int = Field(description="What Triton loads from this repository (at "
                                "start, or when the model is loaded again).")
    versions: list[ModelVersionOut] = Field(description="Every installed version, newest "
                                            "first.")


class StreamHealthOut(BaseModel):
    """One monitored rate of a line as it stands (what a control chart draws)."""

    rate_kind: Literal["reject", "review", "failure"]
    camera: str | None = Field(description="Always null here: the line's own streams.")
    images: int = Field(description="Images the monitor has seen since it began learning.")
    learning: bool = Field(description="True during warm-up: the tests run against the "
                           "configured prior rate, which is then the baseline.")
    warmup_images: int
    baseline: float = Field(description="The in-control rate the tests compare against.")
    limit: float = Field(description="The spike test's upper control limit: a rate over the "
                         "last `window` images above it opens an alert.")
    window: int = Field(description="Images in the spike test's window.")
    window_images: int = Field(description="Images in the current window so far.")
    window_rate: float | None = Field(description="The rate over the current window.")
    cusum: float = Field(description="The CUSUM (sustained rise test), in nats.")
    cusum_limit: float = Field(description="The CUSUM's decision interval: at it, an alert.")
    alert_open: bool


class LineHealthOut(BaseModel):
    line: str
    streams: list[StreamHealthOut] = Field(description="One per monitored rate.")


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: Text | None = Field(default=None, max_length=200, description="Who saw it.")
    note: Text | None = Field(default=None, max_length=2000)


class LineAlertingIn(LineAlerting):
    """A line's alerting overrides (a PUT replaces all of them; a field left out takes the
    global default)."""


class EffectiveAlertingOut(EffectiveAlerting):
    """The configuration the line's monitors use: the overrides over the defaults."""


class LineAlertingOut(BaseModel):
    line: str
    config: LineAlertingIn = Field(description="This line's overrides.")
    effective: EffectiveAlertingOut
    channels_available: list[Literal["slack", "email", "webhook"]] = Field(
        description="The channels this deployment has configured.")
