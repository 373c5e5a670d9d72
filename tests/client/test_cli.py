"""``inspectq submit|wait|results|feedback`` against the real API: a file, a directory of 20
images through 4 threads with the progress bar and the summary, a re-run that submits
nothing twice, 429s waited out, a refused key, the wait, and where the server and key come
from (flag > environment > config file)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from devstack.ports import free_port, wait_until
from inspectq.backends import Backends
from inspectq.index import ResultsIndex
from inspectq.keyspace import QUEUE
from inspectq.result import Decision
from inspectq_cli.main import cli
from inspectq_client import Client
from tests.client.conftest import (
    API_KEY,
    REPO,
    Api,
    FakeWorker,
    finish,
    needs_feedback,
    needs_listing,
    png,
    write_pngs,
)

Invoke = Callable[..., Result]
JOB_LINE = re.compile(r"^(j_[\w-]{22})\t(\S+)\t(.+)$")


@pytest.fixture
def invoke(tmp_path: Path) -> Invoke:
    """Run ``inspectq ARGS`` in-process with only the environment given (no INSPECTQ_URL or
    INSPECTQ_API_KEY from outside, a config directory of the test's own)."""

    def run(*args: str, **env: str | None) -> Result:
        base = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "INSPECTQ_URL": None,
                "INSPECTQ_API_KEY": None}
        return CliRunner().invoke(cli, list(args), env={**base, **env},
                                  catch_exceptions=False)

    return run


def _jobs(stdout: str) -> dict[str, tuple[str, str]]:
    """{file: (job id, decision or status)} from submit's stdout lines."""
    found = {}
    for text in stdout.splitlines():
        match = JOB_LINE.match(text)
        assert match is not None, text
        found[match.group(3)] = (match.group(1), match.group(2))
    return found


def _line() -> str:
    return f"line-{uuid.uuid4().hex[:10]}"


def test_submit_one_file(invoke: Invoke, api: Api, tmp_path: Path) -> None:
    image = tmp_path / "part.png"
    image.write_bytes(png())
    ran = invoke("submit", str(image), "--line", "press-3", "--camera", "cam-1",
                 INSPECTQ_URL=api.url, INSPECTQ_API_KEY=API_KEY)
    assert ran.exit_code == 0, ran.output
    [(job_id, status)] = _jobs(ran.stdout).values()
    assert status == "queued"
    with Client(api.url, API_KEY) as client:
        job = client.get(job_id)
    assert (job.line, job.camera) == ("press-3", "cam-1")
    summary = ran.stderr.splitlines()[-2:]
    assert re.fullmatch(r"1 images in [\d.]+ s: 1 accepted \(0 already accepted before\), 0 not"
                        r" submitted", summary[0]), summary
    assert summary[1] == "queued: 1"


def test_submit_a_directory_waits_and_counts_the_decisions(
        invoke: Invoke, api: Api, fake_worker: FakeWorker, tmp_path: Path) -> None:
    paths = write_pngs(tmp_path / "images", 20)
    wanted = {path: [Decision.PASS, Decision.PASS, Decision.REVIEW, Decision.REJECT][i % 4]
              for i, path in enumerate(paths)}
    fake_worker.decisions = {hashlib.sha256(path.read_bytes()).hexdigest(): decision
                             for path, decision in wanted.items()}
    ran = invoke("submit", str(tmp_path / "images"), "--line", "press-3", "--concurrency", "4",
                 "--wait", "--timeout", "30", INSPECTQ_URL=api.url, INSPECTQ_API_KEY=API_KEY)
    assert ran.exit_code == 0, ran.output
    jobs = _jobs(ran.stdout)
    assert {Path(name): label for name, (_, label) in jobs.items()} == \
        {path: decision.value for path, decision in wanted.items()}  # notes.txt skipped
    errors = ran.stderr.splitlines()
    progress = errors[-3].split("\r")[-1]
    assert re.search(r"inspect: 100%.*\| 20/20 \[.*image/s, done=20, failed=0\]", progress), \
        progress
    assert errors[-1] == "PASS: 10  REVIEW: 5  REJECT: 5  failed: 0"


def test_a_rerun_submits_nothing_twice(invoke: Invoke, api: Api, tmp_path: Path,
                                       redis_client: redis.Redis) -> None:
    write_pngs(tmp_path / "images", 20)
    args = ("submit", str(tmp_path / "images"), "--line", "press-3", "--camera", "cam-9",
            "--concurrency", "4")
    env = {"INSPECTQ_URL": api.url, "INSPECTQ_API_KEY": API_KEY}
    first = invoke(*args, **env)
    assert first.exit_code == 0, first.output
    assert "20 accepted (0 already accepted before)" in first.stderr
    again = invoke(*args, **env)
    assert again.exit_code == 0, again.output
    assert "20 accepted (20 already accepted before), 0 not submitted" in again.stderr
    assert _jobs(again.stdout) == _jobs(first.stdout)
    assert redis_client.llen(QUEUE) == 20  # each image queued once


