"""`inspectq dataset export`: operators' answers become a training set in the MVTec AD
layout, which the trainer's own reader (triton_models.mvtec) loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from inspectq.jobs import JobError
from inspectq.result import InspectionResult
from tests.api.conftest import AUTH, image_bytes, services_of, submit
from tests.api.test_results import index_all
from tests.api.test_status import RESULT
from tests.conftest import empty_index, settings_env
from triton_models import mvtec


def reviewed(app: Flask, client: FlaskClient, decision: str, feedback: dict | None,
             size: tuple[int, int] = (32, 24)) -> str:
    job_id = submit(client, image_bytes(size=size), line="DS").json["id"]
    services_of(app).jobs.finish(job_id, result=InspectionResult.model_validate(
        {**RESULT, "decision": decision, "width": size[0], "height": size[1]}))
    index_all(app)
    if feedback is not None:
        response = client.post(f"/v1/jobs/{job_id}/feedback", json=feedback, headers=AUTH)
        assert response.status_code == 201, response.json
    return job_id


def run_export(app: Flask, out: Path, *args: str) -> dict:
    ran = subprocess.run(
        [str(Path(sys.executable).with_name("inspectq")), "dataset", "export", "--out",
         str(out), *args], env=settings_env(services_of(app).settings), capture_output=True,
        text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout.strip().splitlines()[-1])


def test_reviewed_jobs_export_in_the_layout_the_trainer_reads(
    app: Flask, client: FlaskClient, database_url: str, tmp_path: Path
) -> None:
    empty_index(database_url)
    good = reviewed(app, client, "PASS", {"verdict": "confirm"})
    missed = reviewed(app, client, "PASS", {"verdict": "correct", "decision": "REJECT",
                                            "defects": [{"class": "pit", "bbox": [2, 3, 9, 8]}]})
    false_alarm = reviewed(app, client, "REJECT", {"verdict": "correct", "decision": "PASS"})
    reviewed(app, client, "REVIEW", {"verdict": "confirm"})  # REVIEW is no label
    reviewed(app, client, "REJECT", None)  # never reviewed
    failed = submit(client, image_bytes(), line="DS").json["id"]
    services_of(app).jobs.finish(failed, error=JobError(code="x", message="y"))

    out = tmp_path / "all"
    summary = run_export(app, out, "--verdict", "all")
    assert summary == {"images": 3, "labels": {"good": 2, "pit": 1}, "masks": True,
                       "out": str(out)}
    assert sorted(p.stem for p in (out / "train" / "good").iterdir()) == sorted(
        [good, false_alarm])
    assert [p.stem for p in (out / "test" / "pit").iterdir()] == [missed]
    mask = np.array(Image.open(out / "ground_truth" / "pit" / f"{missed}_mask.png"))
    assert mask.shape == (24, 32) and mask[3:8, 2:9].all() and mask.sum() == 255 * 7 * 5

    data = mvtec.load(out, size=32)  # the trainer's reader takes it as it is
    assert sorted(data.labels.tolist()) == [0, 0, 1] and data.classes == ["background", "pit"]
    # (resized to 32x32 by the reader: the 7x5 box stretches to about 7x7 pixels)
    assert data.masks is not None and 35 <= (data.masks[data.labels == 1] == 1).sum() <= 56

    corrected = run_export(app, tmp_path / "corrected", "--verdict", "correct")
    assert corrected["images"] == 2  # the two corrections only
    manifest = [json.loads(line) for line in
                (tmp_path / "corrected" / "manifest.jsonl").read_text().splitlines()]
    assert {entry["job"] for entry in manifest} == {missed, false_alarm}
