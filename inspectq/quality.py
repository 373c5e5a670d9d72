"""Stage 3, after decoding: is the frame usable at all?

A model asked about a frame that shows nothing (lens cap, lights off, blown-out exposure, a
camera out of focus) answers with a low score, and a low score would PASS the part unseen.
These cheap checks (under 1 ms on a 256x256 frame, about 45 ms on 12 MP on the 2-core
development machine, against 120 ms to decode it) find such frames; the decision
then never PASSes them (``inspectq.result.apply_quality_rule``: REVIEW instead), and the
result says why (``ImageQuality``).

The thresholds are deliberately conservative: a normal textured or clean industrial surface
must not be flagged, so each limit sits well below what the synthetic surfaces the model was
trained on measure (brushed steel, cast metal and painted panels, under lighting gradients,
JPEG compression and up to 16x upscaling; ``tests/workers/test_quality.py`` checks them),
and a frame is flagged only when it is clearly unusable. "Contrast" below is the largest
standard deviation of any colour channel, in 8-bit levels (a colour defect on a grey
surface counts).
"""

from __future__ import annotations

import cv2
import numpy as np

from inspectq.result import ImageQuality, QualityIssue

#: Blank: contrast below 1 level, i.e. less variation than a lit camera's own noise. The
#: synthetic surfaces measure 6.5 levels at the least.
BLANK_MAX_CONTRAST = 1.0
#: Very low contrast: below 2 levels the frame is practically sensor noise only (an
#: underexposed or fogged frame); still 3x under the least-contrasted synthetic surface.
LOW_CONTRAST_MAX_CONTRAST = 2.0
#: Saturated: more than a quarter of the pixels' grey value clipped at 0 or 255, so a quarter
#: of the surface is not seen. Clean synthetic surfaces clip at most 0.13%.
SATURATED_MAX_SHARE = 0.25
#: Focus is judged on a grey copy shrunk by a whole factor to a shorter side of this to twice
#: this many pixels: shrinking averages sensor noise away (noise is sharp, and would pass a
#: blurred frame as in focus) and makes the measure independent of the camera's resolution.
FOCUS_SIDE_PX = 256
#: Fine detail is the grey copy minus its mean over windows this many pixels square: what is
#: left is the surface's texture and edges, without lighting gradients or vignetting. (A box
#: mean costs 0.2 ms where a Gaussian of the same width costs 3.)
FOCUS_DETAIL_WINDOW_PX = 55
#: Too little fine detail (its standard deviation in levels) to judge focus: a smooth clean
#: surface looks the same in and out of focus, so it is never called out of focus.
FOCUS_MIN_DETAIL = 2.0
#: Out of focus: the variance of the Laplacian (the finest detail) is below this fraction of
#: the fine detail's variance. Synthetic surfaces measure at least 0.09 (JPEG at quality 50
#: and 4x upscaled frames included), so the limit keeps a 3x margin; a texture of 8 px cells
#: measures 2.5 sharp, 0.24 / 0.064 / 0.026 blurred by a Gaussian of sigma 2 / 4 / 6 px: only
#: a badly defocused frame is flagged.
FOCUS_MIN_SHARPNESS = 0.03


def check_quality(image: np.ndarray,
                  focus_min_sharpness: float = FOCUS_MIN_SHARPNESS) -> ImageQuality:
    """The quality issues of an ``(H, W, 3)`` uint8 RGB frame (``decode_image``'s output)."""
    contrast = _stddev(image)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    histogram = cv2.calcHist([grey], [0], None, [256], [0, 256])
    clipped = float(histogram[0, 0] + histogram[255, 0]) / grey.size
    found: list[tuple[QualityIssue, str]] = []
    if contrast < BLANK_MAX_CONTRAST:
        found.append((QualityIssue.BLANK, f"blank: the frame is nearly uniform (contrast"
                      f" {contrast:.1f} levels, limit {BLANK_MAX_CONTRAST:g})"))
    elif contrast < LOW_CONTRAST_MAX_CONTRAST:
        found.append((QualityIssue.LOW_CONTRAST, f"very low contrast: {contrast:.1f} levels"
                      f" (limit {LOW_CONTRAST_MAX_CONTRAST:g})"))
    if clipped > SATURATED_MAX_SHARE:
        found.append((QualityIssue.SATURATED, f"saturated: {clipped:.0%} of the pixels are"
                      f" clipped at black or white (limit {SATURATED_MAX_SHARE:.0%})"))
    # focus means nothing on a featureless frame; a limit of 0 turns the check off
    if contrast >= LOW_CONTRAST_MAX_CONTRAST and focus_min_sharpness > 0:
        sharpness = focus_sharpness(grey)
        if sharpness is not None and sharpness < focus_min_sharpness:
            found.append((QualityIssue.OUT_OF_FOCUS, f"out of focus: sharpness"
                          f" {sharpness:.3f} (limit {focus_min_sharpness:g})"))
    return ImageQuality(issues=[issue for issue, _ in found],
                        detail="; ".join(text for _, text in found))


def focus_sharpness(grey: np.ndarray) -> float | None:
    """Variance of the Laplacian over the variance of the fine detail, on a copy shrunk
    towards ``FOCUS_SIDE_PX``; None when there is too little fine detail to tell."""
    factor = min(grey.shape) // FOCUS_SIDE_PX
    if factor >= 2:  # a whole factor: OpenCV's fast path (5 ms instead of 45 on 12 MP)
        grey = cv2.resize(grey, None, fx=1 / factor, fy=1 / factor,
                          interpolation=cv2.INTER_AREA)
    small = grey.astype(np.float32)
    detail = _stddev(small - cv2.blur(small, (FOCUS_DETAIL_WINDOW_PX, FOCUS_DETAIL_WINDOW_PX)))
    if detail < FOCUS_MIN_DETAIL:
        return None
    return (_stddev(cv2.Laplacian(small, cv2.CV_32F)) / detail) ** 2


def _stddev(image: np.ndarray) -> float:
    """The largest standard deviation of any channel."""
    return float(cv2.meanStdDev(image)[1].max())
