"""Alert notifications (workers/notify.py) and request signing (inspectq/signing.py), against
real local servers: aiosmtpd as the mail server (plain, STARTTLS, implicit TLS, AUTH LOGIN and
PLAIN, with a self-signed certificate made here), and an ``http.server`` receiver standing in
for Slack's incoming webhook and for a customer's webhook endpoint."""

from __future__ import annotations

import email
import email.policy
import ipaddress
import json
import pickle
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack.ports import free_port
from inspectq.linehealth import Transition
from inspectq.signing import SIGNATURE_HEADER, sign, verify
from workers.notify import (
    AlertMessage,
    NotifyError,
    SmtpConfig,
    email_message,
    send_email,
    send_slack,
    send_webhook,
    slack_payload,
)

OPENED_AT = datetime(2026, 3, 2, 9, 18, 0, tzinfo=UTC).timestamp()
PUBLIC = "https://inspect.factory.example"
SECRET_PATH = "/services/T0001/B0002/s3cretWebhookToken"
PASSWORD = "correct-horse-battery"
WRONG_PASSWORD = "hunter2-not-it"


def transition(**changes: Any) -> Transition:
    opened = Transition(
        kind="opened", alert_id="L3/cam-2/reject:48211:1772443080", stream="L3/cam-2/reject",
        line="L3", camera="cam-2", rate_kind="reject", test="shift", rate=0.075,
        baseline=0.02, limit=0.055, window=200, events=15, job_ids=("j_first", "j_second"),
        at=OPENED_AT, opened_at=OPENED_AT)
    return replace(opened, **changes)


def resolved(**changes: Any) -> Transition:
    return transition(**{"kind": "resolved", "rate": 0.015, "events": 3, "job_ids": (),
                         "limit": 0.06, "at": OPENED_AT + 42 * 60, "reason": "recovered",
                         **changes})


def message(t: Transition | None = None) -> AlertMessage:
    t = t or transition()
    return AlertMessage(t, overlay_urls=[f"{PUBLIC}/v1/jobs/{job}/overlay" for job in t.job_ids],
                        dashboard_url=f"{PUBLIC}/lines/{t.line}")


# --- signing -------------------------------------------------------------------------------

BODY = b'{"type":"alert.opened"}'
NOW = 1_767_225_600.0


def test_the_documented_example_signature() -> None:
    """The value quoted in inspectq/signing.py's docstring (and the README)."""
    assert sign("s3cret", BODY, now=NOW) == (
        "t=1767225600,v1=8d6e9aba842a396b2df621d7ac84c436760983373c1620609320202da46d4b31")


def test_a_signature_verifies_only_with_its_secret_and_body() -> None:
    header = sign("s3cret", BODY, now=NOW)
    assert verify("s3cret", header, BODY, now=NOW)
    assert not verify("other", header, BODY, now=NOW)
    assert not verify("s3cret", header, BODY + b" ", now=NOW)
    assert not verify("s3cret", header.replace("t=1767225600", "t=1767225601"), BODY,
                      now=NOW)


@pytest.mark.parametrize(("age_s", "valid"), [
    (0, True), (300, True), (-300, True), (301, False), (-301, False), (86_400, False)])
def test_the_replay_window_holds_both_ways(age_s: float, valid: bool) -> None:
    """``age_s`` > 0: an old request; < 0: one from a sender whose clock runs ahead."""
    header = sign("s3cret", BODY, now=NOW)
    assert verify("s3cret", header, BODY, now=NOW + age_s) is valid
    assert verify("s3cret", header, BODY, now=NOW + age_s, tolerance_s=10) is (age_s == 0)


def test_rotation_and_unknown_schemes() -> None:
    good = sign("new", BODY, now=NOW).split(",")[1]
    stale = sign("old", BODY, now=NOW).split(",")[1]
    assert verify("new", f"t=1767225600,{stale},{good},v2=abc", BODY, now=NOW)
    assert not verify("new", f"t=1767225600,{stale},v2=abc", BODY, now=NOW)


