"""The results index through the real stack: jobs the worker ends are listed by the API
within seconds (the indexer), and a database outage delays the index without losing a job
or slowing inspection."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devstack import samples
from devstack.client import InspectqClient
from devstack.stack import StackConfig
from inspectq.signing import SIGNATURE_HEADER, verify
from tests.receiver import Receiver
from tests.tcp_proxy import TcpProxy


def listed(client: InspectqClient, line: str) -> tuple[int, list[str]]:
    """(status, ids) of GET /v1/jobs?line=<line>, following every page."""
    ids, cursor = [], None
    while True:
        params = {"line": line, "limit": "100", **({"cursor": cursor} if cursor else {})}
        response = client._send("GET", f"{client.base_url}/v1/jobs", params=params,
                                timeout=30)
        if response.status_code != 200:
            return response.status_code, ids
        ids += [job["id"] for job in response.json()["jobs"]]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return 200, ids


def wait_listed(client: InspectqClient, line: str, expected: set[str], timeout_s: float
                ) -> float:
    """Seconds until the listing of ``line`` holds exactly ``expected``."""
    started = time.monotonic()
    while True:
        status, ids = listed(client, line)
        if status == 200 and set(ids) == expected and len(ids) == len(expected):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout_s, (status, len(ids), len(expected))
        time.sleep(0.5)


@pytest.fixture
def restore_database(database_proxy: TcpProxy) -> Iterator[TcpProxy]:
    yield database_proxy
    database_proxy.restore()  # whatever the test did, the next one has its database


def test_ended_jobs_are_listed_and_exported(client: InspectqClient,
                                            down_receiver: DownReceiver) -> None:
    """(``down_receiver`` starts the callback receiver's minute of downtime now.)"""
    images = [s.png() for s in samples.samples()[:4]]
    ids = {client.submit(image, line="idx-1", camera="c1")["id"] for image in images}
    decisions = {client.wait_done(job_id)["result"]["decision"] for job_id in ids}
    assert wait_listed(client, "idx-1", ids, timeout_s=30) < 30
    export = client._send("GET", f"{client.base_url}/v1/exports",
                          params={"line": "idx-1", "format": "csv"}, timeout=30)
    assert export.status_code == 200
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert sorted(row["id"] for row in rows) == sorted(ids)
    [line] = [line for line in client._send("GET", f"{client.base_url}/v1/lines",
                                            timeout=30).json()["lines"]
              if line["name"] == "idx-1"]
    assert line["total"] == len(ids) and sum(line[d] for d in decisions) == len(ids)


def test_a_database_outage_delays_the_index_and_loses_nothing(
    client: InspectqClient, stack: StackConfig, restore_database: TcpProxy
) -> None:
    before = {client.submit(s.png(), line="idx-2")["id"] for s in samples.samples()[:2]}
    for job_id in before:
        client.wait_done(job_id)
    wait_listed(client, "idx-2", before, timeout_s=30)

    restore_database.cut()  # PostgreSQL unreachable: connections reset, new ones refused
    during = {client.submit(s.png(), line="idx-2")["id"] for s in samples.samples()[:6]}
    for job_id in during:  # inspection goes on: every job ends done
        assert client.wait_done(job_id, timeout_s=120)["status"] == "done"
    status, _ = listed(client, "idx-2")
    assert status == 503  # the listing says so, as JSON
    response = client._send("GET", f"{client.base_url}/v1/jobs", timeout=30)
    assert response.json()["error"]["code"] == "index_unavailable"

    restore_database.restore()  # back: the indexer catches up by itself
    caught_up_s = wait_listed(client, "idx-2", before | during, timeout_s=90)
    print(f"index caught up {caught_up_s:.1f} s after the database came back")


@dataclass
class DownReceiver:
    receiver: Receiver
    job_ids: list[str]
    down_since: float  # when the first delivery attempt was refused


@pytest.fixture(scope="module")
def down_receiver(client: InspectqClient) -> Iterator[DownReceiver]:
    """Jobs whose callback receiver is down, from the start of this module: its minute of
    downtime passes while the other tests run."""
    receiver = Receiver()  # not listening: down
    ids = [client.submit(s.png(), line="idx-3", callback_url=receiver.url)["id"]
           for s in samples.samples()[:2]]
    for job_id in ids:
        assert client.wait_done(job_id)["status"] == "done"
    deadline = time.monotonic() + 30
    while not all(attempted(client, job_id) for job_id in ids):  # tried, refused
        assert time.monotonic() < deadline
        time.sleep(0.5)
    yield DownReceiver(receiver, ids, time.monotonic())
    receiver.stop()


def test_a_callback_receiver_down_for_a_minute_still_gets_each_job_once(
    client: InspectqClient, stack: StackConfig, down_receiver: DownReceiver
) -> None:
    receiver, ids = down_receiver.receiver, down_receiver.job_ids
    time.sleep(max(0.0, 60 - (time.monotonic() - down_receiver.down_since)))
    receiver.start()  # back after a minute down
    deadline = time.monotonic() + 60
    while len(receiver.received) < len(ids):
        assert time.monotonic() < deadline, receiver.received
        time.sleep(0.5)
    time.sleep(3)  # anything extra would arrive now
    secret = stack.settings.webhook_secret.get_secret_value()
    assert sorted(json.loads(got.body)["id"] for got in receiver.received) == sorted(ids)
    assert all(verify(secret, got.headers[SIGNATURE_HEADER], got.body)
               for got in receiver.received)
    for job_id in ids:
        [entry] = deliveries(client, job_id)
        assert entry["state"] == "delivered" and entry["attempts"] >= 2


def deliveries(client: InspectqClient, job_id: str) -> list[dict]:
    return client._send("GET", f"{client.base_url}/v1/jobs/{job_id}/deliveries",
                        timeout=30).json()["deliveries"]


def attempted(client: InspectqClient, job_id: str) -> bool:
    log = deliveries(client, job_id)
    return bool(log) and log[0]["attempts"] >= 1
