"""The inspection result: what inspectq concluded about one image, as one typed model.

The worker builds an :class:`InspectionResult`, the job record holds it
(``JobRecord.result``), the API serialises it and the OpenAPI document describes it field by
field from these same classes. ``model_dump(by_alias=True)`` gives the public JSON: a region's
class is ``"class"``, the thresholds are ``"pass"`` and ``"reject"``.

The traffic light lives here too (:class:`Decision`, :func:`decide`, :func:`apply_quality_rule`):
a decision is a pure function of the stored score, the job's thresholds and the stored image
quality, ``apply_quality_rule(decide(score, thresholds), quality)``, so anything holding a
result (the worker, the API, an index, a dashboard slider) can re-decide without running the
model.

Sizes, boxes and the mask are in the upright image: the workers apply the file's EXIF
orientation before inference.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Decision(StrEnum):
    """The traffic light: PASS (ship it), REVIEW (a person looks), REJECT (scrap it)."""

    PASS = "PASS"
    REVIEW = "REVIEW"
    REJECT = "REJECT"


class Thresholds(BaseModel):
    """A job's decision thresholds: PASS below ``pass``, REJECT above ``reject``."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    pass_threshold: float = Field(alias="pass", description="Scores below this PASS.")
    reject_threshold: float = Field(alias="reject", description="Scores above this REJECT.")


def decide(score: float, thresholds: Thresholds) -> Decision:
    """PASS below ``pass``, REJECT above ``reject``, REVIEW from ``pass`` to ``reject``
    inclusive: a score exactly on a threshold goes to a person, never silently through."""
    if score < thresholds.pass_threshold:
        return Decision.PASS
    if score > thresholds.reject_threshold:
        return Decision.REJECT
    return Decision.REVIEW


class QualityIssue(StrEnum):
    """Why a frame may not show the part well enough to trust a PASS (the checks and their
    thresholds are in ``inspectq/quality.py``)."""

    BLANK = "blank"
    SATURATED = "saturated"
    LOW_CONTRAST = "low_contrast"
    OUT_OF_FOCUS = "out_of_focus"


class ImageQuality(BaseModel):
    """What the image-quality checks found in the decoded frame, before inference."""

    issues: list[QualityIssue] = Field(
        default_factory=list,
        description="blank (nearly uniform), saturated (a large share of pixels clipped at"
        " black or white), low_contrast, out_of_focus; empty when the frame looks usable."
        " Any issue keeps the decision from PASS (REVIEW instead).",
    )
    detail: str = Field(
        default="",
        description="The issues for a person, with the measured values and the limits;"
        " empty when there are none.",
    )


def apply_quality_rule(decision: Decision, quality: ImageQuality) -> Decision:
    """A frame with image-quality issues never PASSes: a PASS becomes REVIEW, because a low
    score on a blank, clipped or blurred frame means the model saw nothing, not that the part
    is good. REVIEW and REJECT stand (a defect found on a poor frame is still a defect)."""
    if decision is Decision.PASS and quality.issues:
        return Decision.REVIEW
    return decision


class Region(BaseModel):
    """One connected defect region, in upright image pixels."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    class_name: str = Field(alias="class", description="Defect class (a name of model.classes).")
    score: float = Field(description="Mean defect probability over the region's pixels.")
    bbox: tuple[int, int, int, int] = Field(
        description="[x0, y0, x1, y1] in upright image pixels; x1 and y1 are exclusive."
    )
    area_px: int = Field(description="Defect pixels in the region.")
    area_ratio: float = Field(description="area_px divided by the image's pixel count.")


class ModelInfo(BaseModel):
    """Which model answered: Triton's name and version, the file's digest, its classes."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    name: str
    version: str
    sha256: str = Field(description="sha256 of the TorchScript file ('' when unknown).")
    classes: tuple[str, ...] = Field(
        description="Class names by mask value: mask.png pixel value k is classes[k]"
        " (classes[0] is the background)."
    )


class Timings(BaseModel):
    """Where the time went, in milliseconds, in the order an image travels."""

    ingest_ms: float = Field(default=0.0, description="API: validate and store the upload.")
    queue_wait_ms: float = Field(default=0.0, description="From enqueue to a worker taking it.")
    s3_get_ms: float = Field(default=0.0, description="Inference-cache lookup and image fetch.")
    preprocess_ms: float = Field(
        default=0.0, description="Decode, image-quality checks, cut into tiles."
    )
    triton_ms: float = Field(default=0.0, description="Model info and inference on Triton.")
    postprocess_ms: float = Field(default=0.0, description="Stitch tiles, find regions.")
    record_ms: float = Field(default=0.0, description="Store the mask, remember the answer.")
    total_ms: float = Field(default=0.0, description="Worker: enqueue to decision.")


class InspectionResult(BaseModel):
    """A done job's result."""

    model_config = ConfigDict(protected_namespaces=())

    decision: Decision = Field(
        description="PASS below thresholds.pass, REJECT above thresholds.reject, REVIEW from"
        " one to the other inclusive; a would-be PASS is REVIEW when quality has issues."
    )
    score: float = Field(
        ge=0, le=1, description="Image defect score: the max over its tiles' scores."
    )
    defects: list[Region] = Field(description="Defect regions, most confident first.")
    width: int = Field(description="Image width in pixels, upright (EXIF orientation applied).")
    height: int = Field(description="Image height in pixels, upright.")
    model: ModelInfo
    thresholds: Thresholds = Field(description="The thresholds the decision was made with.")
    quality: ImageQuality = Field(
        default_factory=ImageQuality,
        description="Image-quality checks of the decoded frame; any issue turns a PASS into"
        " REVIEW. Empty in results recorded before the checks existed.",
    )
    timings: Timings
    cache_hit: bool = Field(
        description="True when an earlier job's answer for the same bytes and model was reused."
    )
