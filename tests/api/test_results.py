"""The inspection record through the API: listings, exports, line statistics, feedback and
batches, read from the real results index (PostgreSQL) that the real indexer wrote.

Jobs are submitted through the API, ended as a worker ends them (``JobStore.finish``) and
indexed by ``workers.indexer.Indexer`` draining its Redis list, as in production.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.apikeys import add_key
from inspectq.feedback import FeedbackIn
from inspectq.jobs import JobError
from inspectq.keyspace import keys_for
from inspectq.result import InspectionResult
from tests.api.conftest import AUTH, closed_port_url, image_bytes, services_of, submit
from tests.api.test_status import RESULT
from tests.conftest import empty_index
from workers.indexer import Indexer

SCORES = {"PASS": 0.1, "REVIEW": 0.5, "REJECT": 0.9}


@pytest.fixture(autouse=True)
def _empty_index(database_url: str) -> None:
    empty_index(database_url)


def ended_job(app: Flask, client: FlaskClient, line: str, decision: str | None,
              camera: str = "cam-1", headers: dict[str, str] | None = None) -> str:
    """Submit an image; end it as a worker would: done with ``decision``, or failed."""
    accepted = submit(client, image_bytes(size=(20 + len(line), 20)), headers=headers,
                      line=line, camera=camera)
    assert accepted.status_code == 202, accepted.json
    job_id = accepted.json["id"]
    jobs = services_of(app).jobs
    if decision is None:
        jobs.finish(job_id, error=JobError(code="undecodable_image", message="bad bytes"))
    else:
        jobs.finish(job_id, result=InspectionResult.model_validate(
            {**RESULT, "decision": decision, "score": SCORES[decision]}))
    return job_id


def index_all(app: Flask) -> None:
    indexer = Indexer(services_of(app))
    while indexer.drain_once(block_s=0.1):
        pass


def other_tenant(app: Flask) -> dict[str, str]:
    key, _ = add_key(Path(services_of(app).settings.api_keys_file), "acme")
    return {"Authorization": f"Bearer {key}"}


def test_listing_filters_and_pages_return_exactly_the_tenants_jobs(
    app: Flask, client: FlaskClient
) -> None:
    plan = ["PASS", "REJECT", "REVIEW", "PASS", None, "REJECT", "PASS"]
    mine = [ended_job(app, client, "L1", decision) for decision in plan]
    ended_job(app, client, "L2", "REJECT")
    theirs = other_tenant(app)
    their_job = ended_job(app, client, "L1", "REJECT", headers=theirs)
    queued = submit(client, image_bytes(), line="L1").json["id"]  # not ended: not listed
    index_all(app)

    seen, cursor = [], None
    while True:
        query = "line=L1&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/v1/jobs?{query}", headers=AUTH)
        assert page.status_code == 200, page.json
        assert len(page.json["jobs"]) <= 2
        seen += page.json["jobs"]
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert [job["id"] for job in seen] == list(reversed(mine))  # newest first, every one
    assert queued not in {job["id"] for job in seen} and their_job not in seen
    by_id = {job["id"]: job for job in seen}
    for job_id, decision in zip(mine, plan, strict=True):
        assert by_id[job_id]["decision"] == decision
        assert by_id[job_id]["status"] == ("failed" if decision is None else "done")

    rejects = client.get("/v1/jobs?line=L1&decision=REJECT", headers=AUTH).json["jobs"]
    assert {job["id"] for job in rejects} == {mine[1], mine[5]}
    failed = client.get("/v1/jobs?status=failed", headers=AUTH).json["jobs"]
    assert [job["id"] for job in failed] == [mine[4]]
    assert [job["id"] for job in client.get("/v1/jobs", headers=theirs).json["jobs"]] == [
        their_job]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert client.get(f"/v1/jobs?since={future}", headers=AUTH).json["jobs"] == []


def test_bad_listing_input_is_a_json_400(client: FlaskClient) -> None:
    for query in ("cursor=not-a-cursor", "limit=0", "limit=5000", "decision=MAYBE",
                  "since=yesterday", "line=bad/line", "colour=red"):
        response = client.get(f"/v1/jobs?{query}", headers=AUTH)
        assert response.status_code == 400, (query, response.json)
        assert response.is_json and response.json["error"]["code"], query


def test_exports_have_one_row_per_job_with_the_documented_columns(
    app: Flask, client: FlaskClient
) -> None:
    jobs = [ended_job(app, client, "L3", decision)
            for decision in ("PASS", "REJECT", None, "REVIEW")]
    ended_job(app, client, "L3", "REJECT", headers=other_tenant(app))
    index_all(app)
    response = client.get("/v1/exports?line=L3&format=csv", headers=AUTH)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == services_of(app).index.EXPORT_COLUMNS
    assert sorted(row[rows[0].index("id")] for row in rows[1:]) == sorted(jobs)
    lines = client.get("/v1/exports?line=L3&format=jsonl", headers=AUTH).get_data(
        as_text=True).splitlines()
    decisions = sorted(str(json.loads(line)["decision"]) for line in lines)
    assert decisions == sorted(["PASS", "REJECT", "None", "REVIEW"])
    empty = client.get("/v1/exports?line=nothing-here", headers=AUTH)
    assert empty.get_data(as_text=True).splitlines() == [",".join(rows[0])]


def test_lines_and_line_stats_count_what_was_inspected(app: Flask, client: FlaskClient) -> None:
    plan = {"cam-1": ["PASS", "PASS", "REJECT", "REVIEW"], "cam-2": ["PASS", None, "REJECT"]}
    for camera, decisions in plan.items():
        for decision in decisions:
            ended_job(app, client, "L4", decision, camera=camera)
    index_all(app)
    [line] = [line for line in client.get("/v1/lines", headers=AUTH).json["lines"]
              if line["name"] == "L4"]
    assert line["cameras"] == ["cam-1", "cam-2"]
    assert (line["total"], line["PASS"], line["REVIEW"], line["REJECT"], line["failed"]) == (
        7, 3, 1, 2, 1)
    stats = client.get("/v1/lines/L4/stats?bucket=minute", headers=AUTH)
    assert stats.status_code == 200, stats.json
    totals = stats.json["totals"]
    assert totals["total"] == 7 and totals["REJECT"] == 2
    assert totals["reject_rate"] == pytest.approx(2 / 6)  # of the decided jobs
    assert sum(bucket["total"] for bucket in stats.json["buckets"]) == 7
    assert stats.json["cameras"]["cam-2"]["failed"] == 1
    backwards = client.get("/v1/lines/L4/stats?since=2026-01-02T00:00:00Z"
                           "&until=2026-01-01T00:00:00Z", headers=AUTH)
    assert backwards.status_code == 400 and backwards.json["error"]["code"] == "invalid_range"


def test_feedback_round_trips_into_the_job_and_the_index(app: Flask, client: FlaskClient
                                                         ) -> None:
    job_id = ended_job(app, client, "L5", "REVIEW")
    index_all(app)
    url = f"/v1/jobs/{job_id}/feedback"
    confirm = client.post(url, json={"verdict": "confirm", "by": "ana"}, headers=AUTH)
    assert confirm.status_code == 201, confirm.json
    correct = client.post(url, headers=AUTH, json={
        "verdict": "correct", "decision": "REJECT", "by": "ben", "note": "scratch at edge",
        "defects": [{"class": "scratch", "bbox": [1, 2, 10, 12]}]})
    assert correct.status_code == 201, correct.json
    shown = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json["feedback"]
    assert [entry["by"] for entry in shown["history"]] == ["ana", "ben"]
    assert shown["latest"]["verdict"] == "correct" and shown["latest"]["decision"] == "REJECT"
    assert shown["latest"]["defects"] == [{"class": "scratch", "bbox": [1, 2, 10, 12]}]
    [listed] = client.get("/v1/jobs?feedback=correct", headers=AUTH).json["jobs"]
    assert listed["id"] == job_id and listed["feedback"]["decision"] == "REJECT"
    assert client.get("/v1/jobs?feedback=none&line=L5", headers=AUTH).json["jobs"] == []
    # The durable copy: S3 alone gives the same history (Redis lost).
    svc = services_of(app)
    svc.redis.flushdb()
    assert [entry.by for entry in svc.jobs.get(job_id).feedback] == ["ana", "ben"]


def test_feedback_refusals_are_clear(app: Flask, client: FlaskClient) -> None:
    done = ended_job(app, client, "L6", "PASS")
    failed = ended_job(app, client, "L6", None)
    queued = submit(client, image_bytes(), line="L6").json["id"]
    cases = [
        (done, {"verdict": "confirm", "decision": "REJECT"}, 400),  # confirm carries nothing
        (done, {"verdict": "correct"}, 400),  # correct to what?
        (done, {"verdict": "correct", "defects": [{"class": "x", "bbox": [5, 5, 1, 1]}]}, 400),
        (done, {"verdict": "maybe"}, 400),
        (queued, {"verdict": "confirm"}, 409),
        (failed, {"verdict": "confirm"}, 409),
        ("j_AAAAAAAAAAAAAAAAAAAAAA", {"verdict": "confirm"}, 404),
    ]
    for job_id, body, status in cases:
        response = client.post(f"/v1/jobs/{job_id}/feedback", json=body, headers=AUTH)
        assert response.status_code == status, (body, response.json)
        assert response.json["error"]["code"]
    theirs = client.post(f"/v1/jobs/{done}/feedback", json={"verdict": "confirm"},
                         headers=other_tenant(app))
    assert theirs.status_code == 404


NUL = "NUL"  # the message names the character
OUT_OF_RANGE = "1970 to 9998"  # the message names the years the index holds


@pytest.mark.parametrize(("url", "named"), [
    ("/v1/jobs?batch_id=b%00", NUL),  # the query CI's fuzzing found reaching PostgreSQL
    ("/v1/jobs?line=L1&cursor=%00", NUL),
    ("/v1/exports?batch_id=%00x", NUL),
    ("/v1/jobs?x%00=1", NUL),
    ("/v1/batches/b_%00", NUL),
    ("/v1/lines/L%00/stats", NUL),
    ("/v1/jobs/j_%00", NUL),
    ("/v1/alerts/al_%00", NUL),
    # what CI's fuzzing found next: year 1 minus a look-back window overflowed into a 500
    ("/v1/exports?since=0001-01-01T00:00:00-01:00&until=0001-01-01T03:01:01Z", OUT_OF_RANGE),
    ("/v1/jobs?since=0001-01-01T00:00:00%2B01:00", OUT_OF_RANGE),  # year 0 in UTC
    ("/v1/jobs?until=9999-12-31T23:59:59-01:00", OUT_OF_RANGE),  # year 10000 in UTC
    ("/v1/lines?since=1969-12-31T23:59:59Z", OUT_OF_RANGE),
    ("/v1/lines/L1/stats?until=0001-01-02T00:00:00Z", OUT_OF_RANGE),
])
def test_a_url_the_api_cannot_serve_is_a_clear_400_naming_why(
        client: FlaskClient, url: str, named: str) -> None:
    response = client.get(url, headers=AUTH)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["error"]["code"] == "invalid_request"
    assert named in response.json["error"]["message"]


def test_times_in_any_zone_within_the_range_are_read_as_utc(
        app: Flask, client: FlaskClient) -> None:
    job_id = ended_job(app, client, "LZ", "PASS")
    index_all(app)
    created = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json["created_at"]
    moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
    before = (moment - timedelta(minutes=1)).astimezone(timezone(timedelta(hours=-5)))
    after = (moment + timedelta(minutes=1)).astimezone(timezone(timedelta(hours=9)))
    query = {"line": "LZ", "since": before.isoformat(), "until": after.isoformat()}
    listed = client.get("/v1/jobs", query_string=query, headers=AUTH)
    assert [j["id"] for j in listed.json["jobs"]] == [job_id]
    later = {"line": "LZ", "since": after.isoformat()}
    assert client.get("/v1/jobs", query_string=later, headers=AUTH).json["jobs"] == []


@pytest.mark.parametrize("body", [
    {"verdict": "confirm", "note": "scratch\x00"},
    {"verdict": "confirm", "by": "\x00"},
    {"verdict": "correct", "defects": [{"class": "s\x00", "bbox": [0, 0, 1, 1]}]},
])
def test_feedback_text_with_a_nul_is_refused_and_nothing_is_stored(
    app: Flask, client: FlaskClient, body: dict) -> None:
    job_id = ended_job(app, client, "L9", "REVIEW")
    response = client.post(f"/v1/jobs/{job_id}/feedback", json=body, headers=AUTH)
    assert response.status_code == 400, response.json
    assert "NUL" in json.dumps(response.json)
    assert client.get(f"/v1/jobs/{job_id}", headers=AUTH).json.get("feedback") is None


def test_a_batch_shows_its_jobs_and_counts(app: Flask, client: FlaskClient) -> None:
    images = [image_bytes("PNG", (30 + i, 10)) for i in range(3)]
    response = client.post(
        "/v1/batches", headers=AUTH, content_type="multipart/form-data",
        data={"images": [(io.BytesIO(d), f"{i}.png") for i, d in enumerate(images)],
              "line": "L7"})
    assert response.status_code == 202
    batch_id, ids = response.json["batch_id"], [job["id"] for job in response.json["jobs"]]
    services_of(app).jobs.finish(ids[0], result=InspectionResult.model_validate(RESULT))
    shown = client.get(f"/v1/batches/{batch_id}", headers=AUTH)
    assert shown.status_code == 200, shown.json
    assert [job["id"] for job in shown.json["jobs"]] == ids
    assert shown.json["counts"]["status"]["done"] == 1
    assert shown.json["counts"]["status"]["queued"] == 2
    assert shown.json["counts"]["decision"]["REJECT"] == 1
    assert client.get(f"/v1/batches/{batch_id}",
                      headers=other_tenant(app)).status_code == 404
    unknown = client.get("/v1/batches/b_AAAAAAAAAAAAAAAAAAAAAA", headers=AUTH)
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "batch_not_found"


def test_an_unreachable_index_is_a_503_and_feedback_still_lands(
    app: Flask, make_app, client: FlaskClient
) -> None:
    job_id = ended_job(app, client, "L8", "REVIEW")
    down = make_app(database_url=closed_port_url("postgresql+psycopg") + "/x").test_client()
    for path in ("/v1/jobs", "/v1/exports", "/v1/lines", "/v1/lines/L8/stats"):
        response = down.get(path, headers=AUTH)
        assert response.status_code == 503, path
        assert response.json["error"]["code"] == "index_unavailable"
        assert response.headers["Retry-After"]
    given = down.post(f"/v1/jobs/{job_id}/feedback", json={"verdict": "confirm"},
                      headers=AUTH)
    assert given.status_code == 201  # stored in S3; the indexer catches up
    assert down.post("/v1/jobs", data={"image": (io.BytesIO(image_bytes()), "a.png"),
                                       "line": "L8"}, headers=AUTH).status_code == 202
    index_all(app)  # the database is back (the healthy app's indexer)
    [listed] = client.get("/v1/jobs?line=L8", headers=AUTH).json["jobs"]
    assert listed["id"] == job_id and listed["feedback"]["verdict"] == "confirm"


def test_retention_removes_old_jobs_from_the_index_and_s3(make_app, database_url: str
                                                          ) -> None:
    """INSPECTQ_RETENTION_DAYS: the indexer's maintenance removes jobs older than that, their
    S3 objects first, then their rows; younger jobs stay whole."""
    app = make_app(retention_days=7)
    client = app.test_client()
    svc = services_of(app)
    old, young = ended_job(app, client, "R1", "REJECT"), ended_job(app, client, "R1", "PASS")
    svc.jobs.add_feedback(svc.jobs.get(old), FeedbackIn(verdict="confirm"))
    # Age one job by 10 days, as if it had been accepted then (record in S3 and Redis).
    record = svc.jobs.get(old)
    ten_days_ago = (datetime.now(UTC) - timedelta(days=10)).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
    aged = record.model_copy(update={"created_at": ten_days_ago})
    svc.store.put(keys_for(old).result, aged.to_json().encode(), "application/json")
    svc.redis.delete(f"inspectq:job:{old}")
    index_all(app)
    svc.index.upsert([aged])
    old_keys = svc.store.list_keys(keys_for(old).prefix)
    assert keys_for(old).image in old_keys and len(old_keys) >= 3  # image, result, feedback

    indexer = Indexer(svc)
    indexer.maintain()
    assert svc.store.list_keys(keys_for(old).prefix) == []
    assert svc.index.indexed([old, young]) == {young}
    assert keys_for(young).image in svc.store.list_keys(keys_for(young).prefix)
    assert indexer.stats.expired == 1
