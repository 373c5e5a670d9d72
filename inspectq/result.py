"""The inspection result: what inspectq concluded about one image, as one typed model.

The worker builds an :class:`InspectionResult`, the job record holds it
(``JobRecord.result``), the API serialises it and the OpenAPI document describes it field by
field from these same classes. ``model_dump(by_alias=True)`` gives the public JSON: a region's
class is ``"class"``, the thresholds are ``"pass"`` and ``"reject"``.

The traffic light lives here too (:class:`Decision`, :func:`final_decision`): a decision is a
pure function of the stored score, the job's thresholds, the stored image quality and the
stored out-of-domain score, so anything holding a result (the worker, the API, an index, a
dashboard slider, ``inspectq model evaluate``) can re-decide without running the model.

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


#: A model's ``ood_score`` is normalised so that 1.0 is its own threshold (see
#: docs/model-contract.md): above it the image is unlike the images the model learned from.
OOD_LIMIT = 1.0


def is_out_of_domain(ood_score: float | None) -> bool:
    """True when the model says the image is unlike its training images; a model without an
    ``ood_score`` output (``None``) never flags one."""
    return ood_score is not None and ood_score > OOD_LIMIT


def final_decision(score: float, thresholds: Thresholds, quality: ImageQuality,
                   ood_score: float | None = None) -> Decision:
    """The decision a job gets: the score against the thresholds, then the quality rule;
    an out-of-domain image goes to a person (REVIEW) whatever its score, because the model's
    score means little on images unlike those it learned from: it neither PASSes nor REJECTs
    such an image on its own."""
    if is_out_of_domain(ood_score):
        return Decision.REVIEW
    return apply_quality_rule(decide(score, thresholds), quality)


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
    ood_score: float | None = Field(
        default=None, ge=0,
        description="The model's out-of-domain score, the max over its tiles: above 1.0 the"
        " image is unlike the images the model learned from, and the decision is REVIEW"
        " whatever the score. null when the model has no ood_score output.",
    )
    review_reasons: list[str] = Field(
        default_factory=list,
        description="Why the decision is REVIEW although the score alone would not make it:"
        " out_of_domain, and each image-quality issue that kept a PASS from passing. Empty"
        " otherwise.",
    )
    timings: Timings
    cache_hit: bool = Field(
        description="True when an earlier job's answer for the same bytes and model was reused."
    )


def review_reasons(score: float, thresholds: Thresholds, quality: ImageQuality,
                   ood_score: float | None) -> list[str]:
    """The ``review_reasons`` of a result (see :class:`InspectionResult`)."""
    if final_decision(score, thresholds, quality, ood_score) is not Decision.REVIEW:
        return []
    reasons = ["out_of_domain"] if is_out_of_domain(ood_score) else []
    if decide(score, thresholds) is Decision.PASS:
        reasons += [issue.value for issue in quality.issues]
    return reasons
