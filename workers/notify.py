"""Alert notifications: one :class:`AlertMessage` per line-health transition (an alert opened
or resolved, :class:`inspectq.linehealth.Transition`), rendered for Slack (Block Kit), for
email (plain text and HTML) and as a signed JSON webhook, and sent to one channel per call.

Nothing here retries, logs or touches Redis: every ``send_*`` either returns or raises
:class:`NotifyError`, whose ``retryable`` says whether trying again can help (a timeout, a
5xx, a 429, an SMTP 4xx) or cannot (a revoked webhook, a refused login, a bad certificate),
and whose ``retry_after_s`` carries the server's ``Retry-After``. The caller, a task on its
own queue, retries with backoff and records each delivery.

Secrets stay out of errors: the path of a webhook URL is its credential (a Slack incoming
webhook has no other), so an error names only the host, and the exception from ``requests``
(whose text holds the whole URL) is not chained; the SMTP password is never formatted.
"""

from __future__ import annotations

import hashlib
import html
import json
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Any, Literal
from urllib.parse import urlsplit

import requests

from inspectq.linehealth import Transition
from inspectq.signing import SIGNATURE_HEADER, sign

Channel = Literal["slack", "email", "webhook"]

_RATE_LABELS = {"reject": "REJECT", "review": "REVIEW", "failure": "failure"}
_TEST_LABELS = {"shift": "sustained shift (CUSUM)", "spike": "sudden spike (p-chart)"}
#: HTTP answers worth retrying: timeouts, rate limits and server errors.
_RETRYABLE_STATUS = frozenset({408, 425, 429})
#: Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks).
_SLACK_HEADER_MAX, _SLACK_TEXT_MAX = 150, 3000


class NotifyError(Exception):
    """Sending on ``channel`` failed for ``reason`` (short, free of secrets).

    The arguments are ``(channel, reason)`` and the rest is instance state, so the exception
    pickles and survives a trip through Celery's result backend."""

    def __init__(self, channel: Channel, reason: str, *, retryable: bool = True,
                 retry_after_s: float | None = None) -> None:
        super().__init__(channel, reason)
        self.channel = channel
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"{self.channel}: {self.reason}"


# --- the message ---------------------------------------------------------------------------


