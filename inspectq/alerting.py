"""Line health alerting, the parts the API, the workers and the commands share: a line's
alerting configuration (global defaults in Settings, per-line overrides stored in the results
index, see :mod:`inspectq.index.alerts`), quiet hours, the channels, and the alert *event*
that travels from the monitor (``workers.alert``) to the notify queue.

An alert record's id is derived from the tenant and the monitor's own alert id, so every
retry, redelivery or replay of the same event names the same record (idempotent writes and
de-duplicated notifications need no coordination).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inspectq.config import Settings
from inspectq.linehealth import MonitorConfig, RateKind, Transition, design

Channel = Literal["slack", "email", "webhook"]
CHANNELS: tuple[Channel, ...] = ("slack", "email", "webhook")
Event = Literal["opened", "resolved"]

_ALERT_ID = re.compile(r"^al_[0-9a-f]{24}$")
_CLOCK = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
#: The learning block (MonitorConfig.learn_block_images) for the default warm-up of 2000
#: images is 500; a shorter warm-up gets a quarter of itself, so that warm-up ends when it
#: says (learning is committed in whole blocks).
_DEFAULT_LEARN_BLOCK = MonitorConfig().learn_block_images
#: The longest in-control average run (images between false alarms) a CUSUM is designed for:
#: beyond ~1e10 the exact ARL computation loses precision and the design search never ends.
MAX_ARL0_IMAGES = 1e9


def check_budget(false_alarms_per_week: float, images_per_second: float) -> None:
    """ValueError when the budget asks for more than MAX_ARL0_IMAGES images between false
    alarms (a week of images over the CUSUM's share of the budget)."""
    config = MonitorConfig(false_alarms_per_week=false_alarms_per_week,
                           images_per_second=images_per_second)
    arl0 = config.images_per_week / (false_alarms_per_week * (1 - config.spike_share))
    if arl0 > MAX_ARL0_IMAGES:
        raise ValueError(
            f"false_alarms_per_week {false_alarms_per_week:g} at {images_per_second:g} images/s "
            f"means {arl0:.2g} images between false alarms; at most {MAX_ARL0_IMAGES:.0e} "
            "(raise the budget or lower the image rate)")


def alert_record_id(tenant: str, monitor_alert_id: str) -> str:
    """The alert record's id: stable for one alert of one tenant's stream."""
    digest = hashlib.sha256(f"{tenant}\0{monitor_alert_id}".encode()).hexdigest()
    return f"al_{digest[:24]}"


def is_alert_id(value: str) -> bool:
    return bool(_ALERT_ID.fullmatch(value))


class QuietHours(BaseModel):
    """A daily span in UTC (``22:00``-``06:00`` wraps midnight) during which alerts still
    open and are recorded, but notifications wait until it ends."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str = Field(pattern=_CLOCK, description="HH:MM, UTC.")
    end: str = Field(pattern=_CLOCK, description="HH:MM, UTC (exclusive).")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours start and end must differ")
        return self

    @staticmethod
    def _minutes(clock: str) -> int:
        hours, minutes = clock.split(":")
        return int(hours) * 60 + int(minutes)

    def until(self, now: float) -> float | None:
        """When the quiet hours around ``now`` end (Unix time), or None when ``now`` is not
        in them."""
        moment = datetime.fromtimestamp(now, UTC)
        minute = moment.hour * 60 + moment.minute
        start, end = self._minutes(self.start), self._minutes(self.end)
        quiet = start <= minute < end if start < end else (minute >= start or minute < end)
        if not quiet:
            return None
        ends = moment.replace(hour=end // 60, minute=end % 60, second=0, microsecond=0)
        if ends <= moment:
            ends += timedelta(days=1)
        return ends.timestamp()


class LineAlerting(BaseModel):
    """A line's overrides of the global alerting settings; a field left out (or null) takes
    the global default (``INSPECTQ_ALERT_*``)."""

    model_config = ConfigDict(extra="forbid")

    rates: list[RateKind] | None = Field(
        default=None, description="The rates watched: reject, review, failure.")
    per_camera: bool | None = Field(
        default=None, description="Watch every camera of the line as well as the line.")
    false_alarms_per_week: float | None = Field(
        default=None, ge=0.001, le=1000, allow_inf_nan=False,
        description="Sensitivity: false alerts one stream may raise per week.")
    images_per_second: float | None = Field(
        default=None, ge=0.001, le=1000, allow_inf_nan=False,
        description="The line's image rate (turns the weekly budget into images).")
    warmup_images: int | None = Field(
        default=None, ge=0, le=10_000_000,
        description="Images a new stream learns its baseline from.")
    recovery_images: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Images in control before resolving.")
    min_images: int | None = Field(
        default=None, ge=0, le=10_000_000, description="No alert before this many images.")
    prior_rates: dict[RateKind, float] | None = Field(
        default=None, description="The rates assumed while a stream learns its own, each in "
        "(0, 1), e.g. {\"reject\": 0.05}.")
    channels: list[Channel] | None = Field(
        default=None, description="Where this line's alerts go: a subset of the configured "
        "channels (slack, email, webhook); [] sends nothing.")
    quiet_hours: QuietHours | None = Field(
        default=None, description="UTC span during which notifications wait.")

    @field_validator("rates", "channels")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else list(dict.fromkeys(value))

    @field_validator("prior_rates")
    @classmethod
    def _rates_in_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for rate in (value or {}).values():
            if not 0 < rate < 1:
                raise ValueError("prior rates are in (0, 1)")
        return value

    def overrides(self) -> dict[str, Any]:
        """The fields this line sets, as JSON."""
        return self.model_dump(mode="json", exclude_none=True)


class EffectiveAlerting(BaseModel):
    """A line's alerting configuration after its overrides are applied to the defaults."""

    model_config = ConfigDict(frozen=True)

    rates: list[RateKind]
    per_camera: bool
    false_alarms_per_week: float
    images_per_second: float
    warmup_images: int
    recovery_images: int
    min_images: int
    prior_rates: dict[RateKind, float]
    channels: list[Channel]
    quiet_hours: QuietHours | None

    def monitor_config(self) -> MonitorConfig:
        """The monitor configuration of every stream of the line (ValueError when the
        budget cannot be designed for, see :func:`check_budget`)."""
        check_budget(self.false_alarms_per_week, self.images_per_second)
        warmup = self.warmup_images
        block = min(_DEFAULT_LEARN_BLOCK, max(1, warmup // 4)) if warmup else (
            _DEFAULT_LEARN_BLOCK)
        return MonitorConfig(
            rates=tuple(self.rates), per_camera=self.per_camera,
            false_alarms_per_week=self.false_alarms_per_week,
            images_per_second=self.images_per_second, warmup_images=warmup,
            prior_rates=dict(self.prior_rates), recovery_images=self.recovery_images,
            min_images=self.min_images, learn_block_images=block)


def configured_channels(settings: Settings) -> list[Channel]:
    """The channels this deployment can send on (each needs its destination set)."""
    channels: list[Channel] = []
    if settings.slack_webhook_url is not None and settings.slack_webhook_url.get_secret_value():
        channels.append("slack")
    if settings.smtp_host and settings.alert_email_recipients:
        channels.append("email")
    if settings.alert_webhook_url is not None and settings.alert_webhook_url.get_secret_value():
        channels.append("webhook")
    return channels


def effective(settings: Settings, line: LineAlerting | None = None) -> EffectiveAlerting:
    """``line``'s overrides over the settings' defaults. Channels no longer configured are
    left out (a line keeps its choice when one is configured again)."""
    line = line or LineAlerting()
    available = configured_channels(settings)
    priors: dict[RateKind, float] = {
        "reject": settings.alert_prior_reject_rate, "review": settings.alert_prior_review_rate,
        "failure": settings.alert_prior_failure_rate, **(line.prior_rates or {})}
    return EffectiveAlerting(
        rates=line.rates if line.rates is not None else list(settings.alert_rates),
        per_camera=(line.per_camera if line.per_camera is not None
                    else settings.alert_per_camera),
        false_alarms_per_week=line.false_alarms_per_week or settings.alert_false_alarms_per_week,
        images_per_second=line.images_per_second or settings.alert_images_per_second,
        warmup_images=(line.warmup_images if line.warmup_images is not None
                       else settings.alert_warmup_images),
        recovery_images=line.recovery_images or settings.alert_recovery_images,
        min_images=line.min_images if line.min_images is not None else settings.alert_min_images,
        prior_rates=priors,
        channels=[c for c in (line.channels if line.channels is not None else available)
                  if c in available],
        quiet_hours=line.quiet_hours)


def check_line(settings: Settings, line: LineAlerting) -> None:
    """ValueError unless ``line`` can be used as it is: every channel it names is configured
    here, and its monitors can be designed (the tests for each rate's prior are computed
    now, which also caches them for the workers' first images)."""
    available = configured_channels(settings)
    missing = [c for c in line.channels or [] if c not in available]
    if missing:
        raise ValueError(f"channel(s) {', '.join(missing)} not configured here; available: "
                         f"{', '.join(available) or 'none'}")
    config = effective(settings, line).monitor_config()
    for rate in config.rates:
        design(config, config.prior_rate(rate))


def describe(settings: Settings, line: str, config: LineAlerting) -> dict[str, Any]:
    """A line's alerting as GET /v1/lines/<line>/alerting and ``inspectq alerts config``
    show it: the overrides, the configuration in effect, the channels configured here."""
    return {"line": line, "config": config.overrides(),
            "effective": effective(settings, config).model_dump(mode="json"),
            "channels_available": configured_channels(settings)}


def transition_from(data: dict[str, Any]) -> Transition:
    """A Transition back from :meth:`Transition.to_dict`."""
    return Transition(**{**data, "job_ids": tuple(data.get("job_ids", ()))})


class AlertEvent(BaseModel):
    """An alert opened or resolved, as the monitor hands it to the notify queue (kept in
    Redis until the index has it and every channel is done; the messages carry only its
    id and event). ``opened`` is the opening Transition (a resolution carries it too, so
    either event alone makes the whole record); ``resolved`` the resolving one."""

    tenant: str
    id: str
    event: Event
    opened: dict[str, Any]
    resolved: dict[str, Any] | None = None
    channels: list[Channel] = Field(default_factory=list)

    @classmethod
    def of(cls, tenant: str, transition: Transition, opened: Transition,
           channels: list[Channel]) -> AlertEvent:
        return cls(tenant=tenant, id=alert_record_id(tenant, transition.alert_id),
                   event=transition.kind, opened=opened.to_dict(),
                   resolved=transition.to_dict() if transition.kind == "resolved" else None,
                   channels=channels)

    @property
    def transition(self) -> Transition:
        """The Transition this event announces."""
        return transition_from(self.resolved if self.event == "resolved" and self.resolved
                               else self.opened)
