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

from inspectq.jobs import RetryState, Status
from inspectq.result import InspectionResult

#: Production line and camera ids. They appear in records and metrics, never in S3 keys,
#: and the strict pattern keeps them from smuggling anything anywhere.
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
MAX_METADATA_CHARS = 16 * 1024


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
        description="A JSON object, stored with the job and returned with its status.",
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_is_a_json_object(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parsed = json.loads(value, parse_constant=_refuse_constant)
        except ValueError as error:
            raise ValueError(f"metadata is not valid JSON: {error}") from error
        if not isinstance(parsed, dict):
            raise ValueError("metadata must be a JSON object")
        return value

    def metadata_object(self) -> dict[str, Any]:
        return {} if self.metadata is None else json.loads(self.metadata)

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
    status: Literal["queued"] = "queued"
    status_url: str


class BatchAccepted(BaseModel):
    jobs: list[JobAccepted]


class JobErrorOut(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    """What ``GET /v1/jobs/<id>`` answers (``JobRecord.public()``)."""

    id: str
    status: Status
    created_at: str
    updated_at: str
    line: str
    camera: str | None = None
    metadata: dict[str, Any] | None = None
    result: InspectionResult | None = Field(default=None, description="When done.")
    error: JobErrorOut | None = Field(default=None, description="When failed: why.")
    retry: RetryState | None = Field(default=None, description="While retrying.")


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorOut(BaseModel):
    error: ErrorDetail