def _percent(rate: float) -> str:
    """1.5%, and two decimals below 1% (a 0.50% failure rate is not "0.5%" of something)."""
    return f"{rate:.2%}" if 0 < rate < 0.01 else f"{rate:.1%}"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(0, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


@dataclass(frozen=True)
class AlertMessage:
    """What people are told about one transition, independent of the channel.

    ``overlay_urls[i]`` is the public overlay of ``transition.job_ids[i]`` (the caller builds
    them as ``<public_url>/v1/jobs/<id>/overlay``); ``dashboard_url`` links the line's page."""

    transition: Transition
    overlay_urls: list[str] = field(default_factory=list)
    dashboard_url: str | None = None

    @property
    def type(self) -> Literal["alert.opened", "alert.resolved"]:
        return "alert.opened" if self.transition.kind == "opened" else "alert.resolved"

    @property
    def _where(self) -> str:
        """``L3 camera cam-2``, or ``L3`` for a whole line (after "line "/"Line ")."""
        t = self.transition
        return t.line + (f" camera {t.camera}" if t.camera else "")

    @property
    def _rate_label(self) -> str:
        return _RATE_LABELS[self.transition.rate_kind]

    @property
    def subject(self) -> str:
        """A one-line title: the Slack header and the email subject."""
        t = self.transition
        if t.kind == "opened":
            return (f"{self._rate_label} rate alert on line {self._where}: {_percent(t.rate)} "
                    f"(baseline {_percent(t.baseline)})")
        return f"Resolved: {self._rate_label} rate alert on line {self._where}"

    @property
    def summary(self) -> str:
        """The whole story in one sentence (Slack's fallback text, the email's first line)."""
        t = self.transition
        where = f"Line {self._where}"
        if t.kind == "opened":
            return (f"{where}: {self._rate_label} rate {_percent(t.rate)} over the last "
                    f"{t.window} images (baseline {_percent(t.baseline)}, limit "
                    f"{_percent(t.limit)}) -- {_TEST_LABELS[t.test]}")
        open_for = f"alert open for {_duration(t.at - t.opened_at)}"
        if t.reason == "relearn":
            return (f"{where}: {self._rate_label} rate alert closed at {_iso(t.at)} to learn a "
                    f"new baseline; {open_for}")
        return (f"{where}: {self._rate_label} rate back in control as of {_iso(t.at)} "
                f"({_percent(t.rate)} over the last {t.window} images, baseline "
                f"{_percent(t.baseline)}); {open_for}")

    def fields(self) -> list[tuple[str, str]]:
        """(label, value) pairs, at most 10 (Block Kit's limit for a section's fields)."""
        t = self.transition
        rows = [("Line", t.line)]
        if t.camera:
            rows.append(("Camera", t.camera))
        rows += [
            ("Rate", f"{self._rate_label} {_percent(t.rate)} ({t.events} of {t.window})"),
            ("Baseline", _percent(t.baseline)),
            ("Limit", _percent(t.limit)),
            ("Window", f"last {t.window} images"),
            ("Test" if t.kind == "opened" else "Opened by", _TEST_LABELS[t.test]),
            ("Opened", _iso(t.opened_at)),
        ]
        if t.kind == "resolved":
            rows += [("Resolved", _iso(t.at)), ("Acknowledged", "yes" if t.acknowledged else "no")]
        return rows

    @property
    def context(self) -> str:
        """Identifiers for whoever follows up (an acknowledgement names the alert id)."""
        return f"inspectq alert {self.transition.alert_id} | stream {self.transition.stream}"

    def overlay_links(self) -> list[tuple[str, str]]:
        """(label, url) of each overlay, labelled with its job id."""
        ids = self.transition.job_ids
        return [(ids[i] if i < len(ids) else f"image {i + 1}", url)
                for i, url in enumerate(self.overlay_urls)]

    def to_dict(self) -> dict[str, Any]:
        """The webhook's JSON: the transition's fields, the links and ``type``."""
        return {"type": self.type, **self.transition.to_dict(),
                "overlay_urls": list(self.overlay_urls), "dashboard_url": self.dashboard_url}

    def plain_text(self) -> str:
        """The text/plain part of the email: the summary, then the fields and links."""
        label_width = max(len(label) for label, _ in self.fields()) + 2
        lines = [self.summary, ""]
        lines += [f"{label + ':':<{label_width}}{value}" for label, value in self.fields()]
        if self.overlay_urls:
            lines += ["", "Offending images:"]
            links = self.overlay_links()
            width = max(len(label) for label, _ in links) + 2
            lines += [f"  {label:<{width}}{url}" for label, url in links]
        if self.dashboard_url:
            lines += ["", f"Dashboard: {self.dashboard_url}"]
        lines += ["", "-- ", self.context]  # the sign-off delimiter mail clients know
        return "\n".join(lines) + "\n"

    def html_body(self) -> str:
        """The HTML alternative; every value is escaped (line names come from clients)."""
        e = html.escape
        rows = "".join(f'<tr><th align="left">{e(label)}</th><td>{e(value)}</td></tr>'
                       for label, value in self.fields())
        parts = [f"<h2>{e(self.subject)}</h2>", f"<p>{e(self.summary)}</p>",
                 f'<table cellpadding="4">{rows}</table>']
        if self.overlay_urls:
            links = ", ".join(f'<a href="{e(url)}">{e(label)}</a>'
                              for label, url in self.overlay_links())
            parts.append(f"<p>Offending images: {links}</p>")
        if self.dashboard_url:
            parts.append(f'<p><a href="{e(self.dashboard_url)}">Line dashboard</a></p>')
        parts.append(f'<p style="color:#666">{e(self.context)}</p>')
        return "<!DOCTYPE html><html><body>" + "".join(parts) + "</body></html>\n"


# --- Slack ---------------------------------------------------------------------------------


def _mrkdwn(text: str) -> str:
    """Slack's escaping: only &, < and > are special (and ``<!channel>`` would page everyone)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slack_link(url: str, label: str) -> str:
    return f"<{_mrkdwn(url).replace('|', '%7C')}|{_mrkdwn(label)}>"


def slack_payload(message: AlertMessage) -> dict[str, Any]:
    """An incoming-webhook body: Block Kit blocks and ``text``, the fallback that
    notifications and clients without blocks show."""
    fields = [{"type": "mrkdwn", "text": f"*{label}*\n{_mrkdwn(value)}"}
              for label, value in message.fields()]
    blocks: list[dict[str, Any]] = [
        {"type": "header",
         "text": {"type": "plain_text", "text": _clip(message.subject, _SLACK_HEADER_MAX)}},
        {"type": "section",
         "text": {"type": "mrkdwn", "text": _clip(_mrkdwn(message.summary), _SLACK_TEXT_MAX)}},
        {"type": "section", "fields": fields},
    ]
    links = []
    if message.overlay_urls:
        links.append("*Offending images:* " + ", ".join(
            _slack_link(url, label) for label, url in message.overlay_links()))
    if message.dashboard_url:
        links.append(_slack_link(message.dashboard_url, "Line dashboard"))
    if links:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(links)}})
    blocks.append({"type": "context",
                   "elements": [{"type": "mrkdwn", "text": _mrkdwn(message.context)}]})
    return {"text": _clip(_mrkdwn(message.summary), _SLACK_TEXT_MAX), "blocks": blocks}


def _post(channel: Channel, url: str, body: bytes, headers: dict[str, str], timeout_s: float,
          *, body_in_reason: bool) -> None:
    """POST ``body``; NotifyError unless the answer is 2xx. Redirects are not followed (a
    signed request goes where it was configured to, or nowhere)."""
    host = urlsplit(url).hostname or "(no host)"
    try:
        response = requests.post(url, data=body, headers=headers, timeout=timeout_s,
                                 allow_redirects=False)
    except requests.RequestException as exc:
        # ValueError subclasses (MissingSchema, InvalidURL) mean a misconfigured URL.
        raise NotifyError(channel, f"request to {host} failed: {type(exc).__name__}",
                          retryable=not isinstance(exc, ValueError)) from None
    if 200 <= response.status_code < 300:
        return
    status = response.status_code
    detail = " ".join(response.text.split())[:100] if body_in_reason else response.reason
    retry_after = response.headers.get("Retry-After", "")
    raise NotifyError(
        channel, f"{host} answered HTTP {status}" + (f": {detail}" if detail else ""),
        retryable=status in _RETRYABLE_STATUS or status >= 500,
        retry_after_s=float(retry_after) if retry_after.isdigit() else None)


def send_slack(url: str, payload: dict[str, Any], timeout_s: float = 10.0) -> None:
    """Post ``payload`` to a Slack incoming webhook. Slack's error codes (``no_service``,
    ``channel_is_archived``, ``invalid_blocks``...) come back in the NotifyError's reason."""
    _post("slack", url, json.dumps(payload).encode(), {"Content-Type": "application/json"},
          timeout_s, body_in_reason=True)