@pytest.mark.parametrize("header", [
    None, "", "garbage", "t=1767225600", "v1={sig}", "t=abc,{sig}", "t=-1767225600,{sig}",
    "t=1767225600,t=1767225600,{sig}", "t=1767225600,{sig},junk",
    "t=1767225600,v1=xyz", "t=1767225600,v1={upper}", "t=1767225600,v1={sig}0",
    "t=1767225600,v1=é{sig}", "t=17672256000000000000,{sig}",
])
def test_malformed_headers_are_invalid_and_never_raise(header: str | None) -> None:
    sig = sign("s3cret", BODY, now=NOW).split(",")[1]
    if header is not None:
        header = header.format(sig=sig, upper=sig[3:].upper())
    assert not verify("s3cret", header, BODY, now=NOW)


# --- the message ---------------------------------------------------------------------------


def test_opened_wording() -> None:
    msg = message()
    assert msg.summary == (
        "Line L3 camera cam-2: REJECT rate 7.5% over the last 200 images (baseline 2.0%, "
        "limit 5.5%) -- sustained shift (CUSUM)")
    assert msg.subject == "REJECT rate alert on line L3 camera cam-2: 7.5% (baseline 2.0%)"
    assert ("Opened", "2026-03-02T09:18:00Z") in msg.fields()
    assert msg.overlay_links() == [("j_first", f"{PUBLIC}/v1/jobs/j_first/overlay"),
                                   ("j_second", f"{PUBLIC}/v1/jobs/j_second/overlay")]


def test_resolved_wording() -> None:
    msg = message(resolved())
    assert msg.summary == (
        "Line L3 camera cam-2: REJECT rate back in control as of 2026-03-02T10:00:00Z (1.5% "
        "over the last 200 images, baseline 2.0%); alert open for 42 min")
    assert msg.subject == "Resolved: REJECT rate alert on line L3 camera cam-2"
    relearned = message(resolved(reason="relearn", at=OPENED_AT + 3 * 86_400 + 5 * 3600))
    assert relearned.summary == (
        "Line L3 camera cam-2: REJECT rate alert closed at 2026-03-05T14:18:00Z to learn a new "
        "baseline; alert open for 3 d 5 h")


def test_a_whole_line_spike_of_a_rare_rate() -> None:
    msg = message(transition(camera=None, rate_kind="failure", test="spike", rate=0.035,
                             baseline=0.005, limit=0.025))
    assert msg.summary == (
        "Line L3: failure rate 3.5% over the last 200 images (baseline 0.50%, limit 2.5%) "
        "-- sudden spike (p-chart)")
    assert "Camera" not in dict(msg.fields())


def test_the_webhook_document() -> None:
    data = message().to_dict()
    assert data["type"] == "alert.opened"
    assert data["job_ids"] == ["j_first", "j_second"]
    assert data["overlay_urls"] == [f"{PUBLIC}/v1/jobs/j_first/overlay",
                                    f"{PUBLIC}/v1/jobs/j_second/overlay"]
    assert data["dashboard_url"] == f"{PUBLIC}/lines/L3"
    assert data["rate"] == 0.075 and data["alert_id"] == "L3/cam-2/reject:48211:1772443080"
    assert json.loads(json.dumps(data)) == data
    assert message(resolved()).to_dict()["type"] == "alert.resolved"


def test_notify_error_survives_pickling() -> None:
    error = NotifyError("slack", "hooks.slack.com answered HTTP 429", retry_after_s=3.0)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.channel, copy.reason, copy.retryable, copy.retry_after_s) == (
        "slack", "hooks.slack.com answered HTTP 429", True, 3.0)
    assert str(copy) == "slack: hooks.slack.com answered HTTP 429"