def test_an_image_the_api_refuses_is_reported_and_exits_1(invoke: Invoke, api: Api,
                                                          tmp_path: Path) -> None:
    write_pngs(tmp_path / "images", 2)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png at all")
    ran = invoke("submit", str(tmp_path / "images"), "--line", "press-3",
                 INSPECTQ_URL=api.url, INSPECTQ_API_KEY=API_KEY)
    assert ran.exit_code == 1
    assert len(_jobs(ran.stdout)) == 2
    assert re.search(r"broken\.png: 4\d\d \w+: ", ran.stderr), ran.stderr
    assert "3 images" in ran.stderr and "2 accepted" in ran.stderr
    assert "1 not submitted" in ran.stderr


def test_429s_are_waited_out(invoke: Invoke, rate_limited_api: Api, tmp_path: Path) -> None:
    """The API takes 5 requests a second: 20 images through 4 threads are all accepted,
    each 429 retried after its Retry-After."""
    write_pngs(tmp_path / "images", 20)
    log_start = rate_limited_api.log_path.stat().st_size
    ran = invoke("submit", str(tmp_path / "images"), "--line", "press-3", "--concurrency", "4",
                 INSPECTQ_URL=rate_limited_api.url, INSPECTQ_API_KEY=API_KEY)
    assert ran.exit_code == 0, ran.output
    assert len(_jobs(ran.stdout)) == 20
    assert "20 accepted" in ran.stderr and "0 not submitted" in ran.stderr

    def statuses() -> list[str]:
        with rate_limited_api.log_path.open() as log:
            log.seek(log_start)
            return re.findall(r'"POST /v1/jobs" (\d{3}) ', log.read())

    # gunicorn logs a request after answering it: the last lines may come a moment later
    wait_until(lambda: statuses().count("202") >= 20, 10, "the access log's 202 lines")
    assert statuses().count("202") == 20 and statuses().count("429") > 0, statuses()


def test_a_refused_key_exits_2_with_the_message(api: Api, tmp_path: Path) -> None:
    """The installed console script, as a user runs it."""
    image = tmp_path / "part.png"
    image.write_bytes(png())
    ran = subprocess.run(
        [str(Path(sys.executable).with_name("inspectq")), "submit", str(image), "--line",
         "press-3", "--url", api.url, "--api-key", "not-a-key"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "XDG_CONFIG_HOME": str(tmp_path)})
    assert ran.returncode == 2, ran.stderr
    assert "Error: 401 unauthorized: The API key is not valid." in ran.stderr
    assert "Traceback" not in ran.stderr and ran.stdout == ""


def test_wait_returns_when_the_job_ends(invoke: Invoke, api: Api, backends: Backends,
                                        results_index: ResultsIndex) -> None:
    with Client(api.url, API_KEY) as client:
        ending, stuck = (client.submit(png(), "press-3").id for _ in range(2))
    ender = threading.Timer(1.0, finish, (backends, results_index, ending, Decision.REVIEW))
    ender.start()
    ran = invoke("wait", ending, "--timeout", "20", INSPECTQ_URL=api.url,
                 INSPECTQ_API_KEY=API_KEY)
    ender.join()
    assert ran.exit_code == 0, ran.output
    assert ran.stdout == f"{ending}\tdone\tREVIEW\t0.5\n"

    ran = invoke("wait", ending, stuck, "--timeout", "1", "--json", INSPECTQ_URL=api.url,
                 INSPECTQ_API_KEY=API_KEY)
    assert ran.exit_code == 1  # one had not ended
    assert [(job["id"], job["status"]) for job in map(json.loads, ran.stdout.splitlines())] \
        == [(ending, "done"), (stuck, "queued")]


def test_server_and_key_come_from_the_flag_then_the_environment_then_the_file(
        invoke: Invoke, api: Api, backends: Backends, results_index: ResultsIndex,
        tmp_path: Path) -> None:
    with Client(api.url, API_KEY) as client:
        job_id = client.submit(png(), "press-3").id
    finish(backends, results_index, job_id)
    nowhere = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "config" / "inspectq" / "client.toml"
    config.parent.mkdir(parents=True)

    def wait(*flags: str, **env: str) -> Result:
        return invoke("wait", job_id, "--timeout", "5", *flags, **env)

    config.write_text(f'url = "{api.url}"\napi_key = "{API_KEY}"\n')
    assert wait().exit_code == 0  # the file alone
    refused = wait(INSPECTQ_API_KEY="not-a-key")  # the environment over the file
    assert refused.exit_code == 2
    assert "401 unauthorized: The API key is not valid." in refused.stderr
    assert wait("--api-key", API_KEY, INSPECTQ_API_KEY="not-a-key").exit_code == 0  # flag

    config.write_text(f'url = "{nowhere}"\napi_key = "not-a-key"\n')
    assert wait(INSPECTQ_URL=api.url, INSPECTQ_API_KEY=API_KEY).exit_code == 0
    assert wait("--url", api.url, "--api-key", API_KEY, INSPECTQ_URL=nowhere,
                INSPECTQ_API_KEY="not-a-key").exit_code == 0

    config.unlink()
    missing = wait("--url", api.url)
    assert missing.exit_code == 2 and "no API key" in missing.stderr
    config.write_text("url = \n")
    broken = wait()
    assert broken.exit_code == 1 and f"cannot read {config}" in broken.stderr


