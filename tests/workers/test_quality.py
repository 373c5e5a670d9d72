"""The image-quality checks (``inspectq/quality.py``) on real arrays, and the rule that keeps a
frame with quality issues from PASS (``inspectq.result.apply_quality_rule``)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from devstack import samples
from inspectq.quality import check_quality
from inspectq.result import (
    Decision,
    ImageQuality,
    QualityIssue,
    Region,
    Thresholds,
    final_decision,
    review_reasons,
)
from tests.workers.conftest import slow_image, strip_with_scratch
from triton_models.synth import DEFECT_CLASSES, render
from workers.cache import ModelAnswer

BLANK, SATURATED = QualityIssue.BLANK, QualityIssue.SATURATED
LOW_CONTRAST, OUT_OF_FOCUS = QualityIssue.LOW_CONTRAST, QualityIssue.OUT_OF_FOCUS


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _cells(seed: int = 0, side: int = 512, cell: int = 8) -> np.ndarray:
    """A sharp-edged texture: random grey cells of ``cell`` pixels."""
    grid = np.random.default_rng(seed).integers(60, 200, (side // cell, side // cell), np.uint8)
    grey = cv2.resize(grid, (side, side), interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)


def _usable_frames() -> dict[str, np.ndarray]:
    """Frames that must never be flagged: the demo samples, the model's synthetic surfaces
    (every surface type and defect class), compressed, upscaled and stretched copies, and
    the flat test images the worker tests send (a colour defect on a uniform strip)."""
    frames = {sample.name: sample.rgb for sample in samples.samples()}
    for index in range(12):
        for defect in (None, *DEFECT_CLASSES):
            rgb, _ = render(samples.SAMPLE_SEED, index, defect)
            frames[f"synth_{index}_{defect}"] = rgb
            if index % 3 == 0:
                frames[f"synth_{index}_{defect}_jpeg50"] = _jpeg(rgb, 50)
                frames[f"synth_{index}_{defect}_up4x"] = cv2.resize(rgb, (1024, 1024))
    clean, _ = render(samples.SAMPLE_SEED, 1, None)
    frames["12mp_upscaled"] = cv2.resize(clean, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    frames["strip_with_scratch"] = strip_with_scratch()
    frames["slow_image"] = slow_image()
    return frames


def test_usable_surfaces_are_not_flagged() -> None:
    flagged = {name: quality.detail for name, frame in _usable_frames().items()
               if (quality := check_quality(frame)).issues}
    assert flagged == {}


@pytest.mark.parametrize(("frame", "issues"), [
    pytest.param(np.zeros((256, 256, 3), np.uint8), [BLANK, SATURATED], id="all-black"),
    pytest.param(np.full((300, 500, 3), 120, np.uint8), [BLANK], id="uniform-grey"),
    pytest.param(np.full((256, 256, 3), 255, np.uint8), [BLANK, SATURATED], id="all-white"),
])
def test_blank_frames_are_flagged(frame: np.ndarray, issues: list[QualityIssue]) -> None:
    assert check_quality(frame).issues == issues


def test_a_frame_of_noise_only_is_very_low_contrast() -> None:
    rng = np.random.default_rng(1)
    foggy = np.clip(rng.normal(100, 1.5, (256, 256, 3)), 0, 255).astype(np.uint8)
    quality = check_quality(foggy)
    assert quality.issues == [LOW_CONTRAST]
    assert quality.detail.startswith("very low contrast: 1.")


@pytest.mark.parametrize(("clipped_rows", "issues"), [(100, [SATURATED]), (50, [])])
def test_a_frame_clipped_over_a_quarter_of_its_pixels_is_saturated(
    clipped_rows: int, issues: list[QualityIssue]
) -> None:
    frame = render(samples.SAMPLE_SEED, 0, None)[0].copy()
    frame[:clipped_rows] = 255  # 100 rows of 256: 39% blown out; 50 rows: 20%
    assert check_quality(frame).issues == issues


def test_a_badly_defocused_texture_is_out_of_focus_and_a_sharp_one_is_not() -> None:
    sharp = _cells()
    assert check_quality(sharp).issues == []
    defocused = check_quality(cv2.GaussianBlur(sharp, (0, 0), 8))
    assert defocused.issues == [OUT_OF_FOCUS]
    assert defocused.detail == "out of focus: sharpness 0.020 (limit 0.03)"


def test_the_focus_limit_can_be_lowered_or_turned_off() -> None:
    """Soft imaging (e.g. electroluminescence) measures low in focus: the limit is a setting."""
    defocused = cv2.GaussianBlur(_cells(), (0, 0), 8)  # sharpness 0.020
    assert check_quality(defocused, focus_min_sharpness=0.025).issues == [OUT_OF_FOCUS]
    assert check_quality(defocused, focus_min_sharpness=0.015).issues == []
    assert check_quality(defocused, focus_min_sharpness=0).issues == []


def test_a_smooth_surface_is_never_called_out_of_focus() -> None:
    """Without fine detail, in focus and out of focus look the same: no verdict."""
    ramp = np.tile(np.linspace(40, 200, 512, dtype=np.float32), (512, 1))
    smooth = cv2.cvtColor(ramp.astype(np.uint8), cv2.COLOR_GRAY2RGB)
    assert check_quality(smooth).issues == []


def test_the_detail_names_every_issue_with_its_measure_and_limit() -> None:
    quality = check_quality(np.zeros((64, 64, 3), np.uint8))
    assert quality.detail == (
        "blank: the frame is nearly uniform (contrast 0.0 levels, limit 1); saturated: 100%"
        " of the pixels are clipped at black or white (limit 25%)")
    assert check_quality(_cells()).detail == ""


# --- the decision --------------------------------------------------------------------------

THRESHOLDS = Thresholds(pass_threshold=0.40, reject_threshold=0.65)


@pytest.mark.parametrize(("score", "issues", "expected"), [
    (0.11, [BLANK], Decision.REVIEW),  # the all-black frame that used to PASS
    (0.05, [OUT_OF_FOCUS, SATURATED], Decision.REVIEW),
    (0.05, [], Decision.PASS),
    (0.50, [LOW_CONTRAST], Decision.REVIEW),
    (0.99, [BLANK], Decision.REJECT),  # a defect found on a poor frame is still a defect
])
def test_a_frame_with_quality_issues_never_passes(
    score: float, issues: list[QualityIssue], expected: Decision
) -> None:
    quality = ImageQuality(issues=issues, detail="...")
    assert final_decision(score, THRESHOLDS, quality) is expected
    reasons = review_reasons(score, THRESHOLDS, quality, None)
    assert reasons == ([i.value for i in issues] if expected is Decision.REVIEW
                       and score < THRESHOLDS.pass_threshold else [])


@pytest.mark.parametrize(("score", "issues", "ood", "expected", "reasons"), [
    (0.99, [], 1.5, Decision.REVIEW, ["out_of_domain"]),  # never REJECTed on its own
    (0.05, [], 1.5, Decision.REVIEW, ["out_of_domain"]),  # never PASSed either
    (0.05, [BLANK], 3.0, Decision.REVIEW, ["out_of_domain", "blank"]),
    (0.50, [], 9.0, Decision.REVIEW, ["out_of_domain"]),
    (0.99, [], 1.0, Decision.REJECT, []),  # 1.0 is the model's own threshold: in domain
    (0.05, [], 0.2, Decision.PASS, []),
    (0.05, [], None, Decision.PASS, []),  # a model without the output never flags
])
def test_an_out_of_domain_image_is_reviewed_whatever_its_score(
    score: float, issues: list[QualityIssue], ood: float | None, expected: Decision,
    reasons: list[str],
) -> None:
    quality = ImageQuality(issues=issues)
    assert final_decision(score, THRESHOLDS, quality, ood) is expected
    assert review_reasons(score, THRESHOLDS, quality, ood) == reasons


def test_a_cached_answer_carries_the_quality() -> None:
    """A cache hit reports the quality the first inference found."""
    answer = ModelAnswer(
        score=0.05, regions=[Region(class_name="pit", score=0.9, bbox=(1, 2, 3, 4), area_px=4,
                                    area_ratio=0.1)],
        width=64, height=48, quality=check_quality(np.zeros((48, 64, 3), np.uint8)),
        mask_key="jobs/j_x/mask-0.png", params={"tile_size": 256, "format": ModelAnswer.FORMAT},
    )
    again = ModelAnswer.model_validate_json(answer.model_dump_json(by_alias=True))
    assert again == answer and again.quality.issues == [BLANK, SATURATED]
