"""``make large``: large camera images through the whole stack, as a busy line sends them.

Shows that a healthy but busy system finishes big work instead of failing it: one 12 MP
image alone, then 8 at once, then 2 images of 40 MP (the default pixel limit) at once, each
a JPEG of synthetic surfaces with defects. Prints every job's outcome and time to result
(from the upload to the result, as a client sees it) on a separate stack (Redis DB 9,
``var/large``) with the default time limits, which follow each image's tile count.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from devstack.client import InspectqClient
from devstack.stack import StackConfig
from triton_models.synth import DEFECT_CLASSES, SIZE, render


def camera_jpeg(width: int, height: int, seed: int) -> bytes:
    """A ``width`` x ``height`` JPEG made of synthetic 256 px surface patches, one in nine
    with a defect."""
    rows, cols = -(-height // SIZE), -(-width // SIZE)
    patches = []
    for row in range(rows):
        line = []
        for col in range(cols):
            index = row * cols + col
            defect = DEFECT_CLASSES[index % len(DEFECT_CLASSES)] if index % 9 == 4 else None
            line.append(render(seed, index, defect)[0])
        patches.append(np.concatenate(line, axis=1))
    image = np.concatenate(patches, axis=0)[:height, :width]
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


@dataclass
class Outcome:
    status: str
    seconds: float
    detail: str


def _one(client: InspectqClient, data: bytes, name: str, deadline_s: float) -> Outcome:
    started = time.monotonic()
    accepted = client.submit(data, name, line="large")
    job = client.wait_done(accepted["id"], timeout_s=deadline_s)
    seconds = time.monotonic() - started
    if job["status"] == "done":
        result = job["result"]
        detail = (f"{result['width']}x{result['height']} {result['decision']} "
                  f"score {result['score']:.2f}, {len(result['defects'])} regions, "
                  f"worker {result['timings']['total_ms'] / 1000:.1f} s")
    else:
        detail = str(job.get("error") or job.get("retry") or job["status"])
    return Outcome(job["status"], seconds, detail)


def _round(client: InspectqClient, label: str, images: list[bytes], deadline_s: float
           ) -> tuple[str, list[Outcome]]:
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        outcomes = list(pool.map(lambda item: _one(client, item[1], f"{label}-{item[0]}.jpg",
                                                   deadline_s), enumerate(images)))
    times = [o.seconds for o in outcomes]
    done = sum(o.status == "done" for o in outcomes)
    lines = [f"  {label}: {done} of {len(images)} done; time to result (s) "
             f"p50 {statistics.median(times):.1f}  max {max(times):.1f}"]
    lines += [f"      {o.status:<7} {o.seconds:6.1f} s  {o.detail}" for o in outcomes]
    return "\n".join(lines), outcomes


def run(config: StackConfig, deadline_s: float) -> str:
    client = InspectqClient(config.api_url, config.settings.api_key.get_secret_value(),
                            timeout_s=120)
    print("making images: 9 x 12 MP (4096x3000), 2 x 40 MP (8000x5000) ...", flush=True)
    twelve = [camera_jpeg(4096, 3000, seed) for seed in range(9)]
    forty = [camera_jpeg(8000, 5000, 100 + seed) for seed in range(2)]
    sizes = ", ".join(f"{len(d) / 1e6:.1f}" for d in (twelve[0], forty[0]))
    report = [f"large images through the API (JPEG sizes, MB: {sizes})"]
    for label, images in (("12 MP x 1", twelve[:1]), ("12 MP x 8 at once", twelve[1:]),
                          ("40 MP x 2 at once", forty)):
        print(f"{label} ...", flush=True)
        text, _ = _round(client, label, images, deadline_s)
        print(text, flush=True)
        report.append(text)
    return "\n".join(report)
