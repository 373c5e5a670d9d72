"""The SDK (``inspectq_client``) against the real API: submit, idempotent replays, the
long-poll wait, typed results, errors, retries (429 with Retry-After, an API that is not up
yet), the listing, export and feedback, and the documented example in docs/client.md."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from devstack.ports import free_port, port_open
from inspectq.backends import Backends
from inspectq.index import ResultsIndex
from inspectq.result import Decision
from inspectq_client import Accepted, ApiError, Client, Job, default_idempotency_key
from tests.client.conftest import (
    API_KEY,
    REPO,
    Api,
    finish,
    needs_export,
    needs_feedback,
    needs_listing,
    png,
)

Finish = Callable[..., object]


@pytest.fixture
def client(api: Api) -> Iterator[Client]:
    with Client(api.url, API_KEY, timeout_s=10) as client:
        yield client


@pytest.fixture
def end_job(backends: Backends, results_index: ResultsIndex) -> Finish:
    """``end_job(job_id, decision)``: end a job as a worker does (and index it)."""
    return lambda job_id, decision=Decision.PASS: finish(backends, results_index, job_id,
                                                         decision)


def _line() -> str:
    """A line of its own, so the session's shared index holds only this test's jobs."""
    return f"line-{uuid.uuid4().hex[:10]}"


def test_submit_a_file_or_bytes_and_read_the_job(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "part.png"
    path.write_bytes(png())
    accepted = client.submit(path, "press-3", camera="cam-1", metadata={"part": "A-17"},
                             thresholds=(0.3, 0.7))
    assert isinstance(accepted, Accepted) and re.fullmatch(r"j_[\w-]{22}", accepted.id)
    assert accepted.status == "queued" and not accepted.replayed
    assert accepted.status_url == f"{client.url}/v1/jobs/{accepted.id}"

    job = client.get(accepted.id)
    assert isinstance(job, Job) and not job.terminal
    assert (job.id, job.status, job.line, job.camera) == (accepted.id, "queued", "press-3",
                                                          "cam-1")
    assert job.metadata == {"part": "A-17"} and job.result is None and job.error is None

    # The default Idempotency-Key is the image's, the line's and the camera's: the same
    # submission, from the file or from its bytes, is the same job, replayed.
    again = client.submit(path.read_bytes(), "press-3", camera="cam-1",
                          metadata={"part": "A-17"}, thresholds=(0.3, 0.7))
    assert (again.id, again.replayed) == (accepted.id, True)
    assert client.submit(path, "press-3", camera="cam-2").id != accepted.id
    assert default_idempotency_key(path.read_bytes(), "press-3", "cam-1") != \
        default_idempotency_key(path.read_bytes(), "press-3", "cam-2")


def test_wait_returns_as_soon_as_the_job_is_finished(client: Client, end_job: Finish) -> None:
    accepted = client.submit(png(), "press-3")
    ender = threading.Timer(2.5, end_job, (accepted.id, Decision.REJECT))
    ender.start()
    started = time.monotonic()
    job = client.wait(accepted.id, timeout_s=20)
    waited = time.monotonic() - started
    ender.join()
    # The API long-polls at most 2 s here: the wait asked more than once, and returned on
    # the ending, not at its timeout (20 s).
    assert 2.5 <= waited < 10, waited
    assert job.terminal and job.status == "done"
    assert job.result is not None and job.result.decision == "REJECT"
    assert job.result.score == pytest.approx(0.91)
    [defect] = job.result.defects
    assert (defect.class_name, defect.bbox, defect.area_px) == ("scratch", (2, 3, 10, 12), 40)
    assert job.result.raw["model"]["name"] == "inspectq_seg"


def test_wait_gives_the_job_back_at_its_timeout(client: Client) -> None:
    accepted = client.submit(png(), "press-3")
    started = time.monotonic()
    job = client.wait(accepted.id, timeout_s=3)
    assert 3 <= time.monotonic() - started < 8
    assert job.status == "queued" and not job.terminal


def test_errors_carry_the_status_code_and_message(api: Api, client: Client) -> None:
    with Client(api.url, "not-a-key") as stranger, pytest.raises(ApiError) as refused:
        stranger.submit(png(), "press-3")
    error = refused.value
    assert (error.status, error.code) == (401, "unauthorized")
    assert str(error) == "401 unauthorized: The API key is not valid."

    with pytest.raises(ApiError) as unknown:
        client.get(f"j_{'A' * 22}")
    assert (unknown.value.status, unknown.value.code) == (404, "job_not_found")

    with pytest.raises(ApiError) as invalid:
        client.submit(png(), "no spaces allowed")
    assert (invalid.value.status, invalid.value.code) == (400, "invalid_request")
    assert "line" in invalid.value.message and invalid.value.details

    key = f"mine-{uuid.uuid4()}"
    client.submit(png(), "press-3", idempotency_key=key)
    with pytest.raises(ApiError) as reused:
        client.submit(png(), "press-3", idempotency_key=key)  # another image, same key
    assert (reused.value.status, reused.value.code) == (422, "idempotency_key_reused")


def test_a_429_is_retried_after_its_retry_after(rate_limited_api: Api) -> None:
    """5 requests a second: 12 at once from 4 threads all end accepted with the retries;
    without retries the 429 surfaces as an ApiError."""
    images = [png() for _ in range(12)]
    with Client(rate_limited_api.url, API_KEY, pool_size=4) as client:
        accepted: list[Accepted] = []
        threads = [threading.Thread(target=lambda part=part: accepted.extend(
            client.submit(image, "press-3") for image in part)) for part in
            (images[0::4], images[1::4], images[2::4], images[3::4])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len({item.id for item in accepted}) == 12
    with Client(rate_limited_api.url, API_KEY, max_retries=0) as impatient, \
            pytest.raises(ApiError) as limited:
        for _ in range(20):
            impatient.submit(png(), "press-3")
    assert (limited.value.status, limited.value.code) == (429, "rate_limited")


def test_connection_errors_are_retried_until_the_api_is_up(
        start_api: Callable[..., Api]) -> None:
    port = free_port()
    late = start_api(port=port)  # starting: nothing listens yet
    assert not port_open(port)
    with Client(late.url, API_KEY, timeout_s=10) as client:
        accepted = client.submit(png(), "press-3")
        assert client.get(accepted.id).status == "queued"
    late.stop()
    with Client(f"http://127.0.0.1:{free_port()}", API_KEY, max_retries=1) as nowhere, \
            pytest.raises(requests.ConnectionError):
        nowhere.get(accepted.id)


def test_the_sdk_needs_nothing_of_the_server() -> None:
    code = ("import sys, inspectq_client; print(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'inspectq', 'inspectq_cli', 'api', 'workers', 'pydantic', 'flask', 'redis',"
            " 'boto3', 'celery'}))")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True)
    assert ran.stdout.strip() == "[]"


def _submit_finished(client: Client, end_job: Finish, line: str,
                     decisions: list[Decision]) -> list[str]:
    ids = []
    for decision in decisions:
        accepted = client.submit(png(), line, camera="cam-1")
        end_job(accepted.id, decision)
        ids.append(accepted.id)
    return ids


@needs_listing
def test_results_follow_the_cursor_newest_first(client: Client, end_job: Finish) -> None:
    line = _line()
    ids = _submit_finished(client, end_job, line, [Decision.PASS, Decision.REJECT,
                                                   Decision.REVIEW, Decision.REJECT,
                                                   Decision.PASS])
    found = list(client.results(line=line, page_size=2))
    assert sorted(job["id"] for job in found) == sorted(ids)
    order = [(job["created_at"], job["id"]) for job in found]
    assert order == sorted(order, reverse=True)
    assert found[0]["decision"] in ("PASS", "REVIEW", "REJECT") and found[0]["line"] == line
    assert [job["id"] for job in client.results(line=line, limit=3, page_size=2)] == \
        [job["id"] for job in found[:3]]
    rejected = client.results(line=line, decision="REJECT", since="2020-01-01T00:00:00Z")
    assert sorted(job["id"] for job in rejected) == sorted([ids[1], ids[3]])
    assert list(client.results(line=line, until="2020-01-01T00:00:00Z")) == []


@needs_export
def test_export_streams_csv_and_jsonl(client: Client, end_job: Finish) -> None:
    line = _line()
    ids = _submit_finished(client, end_job, line, [Decision.PASS, Decision.REJECT])
    chunks = list(client.export("csv", line=line, chunk_bytes=256))
    assert all(isinstance(chunk, bytes) for chunk in chunks)
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert sorted(row["id"] for row in rows) == sorted(ids)
    assert {row["decision"] for row in rows} == {"PASS", "REJECT"}
    lines = b"".join(client.export("jsonl", line=line, decision="REJECT")).splitlines()
    assert [json.loads(text)["id"] for text in lines] == [ids[1]]


@needs_feedback
@needs_listing
def test_feedback_is_recorded_and_filters_the_listing(client: Client,
                                                      end_job: Finish) -> None:
    line = _line()
    confirmed, corrected, untouched = _submit_finished(
        client, end_job, line, [Decision.PASS, Decision.REVIEW, Decision.PASS])
    assert isinstance(client.feedback(confirmed, "confirm", by="anna"), dict)
    client.feedback(corrected, "correct", decision="REJECT", note="a crack at the edge",
                    defects=[{"class": "crack", "bbox": [1, 2, 9, 12]}], by="anna")
    assert [job["id"] for job in client.results(line=line, feedback="correct")] == [corrected]
    assert [job["id"] for job in client.results(line=line, feedback="none")] == [untouched]
    [summary] = client.results(line=line, feedback="confirm")
    assert summary["id"] == confirmed and summary["feedback"]["verdict"] == "confirm"


def _run_example(doc: str, heading: str, api: Api, backends: Backends,
                 results_index: ResultsIndex, tmp_path: Path) -> list[str]:
    """Run the first Python block under ``heading`` of ``doc`` as written, with the
    environment it reads; the test ends the job (whose id the example prints first) as a
    worker would. Returns the lines it printed."""
    section = (REPO / doc).read_text().split(heading, 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert example is not None
    script = tmp_path / "example.py"
    script.write_text(example.group(1))
    image = tmp_path / "stain.png"
    image.write_bytes(png())
    env = {**os.environ, "INSPECTQ_URL": api.url, "INSPECTQ_API_KEY": API_KEY,
           "INSPECTQ_EXAMPLE_IMAGE": str(image), "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path) as proc:
        first = proc.stdout.readline()
        job_id = re.match(r"job (j_[\w-]{22})", first)
        assert job_id is not None, first + proc.stderr.read()
        finish(backends, results_index, job_id.group(1), Decision.REJECT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return [first.rstrip("\n"), *out.splitlines()]


def test_the_documented_example_runs(api: Api, backends: Backends,
                                     results_index: ResultsIndex, tmp_path: Path) -> None:
    """docs/client.md's "Python SDK" example."""
    printed = _run_example("docs/client.md", "## Python SDK", api, backends, results_index,
                           tmp_path)
    assert re.fullmatch(r"job j_[\w-]{22} \(new\)", printed[0])
    assert printed[1:] == ["done REJECT 0.91", "  scratch 0.91 (2, 3, 10, 12)",
                           "404 job_not_found"]


def test_the_readme_example_runs(api: Api, backends: Backends,
                                 results_index: ResultsIndex, tmp_path: Path) -> None:
    """README.md's SDK example."""
    printed = _run_example("README.md", "## Client CLI and Python SDK", api, backends,
                           results_index, tmp_path)
    assert printed[1:] == ["REJECT ['scratch']"]