# --- Slack and webhooks over HTTP ----------------------------------------------------------


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every POST and answers with ``status``, ``body`` and ``headers``."""

    base_url: str
    posts: list[Post] = field(default_factory=list)
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.posts.append(Post(self.path, dict(self.headers.items()), body))
            self.send_response(state.status)
            for name, value in state.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def _assert_secret_free(error: NotifyError, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in str(error) and secret not in repr(error)
    # requests' own exception names the whole URL: it is neither chained nor shown as context.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_the_slack_payload_is_block_kit() -> None:
    payload = slack_payload(message())
    assert payload["text"] == message().summary
    blocks = payload["blocks"]
    assert [block["type"] for block in blocks] == [
        "header", "section", "section", "section", "context"]
    header, summary, facts, links, context = blocks
    assert header["text"]["type"] == "plain_text" and len(header["text"]["text"]) <= 150
    assert summary["text"] == {"type": "mrkdwn", "text": message().summary}
    assert 1 <= len(facts["fields"]) <= 10
    assert all(f["type"] == "mrkdwn" and len(f["text"]) <= 2000 for f in facts["fields"])
    assert {"type": "mrkdwn", "text": "*Rate*\nREJECT 7.5% (15 of 200)"} in facts["fields"]
    assert {"type": "mrkdwn", "text": "*Test*\nsustained shift (CUSUM)"} in facts["fields"]
    assert links["text"]["text"] == (
        f"*Offending images:* <{PUBLIC}/v1/jobs/j_first/overlay|j_first>, "
        f"<{PUBLIC}/v1/jobs/j_second/overlay|j_second>\n<{PUBLIC}/lines/L3|Line dashboard>")
    assert context["elements"][0]["type"] == "mrkdwn"
    assert "L3/cam-2/reject:48211:1772443080" in context["elements"][0]["text"]


def test_slack_text_from_clients_is_escaped() -> None:
    """A line named ``<!channel>`` must not page the whole channel."""
    payload = slack_payload(message(transition(line="<!channel> & co")))
    raw = json.dumps(payload)
    assert "&lt;!channel&gt; &amp; co" in payload["text"]
    assert "<!channel>" not in raw.replace(payload["blocks"][0]["text"]["text"], "")
    assert payload["blocks"][0]["text"]["text"].startswith("REJECT rate alert on line <!channel>")


def test_a_resolution_has_no_image_links() -> None:
    blocks = slack_payload(AlertMessage(resolved()))["blocks"]
    assert [block["type"] for block in blocks] == ["header", "section", "section", "context"]
    assert {"type": "mrkdwn", "text": "*Acknowledged*\nno"} in blocks[2]["fields"]


def test_send_slack_posts_the_payload(receiver: Receiver) -> None:
    payload = slack_payload(message())
    send_slack(receiver.base_url + SECRET_PATH, payload, timeout_s=5)
    [post] = receiver.posts
    assert post.path == SECRET_PATH
    assert post.headers["Content-Type"] == "application/json"
    assert json.loads(post.body) == payload


@pytest.mark.parametrize(("status", "body", "headers", "retryable", "retry_after_s"), [
    (500, b"rollup_error", {}, True, None),
    (404, b"no_service", {}, False, None),
    (410, b"channel_is_archived", {}, False, None),
    (429, b"rate_limited", {"Retry-After": "3"}, True, 3.0),
    (302, b"", {"Location": "http://127.0.0.1:9/elsewhere"}, False, None),
])
def test_send_slack_raises_on_a_failed_answer(
        receiver: Receiver, status: int, body: bytes, headers: dict[str, str], retryable: bool,
        retry_after_s: float | None) -> None:
    receiver.status, receiver.body, receiver.headers = status, body, headers
    with pytest.raises(NotifyError) as caught:
        send_slack(receiver.base_url + SECRET_PATH, slack_payload(message()), timeout_s=5)
    error = caught.value
    assert error.channel == "slack"
    assert f"127.0.0.1 answered HTTP {status}" in error.reason
    assert body.decode() in error.reason
    assert (error.retryable, error.retry_after_s) == (retryable, retry_after_s)
    assert len(receiver.posts) == 1  # a redirect is not followed
    _assert_secret_free(error, SECRET_PATH, "s3cretWebhookToken")


def test_send_slack_raises_when_nothing_listens() -> None:
    url = f"http://127.0.0.1:{free_port()}{SECRET_PATH}"
    with pytest.raises(NotifyError) as caught:
        send_slack(url, slack_payload(message()), timeout_s=2)
    assert caught.value.retryable and "ConnectionError" in caught.value.reason
    _assert_secret_free(caught.value, SECRET_PATH, "s3cretWebhookToken")


def test_send_slack_rejects_a_url_without_scheme() -> None:
    with pytest.raises(NotifyError) as caught:
        send_slack("hooks.slack.com" + SECRET_PATH, {"text": "x"}, timeout_s=2)
    assert not caught.value.retryable
    _assert_secret_free(caught.value, SECRET_PATH)


def test_the_webhook_is_signed(receiver: Receiver) -> None:
    msg = message()
    send_webhook(receiver.base_url + "/hooks/inspectq", msg, "whsec-1", timeout_s=5)
    [post] = receiver.posts
    assert post.headers["Content-Type"] == "application/json"
    assert json.loads(post.body) == msg.to_dict()
    header = post.headers[SIGNATURE_HEADER]
    assert verify("whsec-1", header, post.body)
    assert not verify("whsec-2", header, post.body)
    tampered = post.body.replace(b'"rate":0.075', b'"rate":0.001')
    assert tampered != post.body and not verify("whsec-1", header, tampered)
    sent_at = int(header.split(",")[0].removeprefix("t="))
    assert abs(sent_at - time.time()) < 60
    assert not verify("whsec-1", header, post.body, now=sent_at + 301)  # replayed later


def test_a_failed_webhook_names_the_status_not_the_answer(receiver: Receiver) -> None:
    receiver.status, receiver.body = 503, f"no route for {SECRET_PATH}".encode()
    with pytest.raises(NotifyError) as caught:
        send_webhook(receiver.base_url + SECRET_PATH, message(resolved()), "k", timeout_s=5)
    error = caught.value
    assert error.channel == "webhook" and error.retryable
    assert error.reason == "127.0.0.1 answered HTTP 503: Service Unavailable"
    _assert_secret_free(error, SECRET_PATH)
    assert json.loads(receiver.posts[0].body)["type"] == "alert.resolved"


# --- email over real SMTP ------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for localhost and 127.0.0.1 (its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inspectq test SMTP")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("smtp-tls")
    paths = Certificate(folder / "cert.pem", folder / "key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return paths


@dataclass(frozen=True)
class Received:
    message: EmailMessage
    rcpt_tos: list[str]
    tls: bool
    login: bytes | None


class Inbox:
    """An aiosmtpd handler that keeps what it accepts, how it came, and who logged in."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.mechanisms: list[str] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        tls = server.transport is not None and (
            server.transport.get_extra_info("ssl_object") is not None)
        login = session.auth_data.login if session.authenticated else None
        self.received.append(Received(parsed, list(envelope.rcpt_tos), tls, login))
        return "250 Message accepted for delivery"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                     mechanism: str, auth_data: Any) -> AuthResult:
        self.mechanisms.append(mechanism)
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == b"qa-alerts"
              and auth_data.password == PASSWORD.encode())
        # handled=False: aiosmtpd then answers a failure with 535 itself.
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def smtp_server(inbox: Inbox) -> Iterator[Callable[..., int]]:
    """Starts a real SMTP server with the given aiosmtpd options; its port."""
    controllers: list[Controller] = []

    def start(**options: Any) -> int:
        port = free_port()
        controller = Controller(inbox, hostname="127.0.0.1", port=port,
                                server_hostname="localhost", **options)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for controller in controllers:
        controller.stop()


