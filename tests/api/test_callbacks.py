"""Job callbacks end to end in one process: the API takes the callback_url, the real
indexer puts the delivery in the outbox (PostgreSQL), the real sender POSTs it, signed, to
a local HTTP receiver."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy.engine import make_url

from api.apikeys import add_key, new_signing_secret
from inspectq.index import IndexUnavailable
from inspectq.result import InspectionResult
from inspectq.signing import SIGNATURE_HEADER, verify
from tests.api.conftest import AUTH, image_bytes, services_of, submit
from tests.api.test_results import index_all
from tests.api.test_status import RESULT
from tests.conftest import empty_index, free_port, settings_env
from tests.receiver import Receiver
from tests.tcp_proxy import TcpProxy
from workers.callbacks import LEASE_S, CallbackSender


@pytest.fixture
def app(make_app, database_url: str) -> Flask:
    empty_index(database_url)
    return make_app(callback_allow_private=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def end_job(app: Flask, job_id: str) -> None:
    services_of(app).jobs.finish(job_id, result=InspectionResult.model_validate(RESULT))
    index_all(app)


def deliver_until(app: Flask, done: object, timeout_s: float = 20) -> CallbackSender:
    sender = CallbackSender(services_of(app))
    deadline = time.monotonic() + timeout_s
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not delivered in time"
        if sender.send_due() == 0:
            time.sleep(0.2)
    return sender


def test_a_job_callback_arrives_once_signed_with_the_job(app: Flask, receiver: Receiver
                                                         ) -> None:
    client = app.test_client()
    job_id = submit(client, image_bytes(), line="CB1", callback_url=receiver.url).json["id"]
    end_job(app, job_id)
    deliver_until(app, lambda: receiver.received)
    index_all(app)  # a job indexed again adds no second delivery
    CallbackSender(services_of(app)).send_due()
    [got] = receiver.received
    secret = services_of(app).settings.webhook_secret.get_secret_value()
    assert verify(secret, got.headers[SIGNATURE_HEADER], got.body)
    assert not verify("another-secret", got.headers[SIGNATURE_HEADER], got.body)
    assert json.loads(got.body) == client.get(f"/v1/jobs/{job_id}", headers=AUTH).json
    log = client.get(f"/v1/jobs/{job_id}/deliveries", headers=AUTH).json["deliveries"]
    assert [(d["url"], d["state"], d["attempts"]) for d in log] == [
        (receiver.url, "delivered", 1)]
    assert got.headers["X-Inspectq-Delivery"] == log[0]["id"]


def test_a_receiver_that_is_down_still_gets_it_once(app: Flask) -> None:
    receiver = Receiver(fail_next=[503])  # answers 503, then goes away, then comes back
    receiver.start()
    job_id = submit(app.test_client(), image_bytes(), line="CB2",
                    callback_url=receiver.url).json["id"]
    end_job(app, job_id)
    sender = CallbackSender(services_of(app))
    sender.send_due()  # 503
    receiver.stop()
    deliver_until(app, lambda: sender.outbox.of_job("default", job_id)[0]["attempts"] >= 2)
    receiver.start()  # back on the same port
    deliver_until(app, lambda: receiver.received)
    assert len(receiver.received) == 1
    [entry] = sender.outbox.of_job("default", job_id)
    assert entry["state"] == "delivered" and entry["attempts"] >= 3
    receiver.stop()


def test_a_database_blip_after_a_post_delays_the_retry_by_the_blip_not_the_lease(
        make_app, database_url: str) -> None:
    """The index goes away while a delivery is being POSTed (the receiver cuts it as the
    request arrives, then answers 503): the outcome waits in the sender, is written once the
    database is back, and the retry follows its backoff, not the claim's 120 s lease."""
    empty_index(database_url)
    proxy = TcpProxy(("127.0.0.1", make_url(database_url).port or 5432), free_port())
    proxy.restore()
    through = make_url(database_url).set(port=proxy.port).render_as_string(hide_password=False)
    app = make_app(callback_allow_private=True, database_url=through)
    receiver = Receiver(fail_next=[503], on_request=proxy.cut).start()
    try:
        job_id = submit(app.test_client(), image_bytes(), line="CB4",
                        callback_url=receiver.url).json["id"]
        end_job(app, job_id)
        sender = CallbackSender(services_of(app))
        assert sender.send_due() == 1  # claimed, POSTed (503), its outcome not written
        assert len(sender.unrecorded) == 1
        with pytest.raises(IndexUnavailable):
            sender.send_due()  # still down: nothing new is claimed
        proxy.restore()
        receiver.on_request = None
        deadline = time.monotonic() + LEASE_S / 4
        while not receiver.received:  # the same sender: it holds the unwritten outcome
            assert time.monotonic() < deadline, "waited for the lease"
            if sender.send_due() == 0:
                time.sleep(0.2)
        [entry] = sender.outbox.of_job("default", job_id)
        assert entry["state"] == "delivered" and entry["attempts"] == 2
        assert len(receiver.received) == 1 and not sender.unrecorded
    finally:
        receiver.stop()
        proxy.cut()