def test_feedback_needs_a_verdict_and_a_box_per_class(invoke: Invoke) -> None:
    ran = invoke("feedback", f"j_{'A' * 22}", "--api-key", API_KEY)
    assert ran.exit_code == 2 and "say --confirm or --correct" in ran.stderr
    ran = invoke("feedback", f"j_{'A' * 22}", "--correct", "--class", "scratch",
                 "--api-key", API_KEY)
    assert ran.exit_code == 2 and "one --bbox for each --class" in ran.stderr
    ran = invoke("feedback", f"j_{'A' * 22}", "--correct", "--class", "scratch",
                 "--bbox", "1,2,3", "--api-key", API_KEY)
    assert ran.exit_code == 2 and "not four integers" in ran.stderr


def test_the_client_commands_leave_the_other_commands_importable_without_the_sdk() -> None:
    """The service image has no inspectq_client or tqdm: `inspectq reconcile` must still
    import."""
    code = ("import sys, inspectq_cli.main; print(sorted({'inspectq_client', 'tqdm'}"
            " & set(sys.modules)))")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True)
    assert ran.stdout.strip() == "[]"


def _finished_jobs(api: Api, backends: Backends, index: ResultsIndex, line: str,
                   decisions: list[Decision]) -> list[str]:
    ids = []
    with Client(api.url, API_KEY) as client:
        for decision in decisions:
            ids.append(client.submit(png(), line, camera="cam-1").id)
            finish(backends, index, ids[-1], decision)
    return ids


@needs_listing
def test_results_as_a_table_csv_and_json_lines(invoke: Invoke, api: Api, backends: Backends,
                                               results_index: ResultsIndex) -> None:
    line = _line()
    ids = _finished_jobs(api, backends, results_index, line,
                         [Decision.PASS, Decision.REJECT, Decision.REVIEW])
    env: dict[str, Any] = {"INSPECTQ_URL": api.url, "INSPECTQ_API_KEY": API_KEY}

    table = invoke("results", "--line", line, "--since", "1h", **env)
    assert table.exit_code == 0, table.output
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["CREATED", "ID", "CAMERA", "STATUS", "DECISION", "SCORE",
                              "FEEDBACK", "DEFECTS"]
    assert sorted(row.split()[1] for row in rows) == sorted(ids)
    assert any(row.split()[4:] == ["REJECT", "0.910", "scratch:1"] for row in rows), rows

    as_csv = invoke("results", "--line", line, "--format", "csv", "--decision", "reject", **env)
    assert as_csv.exit_code == 0, as_csv.output
    [row] = csv.DictReader(io.StringIO(as_csv.stdout))
    assert (row["id"], row["decision"], row["camera"]) == (ids[1], "REJECT", "cam-1")
    assert json.loads(row["defects"]) == {"scratch": 1}

    as_jsonl = invoke("results", "--line", line, "--format", "jsonl", "--limit", "2",
                      "--until", "2999-01-01T00:00:00", **env)
    assert as_jsonl.exit_code == 0, as_jsonl.output
    assert [json.loads(text)["line"] for text in as_jsonl.stdout.splitlines()] == [line] * 2

    later = invoke("results", "--line", line, "--since", "2999-01-01", **env)
    assert later.stdout.splitlines()[1:] == []
    bad = invoke("results", "--line", line, "--since", "yesterday", **env)
    assert bad.exit_code == 2 and "neither ISO 8601 nor a time ago" in bad.stderr


@needs_feedback
@needs_listing
def test_feedback_confirms_and_corrects(invoke: Invoke, api: Api, backends: Backends,
                                        results_index: ResultsIndex) -> None:
    line = _line()
    confirmed, corrected = _finished_jobs(api, backends, results_index, line,
                                          [Decision.PASS, Decision.REVIEW])
    env = {"INSPECTQ_URL": api.url, "INSPECTQ_API_KEY": API_KEY}
    ran = invoke("feedback", confirmed, "--confirm", "--by", "anna", **env)
    assert (ran.exit_code, ran.stdout) == (0, f"{confirmed}\tconfirm\n"), ran.output
    ran = invoke("feedback", corrected, "--correct", "--decision", "reject", "--class", "crack",
                 "--bbox", "1,2,9,12", "--class", "pit", "--bbox", "3,3,5,5", "--note",
                 "two missed", "--by", "anna", **env)
    assert ran.exit_code == 0, ran.output
    with Client(api.url, API_KEY) as client:
        [summary] = client.results(line=line, feedback="correct")
    assert summary["id"] == corrected
    assert (summary["feedback"]["decision"], summary["feedback"]["by"]) == ("REJECT", "anna")