RECIPIENTS = ["qa@factory.example", "line-lead@factory.example"]


def _email(t: Transition | None = None) -> EmailMessage:
    return email_message(message(t), "inspectq <alerts@factory.example>", RECIPIENTS)


def test_plain_smtp_delivers_both_parts(smtp_server: Callable[..., int], inbox: Inbox) -> None:
    port = smtp_server()
    evil = transition(line="L3<script>alert(1)</script>")
    assert send_email(_email(evil), SmtpConfig("127.0.0.1", port, security="none")) == []
    [got] = inbox.received
    assert sorted(got.rcpt_tos) == sorted(RECIPIENTS) and not got.tls and got.login is None
    msg = got.message
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Subject"] == ("[inspectq] REJECT rate alert on line L3<script>alert(1)</script> "
                              "camera cam-2: 7.5% (baseline 2.0%)")
    assert msg["Message-ID"].endswith("@factory.example>")
    text = msg.get_body(("plain",)).get_content()
    page = msg.get_body(("html",)).get_content()
    for number in ("7.5%", "2.0%", "5.5%", "200 images", "15 of 200"):
        assert number in text and number in page
    assert "Line L3<script>alert(1)</script> camera cam-2: REJECT rate 7.5%" in text
    assert f"{PUBLIC}/v1/jobs/j_first/overlay" in text
    assert "<script>" not in page
    assert "L3&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert f'<a href="{PUBLIC}/v1/jobs/j_second/overlay">j_second</a>' in page