# --- webhook -------------------------------------------------------------------------------


def send_webhook(url: str, message: AlertMessage, secret: str, timeout_s: float = 10.0) -> None:
    """POST ``message.to_dict()`` as JSON, signed with ``secret`` (see
    :mod:`inspectq.signing`). The receiver's answer body is not quoted in errors (it may
    echo the URL)."""
    body = json.dumps(message.to_dict(), separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}
    _post("webhook", url, body, headers, timeout_s, body_in_reason=False)


# --- email ---------------------------------------------------------------------------------


def _message_id(alert_id: str, kind: str, domain: str) -> str:
    """A Message-ID derived from the alert, so a retried send keeps its id (mail systems drop
    the duplicate) and the resolution can name the opening it answers."""
    return f"<{hashlib.sha256(alert_id.encode()).hexdigest()[:32]}.{kind}@{domain}>"


def email_message(message: AlertMessage, sender: str,
                  recipients: Sequence[str]) -> EmailMessage:
    """A multipart/alternative email: the plain text first, then the HTML. A resolution
    threads under its opening (In-Reply-To/References)."""
    if not recipients:
        raise ValueError("an alert email needs at least one recipient")
    t = message.transition
    domain = parseaddr(sender)[1].rpartition("@")[2] or "inspectq"
    msg = EmailMessage()
    msg["Subject"] = f"[inspectq] {message.subject}"
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(t.at, usegmt=True)
    msg["Message-ID"] = _message_id(t.alert_id, t.kind, domain)
    if t.kind == "resolved":
        msg["In-Reply-To"] = msg["References"] = _message_id(t.alert_id, "opened", domain)
    msg.set_content(message.plain_text())
    msg.add_alternative(message.html_body(), subtype="html")
    return msg


@dataclass(frozen=True)
class SmtpConfig:
    """How to reach the mail server. ``security``: ``"none"`` (plain SMTP, a local relay),
    ``"starttls"`` (upgrade, typically port 587; fails rather than sending in clear when the
    server does not offer it) or ``"tls"`` (implicit TLS, typically port 465). ``ca_file``
    trusts a private CA; ``verify=False`` skips certificate checks (test servers only)."""

    host: str
    port: int
    security: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0
    ca_file: str | None = None
    verify: bool = True

    def __post_init__(self) -> None:
        if (self.username is None) != (self.password is None):
            raise ValueError("SMTP username and password go together")

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def send_email(msg: EmailMessage, config: SmtpConfig) -> list[str]:
    """Send ``msg`` to its To recipients; the recipients the server refused while it took
    the others (empty when it took all). NotifyError when it took none or sending failed."""
    where = f"{config.host}:{config.port}"
    try:
        if config.security == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(config.host, config.port,
                                                   timeout=config.timeout_s,
                                                   context=config.tls_context())
        else:
            smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout_s)
        with smtp:
            if config.security == "starttls":
                smtp.starttls(context=config.tls_context())
            if config.username is not None and config.password is not None:
                smtp.login(config.username, config.password)
            refused = smtp.send_message(msg)
    except smtplib.SMTPRecipientsRefused as exc:
        raise NotifyError("email", f"{where} refused every recipient: "
                          f"{', '.join(exc.recipients)}", retryable=False) from exc
    except smtplib.SMTPResponseException as exc:
        reply = exc.smtp_error.decode(errors="replace") if isinstance(
            exc.smtp_error, bytes) else str(exc.smtp_error)
        raise NotifyError("email", f"{where} answered {exc.smtp_code} {reply} "
                          f"({type(exc).__name__})", retryable=exc.smtp_code < 500) from exc
    except ssl.SSLCertVerificationError as exc:
        raise NotifyError("email", f"{where}: {exc.verify_message}",
                          retryable=False) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise NotifyError("email", f"{where}: {exc}", retryable=False) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise NotifyError("email", f"{where}: {type(exc).__name__}: {exc}") from exc
    return sorted(refused)