def test_subscriptions_follow_a_tenant_and_line_signed_with_its_secret(
    app: Flask, receiver: Receiver
) -> None:
    settings = services_of(app).settings
    keys_file = Path(settings.api_keys_file)
    key, _ = add_key(keys_file, "acme")
    secret = new_signing_secret(keys_file, "acme")
    acme = {"Authorization": f"Bearer {key}"}
    env = settings_env(settings)
    added = subprocess.run([str(Path(sys.executable).with_name("inspectq")), "callbacks",
                            "add", "--tenant", "acme", "--line", "CB3", receiver.url],
                           env=env, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    client = app.test_client()
    wanted = submit(client, image_bytes(), headers=acme, line="CB3").json["id"]
    other_line = submit(client, image_bytes(), headers=acme, line="CB4").json["id"]
    other_tenant = submit(client, image_bytes(), line="CB3").json["id"]
    for job_id in (wanted, other_line, other_tenant):
        end_job(app, job_id)
    deliver_until(app, lambda: receiver.received)
    CallbackSender(services_of(app)).send_due()
    [got] = receiver.received
    assert json.loads(got.body)["id"] == wanted
    assert verify(secret, got.headers[SIGNATURE_HEADER], got.body)
    assert not verify(settings.webhook_secret.get_secret_value(),
                      got.headers[SIGNATURE_HEADER], got.body)


def test_callback_urls_the_service_must_not_call_are_refused(make_app) -> None:
    client = make_app().test_client()  # the production default: private hosts refused
    for url in ("http://127.0.0.1:8080/x", "http://localhost/x", "https://10.1.2.3/x",
                "http://169.254.169.254/latest/meta-data", "ftp://example.com/x",
                "http://user:pw@example.com/x", "not a url"):
        response = submit(client, image_bytes(), callback_url=url)
        assert response.status_code == 400, url
        assert response.json["error"]["code"] == "invalid_callback_url", url


def test_the_readme_receiver_verifies_our_signature_and_refuses_replays() -> None:
    """The verification code README.md shows a receiver, run as written."""
    import re

    from inspectq.signing import sign

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    [code] = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S)
              if "def verified" in block]
    namespace: dict = {}
    exec(code, namespace)
    verified = namespace["verified"]
    body = b'{"id": "j_x", "status": "done"}'
    assert verified("s3cret", sign("s3cret", body), body)
    assert not verified("other", sign("s3cret", body), body)
    assert not verified("s3cret", sign("s3cret", body), body + b" ")
    assert not verified("s3cret", sign("s3cret", body, now=time.time() - 600), body)
    assert not verified("s3cret", "t=abc,v1=00", body)
