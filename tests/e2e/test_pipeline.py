"""Images through the real stack over HTTP, as a factory uploader sends them."""

from __future__ import annotations

import cv2
import numpy as np

from devstack import samples
from devstack.client import InspectqClient


def _covers(outer: list[int], inner: tuple[int, int, int, int], slack: int = 6) -> bool:
    """True when box ``outer`` contains ``inner`` give or take ``slack`` pixels."""
    return (
        outer[0] <= inner[0] + slack
        and outer[1] <= inner[1] + slack
        and outer[2] >= inner[2] - slack
        and outer[3] >= inner[3] - slack
    )


def test_clean_image_passes(client: InspectqClient) -> None:
    clean = next(s for s in samples.samples() if s.defect is None)
    job = client.wait_done(client.submit(clean.png(), line="e2e")["id"])
    assert job["status"] == "done", job
    result = job["result"]
    assert result["decision"] == "PASS", result
    assert (result["width"], result["height"]) == (256, 256)
    assert result["model"]["sha256"] and result["model"]["version"]


def test_large_defect_is_rejected_with_a_covering_box(client: InspectqClient) -> None:
    stain = next(s for s in samples.samples() if s.defect == "stain")
    assert stain.box is not None
    job = client.wait_done(client.submit(stain.png(), line="e2e")["id"])
    assert job["status"] == "done", job
    result = job["result"]
    assert result["decision"] == "REJECT", result
    boxes = [d["bbox"] for d in result["defects"]]
    # The defect may be split into several regions: their union must cover the true box.
    union = [min(b[0] for b in boxes), min(b[1] for b in boxes),
             max(b[2] for b in boxes), max(b[3] for b in boxes)]
    assert _covers(union, stain.box), (union, stain.box)
    overlay = cv2.imdecode(np.frombuffer(client.png(job["id"], "overlay"), np.uint8), 1)
    assert overlay.shape[:2] == (256, 256)


def test_steel_strip_goes_through_tiling(client: InspectqClient) -> None:
    strip = samples.steel_strip("stain")
    assert strip.box is not None
    job = client.wait_done(client.submit(strip.png(), line="e2e-strip")["id"])
    assert job["status"] == "done", job
    result = job["result"]
    assert (result["width"], result["height"]) == samples.STRIP_SIZE
    assert result["decision"] == "REJECT", result
    # Regions are reported in original pixels: they lie where the defect was pasted.
    assert any(
        d["bbox"][0] >= strip.box[0] - 16 and d["bbox"][2] <= strip.box[2] + 16
        for d in result["defects"]
    ), (result["defects"], strip.box)
    clean = samples.steel_strip(None)
    job = client.wait_done(client.submit(clean.png(), line="e2e-strip")["id"])
    assert job["result"]["decision"] == "PASS", job["result"]