def test_a_resolution_threads_under_its_opening() -> None:
    opening, closing = _email(), _email(resolved())
    assert closing["In-Reply-To"] == closing["References"] == opening["Message-ID"]
    assert closing["Message-ID"] != opening["Message-ID"]
    assert closing["Subject"] == "[inspectq] Resolved: REJECT rate alert on line L3 camera cam-2"
    assert "alert open for 42 min" in closing.get_body(("plain",)).get_content()


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
def test_starttls_with_login(smtp_server: Callable[..., int], inbox: Inbox,
                             certificate: Certificate, mechanism: str) -> None:
    port = smtp_server(
        tls_context=certificate.server_context(), require_starttls=True,
        authenticator=inbox.authenticate, auth_required=True,
        auth_exclude_mechanism=[m for m in ("LOGIN", "PLAIN") if m != mechanism])
    config = SmtpConfig("127.0.0.1", port, security="starttls", username="qa-alerts",
                        password=PASSWORD, ca_file=str(certificate.cert))
    send_email(_email(), config)
    [got] = inbox.received
    assert got.tls and got.login == b"qa-alerts"
    assert inbox.mechanisms == [mechanism]
    assert PASSWORD not in repr(config)


def test_a_wrong_password_fails_without_showing_it(
        smtp_server: Callable[..., int], inbox: Inbox, certificate: Certificate) -> None:
    port = smtp_server(tls_context=certificate.server_context(), require_starttls=True,
                       authenticator=inbox.authenticate, auth_required=True)
    config = SmtpConfig("127.0.0.1", port, security="starttls", username="qa-alerts",
                        password=WRONG_PASSWORD, ca_file=str(certificate.cert))
    with pytest.raises(NotifyError) as caught:
        send_email(_email(), config)
    error = caught.value
    assert error.channel == "email" and not error.retryable
    assert "535" in error.reason and "SMTPAuthenticationError" in error.reason
    for shown in (str(error), repr(error), str(error.__cause__), repr(config)):
        assert WRONG_PASSWORD not in shown
    assert inbox.received == []


def test_starttls_is_never_skipped(smtp_server: Callable[..., int], inbox: Inbox) -> None:
    """Asked for STARTTLS, a server that does not offer it gets nothing in clear."""
    port = smtp_server()
    with pytest.raises(NotifyError) as caught:
        send_email(_email(), SmtpConfig("127.0.0.1", port, security="starttls"))
    assert "STARTTLS" in caught.value.reason and not caught.value.retryable
    assert inbox.received == []


def test_a_server_that_requires_tls_refuses_plain(
        smtp_server: Callable[..., int], inbox: Inbox, certificate: Certificate) -> None:
    port = smtp_server(tls_context=certificate.server_context(), require_starttls=True)
    with pytest.raises(NotifyError) as caught:
        send_email(_email(), SmtpConfig("127.0.0.1", port, security="none"))
    assert "530" in caught.value.reason and not caught.value.retryable
    assert inbox.received == []


def test_implicit_tls_with_login(smtp_server: Callable[..., int], inbox: Inbox,
                                 certificate: Certificate) -> None:
    # aiosmtpd only counts STARTTLS as TLS for AUTH; this connection is TLS from the start.
    port = smtp_server(ssl_context=certificate.server_context(),
                       authenticator=inbox.authenticate, auth_require_tls=False)
    config = SmtpConfig("127.0.0.1", port, security="tls", username="qa-alerts",
                        password=PASSWORD, verify=False)
    send_email(_email(resolved()), config)
    [got] = inbox.received
    assert got.tls and got.login == b"qa-alerts"
    assert got.message["Subject"].startswith("[inspectq] Resolved:")


def test_an_untrusted_certificate_is_refused(smtp_server: Callable[..., int], inbox: Inbox,
                                             certificate: Certificate) -> None:
    port = smtp_server(ssl_context=certificate.server_context())
    with pytest.raises(NotifyError) as caught:
        send_email(_email(), SmtpConfig("127.0.0.1", port, security="tls"))
    assert "certificate" in caught.value.reason and not caught.value.retryable
    assert inbox.received == []


def test_no_smtp_server_is_a_retryable_failure() -> None:
    config = SmtpConfig("127.0.0.1", free_port(), security="none", timeout_s=2)
    with pytest.raises(NotifyError) as caught:
        send_email(_email(), config)
    assert caught.value.retryable and "ConnectionRefusedError" in caught.value.reason


def test_smtp_config_and_message_validation() -> None:
    with pytest.raises(ValueError, match="go together"):
        SmtpConfig("mail.example", 587, username="qa-alerts")
    with pytest.raises(ValueError, match="recipient"):
        email_message(message(), "alerts@factory.example", [])
