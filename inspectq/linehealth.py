"""Statistical line health: is a production line's REJECT (or REVIEW, or failure) rate out of
control? One :class:`LineHealthMonitor` watches one *stream*: one rate of one line, or of one
(line, camera), fed one Bernoulli observation per image (``is_event``: this image was a
REJECT, a REVIEW, a failure). Pure Python and stdlib (the API process has no numpy); the math
here is the whole monitor, storage and notification are the caller's.

The two tests, both against a *baseline* rate ``p0`` the stream learns from its own history:

* **shift** (a sustained rise): a Bernoulli CUSUM of the log-likelihood ratio of
  ``p1 = shift_multiple * p0`` against ``p0``: ``S = max(0, S + ln(p1/p0))`` on an event,
  ``S = max(0, S + ln((1-p1)/(1-p0)))`` otherwise; it signals when ``S >= h``. The two
  increments are scaled to integers (``+up`` and ``-down`` units with ``up/down`` within 2 %
  of the exact ratio), which makes the CUSUM a finite Markov chain whose in-control average
  run length (ARL0, images to a false signal) is computed *exactly* (:func:`cusum_arl`);
  ``h`` is the smallest decision interval whose ARL0 meets the false-alarm budget. It is
  computed once per baseline value and cached (:func:`design`).
* **spike** (a burst): a p-chart over the last ``spike_window_images`` images, evaluated
  every ``spike_window_images / spike_buckets`` images (the window slides by buckets, so the
  per-image cost is O(1)). Its upper control limit is the exact binomial quantile
  (:func:`binomial_ucl`), not ``p0 + 3 sigma``: at p0 = 2 % and n = 200 the normal
  approximation puts the limit at 5.0 % (9.9 events), where the real tail P(X >= 10) is
  0.75 %, not the nominal 0.135 %; and the budget per check is far smaller than either.

**False-alarm budget.** The configuration states ``false_alarms_per_week`` for a stream that
sees ``images_per_second`` images (a week is ``604,800 * images_per_second`` images); the share
``spike_share`` of it goes to the spike test and the rest to the CUSUM:

* CUSUM: a false signal every ARL0 images on average, so ARL0 >= images_per_week /
  (budget * (1 - spike_share)).
* spike: images_per_week / stride checks a week, each allowed the tail probability
  alpha = budget * spike_share * stride / images_per_week (a union bound: overlapping windows
  are positively correlated, so the real rate is lower).

**Baseline.** A new stream (or one whose state was lost) learns for ``warmup_images`` images
during which the tests run against the configured prior rate (so a new line that starts out
broken still alerts); every warm-up image counts towards the estimate, since there is no
in-control baseline yet to judge by. After warm-up the baseline is the stream's own rate with
exponential forgetting (effective memory ``baseline_memory_images``). It learns only from
in-control data: images are committed in blocks of ``learn_block_images``, one block late, and
only while the CUSUM is below h/2 and no alert is open; the blocks of an alert that opens are
thrown away. A shift therefore stays an alert and is not learned into the baseline. For the
design the baseline is rounded to a 2 % grid (so designs are cached) and clamped to
[0.1 %, 50 %].

**Alert lifecycle.** The first test to trip opens one alert (a ``Transition`` "opened"); while
it is open nothing else opens, the CUSUM is capped at h (so the time to recover does not grow
with the time the alert was open), and the baseline is frozen. It resolves (a ``Transition``
"resolved") after ``recovery_images`` consecutive images with the CUSUM below h/2 and the last
spike window under its limit. Acknowledging marks it and does not resolve it; :meth:`relearn`
drops the baseline (a new product, a recalibrated camera) and resolves the alert.

**State** is a small JSON document (:class:`MonitorState`, :meth:`LineHealthMonitor.to_json`),
so it can live in Redis and survive restarts; a missing, garbled or foreign state starts
learning again and never raises (:meth:`LineHealthMonitor.from_json`). Workers that share a
stream must serialise its read-observe-write (a per-stream lock, WATCH/MULTI or a script):
the monitor itself holds no lock.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

RateKind = Literal["reject", "review", "failure"]
TestName = Literal["spike", "shift"]

SECONDS_PER_WEEK = 7 * 24 * 3600
#: Most offending job ids an alert carries.
MAX_JOB_IDS = 5
#: Designs exist for baselines in this range; outside it the baseline is clamped (a stream
#: rarer than 0.1 % needs more images than a week to say anything, one above 50 % is broken).
MIN_RATE, MAX_RATE = 0.001, 0.5
#: Relative step of the grid the baseline is rounded to before designing the tests.
GRID_STEP = 0.02
#: The scaled CUSUM increments are within this relative error of the exact LLR ratio.
RATIO_TOLERANCE = 0.02
STATE_VERSION = 1


class MonitorConfig(BaseModel):
    """Global defaults of the line-health monitor (one config for every stream; a stream with
    another image rate gets ``config.model_copy(update={"images_per_second": ...})``)."""

    model_config = ConfigDict(frozen=True)

    rates: tuple[RateKind, ...] = Field(
        default=("reject", "review", "failure"), description="Which rates are monitored.")
    per_camera: bool = Field(
        default=False, description="One stream per (line, camera) as well as per line.")
    false_alarms_per_week: float = Field(
        default=0.5, gt=0, description="Sensitivity: false alerts a stream may raise per week.")
    images_per_second: float = Field(
        default=1.0, gt=0, description="Image rate of one stream, which turns the weekly "
        "budget into images.")
    spike_share: float = Field(
        default=0.2, gt=0, lt=1, description="Share of the budget spent on the spike test.")
    shift_multiple: float = Field(
        default=3.0, gt=1, description="The CUSUM is tuned to detect p0 -> multiple * p0.")
    spike_window_images: int = Field(default=200, ge=20)
    spike_buckets: int = Field(default=10, ge=1)
    warmup_images: int = Field(default=2000, ge=0)
    prior_rates: dict[RateKind, float] = Field(
        default_factory=lambda: {"reject": 0.02, "review": 0.05, "failure": 0.005},
        description="The rate assumed while a stream learns its own.")
    baseline_memory_images: int = Field(default=100_000, ge=1000)
    learn_block_images: int = Field(default=500, ge=1)
    recovery_images: int = Field(default=1000, ge=1)
    min_images: int = Field(default=100, ge=0, description="No alert before this many images.")

    @model_validator(mode="after")
    def _check(self) -> MonitorConfig:
        if self.spike_window_images % self.spike_buckets:
            raise ValueError("spike_window_images must be a multiple of spike_buckets")
        for rate in self.prior_rates.values():
            if not 0 < rate < 1:
                raise ValueError("prior rates are in (0, 1)")
        return self

    @property
    def images_per_week(self) -> float:
        return SECONDS_PER_WEEK * self.images_per_second

    def prior_rate(self, rate: RateKind) -> float:
        return self.prior_rates.get(rate, 0.02)


@dataclass(frozen=True)
class StreamKey:
    """One monitored rate of one line, or of one (line, camera) when ``camera`` is set."""

    line: str
    rate: RateKind
    camera: str | None = None

    @property
    def name(self) -> str:
        return f"{self.line}/{self.camera or '*'}/{self.rate}"


def stream_keys(config: MonitorConfig, line: str, camera: str | None) -> list[StreamKey]:
    """The streams one image of ``line`` (seen by ``camera``) feeds."""
    keys = [StreamKey(line, rate) for rate in config.rates]
    if config.per_camera and camera:
        keys += [StreamKey(line, rate, camera) for rate in config.rates]
    return keys


def events_for(decision: str | None, failed: bool) -> dict[RateKind, bool]:
    """The observation each rate gets from one finished job: a failed job (no decision) feeds
    only the failure rate; a decided one feeds all three (REJECT and REVIEW rates are per
    decided image)."""
    if failed or decision is None:
        return {"failure": True}
    return {"reject": decision == "REJECT", "review": decision == "REVIEW", "failure": False}


# --- the math -----------------------------------------------------------------------------


def binomial_upper_tail(n: int, p: float, count: int) -> float:
    """P(X >= count) for X ~ Binomial(n, p), summed term by term in log space (exact up to
    float rounding, also far in the tail where 1 - cdf would cancel)."""
    if count <= 0:
        return 1.0
    if count > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for x in range(count, n + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1)
                          + x * log_p + (n - x) * log_q)
    return min(total, 1.0)


def binomial_ucl(n: int, p: float, alpha: float) -> int:
    """The p-chart's upper control limit as a count: the smallest ``ucl`` with
    P(X > ucl) <= alpha for X ~ Binomial(n, p); a window with more than ``ucl`` events is out
    of control."""
    ucl = math.floor(n * p)
    while binomial_upper_tail(n, p, ucl + 1) > alpha:
        ucl += 1
    return ucl


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """A small dense linear system, Gaussian elimination with partial pivoting."""
    size = len(rhs)
    rows = [[*row, rhs[i]] for i, row in enumerate(matrix)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(col + 1, size):
            factor = rows[r][col] / rows[col][col]
            for c in range(col, size + 1):
                rows[r][c] -= factor * rows[col][c]
    x = [0.0] * size
    for i in range(size - 1, -1, -1):
        x[i] = (rows[i][size] - sum(rows[i][c] * x[c] for c in range(i + 1, size))) / rows[i][i]
    return x


def cusum_arl(p: float, up: int, down: int, h: int) -> float:
    """Average run length (images until ``S >= h``, starting at S = 0) of the integer CUSUM
    ``S = S + up`` with probability ``p``, else ``S = max(0, S - down)``.

    The expected run lengths L(s), s = 0..h-1, solve L(s) = 1 + p L(s+up) + (1-p)
    L(max(0, s-down)) with L(s) = 0 for s >= h. Written as L(s-down) = (L(s) - 1 - p L(s+up))
    / (1-p), the equations of the states s >= down give every L from the top ``down`` values
    downwards, as affine functions of them; the ``down`` equations of the bottom states then
    fix them (a ``down`` x ``down`` system). O(h * down), exact up to float rounding (checked
    against a dense solve to 1e-8 for baselines from 0.1 % to 30 %).
    """
    if h <= 0:
        return 0.0
    q = 1.0 - p
    k = min(down, h)
    width = k + 1  # index 0: the constant, 1..k: the coefficients of the top k unknowns
    zero = [0.0] * width
    values: list[list[float]] = [zero] * h
    for j in range(k):
        top = [0.0] * width
        top[j + 1] = 1.0
        values[h - 1 - j] = top
    for s in range(h - 1, k - 1, -1):
        here = values[s]
        above = values[s + up] if s + up < h else zero
        below = [(here[i] - p * above[i]) / q for i in range(width)]
        below[0] -= 1.0 / q
        values[s - k] = below
    matrix, rhs = [], []
    for s in range(k):
        here, bottom = values[s], values[0]
        above = values[s + up] if s + up < h else zero
        row = [here[i] - q * bottom[i] - p * above[i] for i in range(width)]
        matrix.append(row[1:])
        rhs.append(1.0 - row[0])
    unknowns = _solve(matrix, rhs)
    start = values[0]
    return start[0] + sum(start[i + 1] * unknowns[i] for i in range(k))


@dataclass(frozen=True)
class CusumDesign:
    """A Bernoulli CUSUM for p0 -> p1 in integer units of ``unit`` nats: ``+up`` per event,
    ``-down`` per other image, signal at ``h``. ``arl0``/``arl1``: average images to a signal
    from S = 0 at the rate p0 (a false alarm) and at p1 (a detection)."""

    p0: float
    p1: float
    up: int
    down: int
    unit: float
    h: int
    arl0: float
    arl1: float

    @property
    def h_nats(self) -> float:
        return self.h * self.unit


@dataclass(frozen=True)
class SpikeDesign:
    """A p-chart over ``window`` images checked every ``stride``: out of control above ``ucl``
    events; ``alpha`` is the budget per check and ``tail`` the real P(X > ucl) at p0."""

    p0: float
    window: int
    stride: int
    alpha: float
    ucl: int
    tail: float


@dataclass(frozen=True)
class Design:
    """Both tests of a stream, designed for one baseline."""

    baseline: float  # the baseline the tests were designed for (on the grid)
    cusum: CusumDesign
    spike: SpikeDesign


def design_cusum(p0: float, multiple: float, arl0: float) -> CusumDesign:
    """The CUSUM for p0 -> p1 = multiple * p0 (at most (1 + p0) / 2) whose in-control ARL is
    at least ``arl0`` images: the smallest such integer ``h``, found by exponential search and
    bisection on the exact ARL (monotone in h)."""
    p1 = min(multiple * p0, (1.0 + p0) / 2)
    step_up = math.log(p1 / p0)
    step_down = math.log((1.0 - p0) / (1.0 - p1))
    ratio = step_up / step_down
    down, up = 1, max(1, round(ratio))
    while abs(up / down - ratio) > RATIO_TOLERANCE * ratio:
        down += 1
        up = max(1, round(down * ratio))
    unit = step_down / down
    low, high = 0, max(up, 1)
    while cusum_arl(p0, up, down, high) < arl0:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if cusum_arl(p0, up, down, middle) >= arl0:
            high = middle
        else:
            low = middle
    return CusumDesign(p0=p0, p1=p1, up=up, down=down, unit=unit, h=high,
                       arl0=cusum_arl(p0, up, down, high), arl1=cusum_arl(p1, up, down, high))


def design_spike(p0: float, window: int, stride: int, alpha: float) -> SpikeDesign:
    ucl = binomial_ucl(window, p0, alpha)
    return SpikeDesign(p0=p0, window=window, stride=stride, alpha=alpha, ucl=ucl,
                       tail=binomial_upper_tail(window, p0, ucl + 1))


def grid_rate(rate: float) -> float:
    """``rate`` clamped to [MIN_RATE, MAX_RATE] and rounded to the nearest point of a
    geometric grid through 1 % with step GRID_STEP (so that designs can be cached; 2 % is
    on it to 5 digits)."""
    rate = min(max(rate, MIN_RATE), MAX_RATE)
    step = math.log1p(GRID_STEP)
    return float(f"{0.01 * math.exp(round(math.log(rate / 0.01) / step) * step):.6g}")


@lru_cache(maxsize=1024)
def _design(p0: float, multiple: float, arl0: float, window: int, stride: int,
            alpha: float) -> Design:
    return Design(baseline=p0, cusum=design_cusum(p0, multiple, arl0),
                  spike=design_spike(p0, window, stride, alpha))


def design(config: MonitorConfig, baseline: float) -> Design:
    """Both tests for a stream at ``baseline``, derived from the configured budget (see the
    module docstring); cached per grid point."""
    per_week = config.images_per_week
    stride = config.spike_window_images // config.spike_buckets
    return _design(grid_rate(baseline), config.shift_multiple,
                   per_week / (config.false_alarms_per_week * (1 - config.spike_share)),
                   config.spike_window_images, stride,
                   config.false_alarms_per_week * config.spike_share * stride / per_week)


# --- alerts and state ---------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """An alert opened or resolved.

    ``rate`` is the observed rate over the last ``window`` images (``events`` of them), and
    ``limit`` the rate above which that window is out of control: for the spike test the
    p-chart limit (ucl / window); for the shift test the rate over the CUSUM's current run
    (images since it was last at 0, the CUSUM's change-point estimate) that makes S reach h.
    A "resolved" transition reports the last spike window.
    """

    kind: Literal["opened", "resolved"]
    alert_id: str
    stream: str
    line: str
    camera: str | None
    rate_kind: RateKind
    test: TestName
    rate: float
    baseline: float
    limit: float
    window: int
    events: int
    job_ids: tuple[str, ...]
    at: float
    opened_at: float
    acknowledged: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["job_ids"] = list(self.job_ids)
        return data

    @property
    def text(self) -> str:
        where = f"line {self.line}" + (f" camera {self.camera}" if self.camera else "")
        if self.kind == "resolved":
            return (f"inspectq: {where} {self.rate_kind} rate back in control "
                    f"({self.rate:.1%} over {self.window} images, baseline {self.baseline:.1%})")
        what = "spike" if self.test == "spike" else "sustained rise"
        return (f"inspectq: {where} {self.rate_kind} rate {what}: {self.rate:.1%} over the last "
                f"{self.window} images (limit {self.limit:.1%}, baseline {self.baseline:.1%})")


class AlertState(BaseModel):
    """The open alert of a stream."""

    id: str
    test: TestName
    opened_at: float
    opened_image: int = Field(ge=0)
    rate: float
    baseline: float
    limit: float
    window: int = Field(ge=0)
    events: int = Field(ge=0)
    job_ids: list[str] = Field(default_factory=list)
    acknowledged: bool = False
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None


class MonitorState(BaseModel):
    """Everything a stream's monitor remembers, as plain JSON (a few hundred bytes)."""

    version: Literal[1] = STATE_VERSION
    stream: str
    images: int = Field(default=0, ge=0, description="Images observed since learning began.")
    learned_images: int = Field(default=0, ge=0, description="Images in the baseline, total.")
    base_images: float = Field(default=0.0, ge=0, description="Baseline estimator: images "
                               "and events after forgetting.")
    base_events: float = Field(default=0.0, ge=0)
    pending_images: int = Field(default=0, ge=0, description="Current learning block.")
    pending_events: int = Field(default=0, ge=0)
    held_images: int = Field(default=0, ge=0, description="Blocks awaiting confirmation.")
    held_events: int = Field(default=0, ge=0)
    cusum: float = Field(default=0.0, ge=0, description="The CUSUM, in nats.")
    run_images: int = Field(default=0, ge=0, description="Images since the CUSUM was 0.")
    run_events: int = Field(default=0, ge=0)
    bucket_images: int = Field(default=0, ge=0)
    bucket_events: int = Field(default=0, ge=0)
    buckets: list[int] = Field(default_factory=list, description="Events per finished bucket "
                               "of the spike window, oldest first.")
    window_ok: bool = True
    recent_events: list[tuple[int, str]] = Field(
        default_factory=list, description="(image number, job id) of the latest events.")
    recovery: int = Field(default=0, ge=0, description="Images in control while open.")
    alert: AlertState | None = None
    updated_at: float = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> MonitorState:
        if (self.base_events > self.base_images or self.pending_events > self.pending_images
                or self.held_events > self.held_images or self.run_events > self.run_images
                or self.bucket_events > self.bucket_images or min(self.buckets, default=0) < 0):
            raise ValueError("inconsistent monitor state")
        return self


class LineHealthMonitor:
    """The monitor of one stream. Build it from stored state with :meth:`from_json` (or
    :meth:`from_state`), call :meth:`observe` once per image, store :meth:`to_json` again.

    The per-image work is a handful of integer updates: the CUSUM in integer units, the
    spike window as bucket counts updated when a bucket fills, the learning block counts.
    """

    __slots__ = (
        "_alert", "_base_events", "_base_images", "_bucket_events", "_bucket_images",
        "_bucket_size", "_buckets", "_config", "_design", "_down", "_h", "_half",
        "_held_events", "_held_images", "_images", "_learned", "_pending_events",
        "_pending_images", "_prior", "_recent", "_recovery", "_run_events", "_run_images",
        "_s", "_stream", "_up", "_updated_at", "_window_events", "_window_ok",
    )

    def __init__(self, stream: StreamKey, config: MonitorConfig,
                 state: MonitorState | None = None) -> None:
        self._stream = stream
        self._config = config
        self._prior = config.prior_rate(stream.rate)
        self._bucket_size = config.spike_window_images // config.spike_buckets
        if state is None or state.stream != stream.name:
            state = MonitorState(stream=stream.name)
        self._images = state.images
        self._learned = state.learned_images
        self._base_images, self._base_events = state.base_images, state.base_events
        self._pending_images, self._pending_events = state.pending_images, state.pending_events
        self._held_images, self._held_events = state.held_images, state.held_events
        self._run_images, self._run_events = state.run_images, state.run_events
        self._bucket_images = min(state.bucket_images, self._bucket_size - 1)
        self._bucket_events = min(state.bucket_events, self._bucket_images)
        self._buckets: deque[int] = deque(state.buckets[-config.spike_buckets:],
                                          maxlen=config.spike_buckets)
        self._window_events = sum(self._buckets)
        self._window_ok = state.window_ok
        self._recent: deque[tuple[int, str]] = deque(
            (tuple(item) for item in state.recent_events[-MAX_JOB_IDS:]), maxlen=MAX_JOB_IDS)
        self._recovery = state.recovery
        self._alert = state.alert.model_copy(deep=True) if state.alert else None
        self._updated_at = state.updated_at
        self._s = 0
        self._set_design(design(config, self.baseline), cusum_nats=state.cusum)

    # --- persistence ----------------------------------------------------------------------

    @classmethod
    def from_state(cls, stream: StreamKey, config: MonitorConfig,
                   data: dict[str, Any] | None) -> LineHealthMonitor:
        """The monitor for stored state ``data`` (a dict from :meth:`to_dict`); a missing,
        invalid or other stream's state starts learning again."""
        try:
            state = MonitorState.model_validate(data) if data is not None else None
        except (ValidationError, ValueError, TypeError):
            state = None
        return cls(stream, config, state)

    @classmethod
    def from_json(cls, stream: StreamKey, config: MonitorConfig,
                  raw: str | bytes | None) -> LineHealthMonitor:
        """The monitor for a stored JSON document (as :meth:`to_json` wrote it); ``None`` or
        anything unreadable starts learning again, never raises."""
        try:
            data = json.loads(raw) if raw is not None else None
        except (ValueError, TypeError):
            data = None
        return cls.from_state(stream, config, data if isinstance(data, dict) else None)

    def state(self) -> MonitorState:
        return MonitorState(
            stream=self._stream.name, images=self._images, learned_images=self._learned,
            base_images=self._base_images, base_events=self._base_events,
            pending_images=self._pending_images, pending_events=self._pending_events,
            held_images=self._held_images, held_events=self._held_events,
            cusum=self._s * self._design.cusum.unit, run_images=self._run_images,
            run_events=self._run_events, bucket_images=self._bucket_images,
            bucket_events=self._bucket_events, buckets=list(self._buckets),
            window_ok=self._window_ok, recent_events=list(self._recent),
            recovery=self._recovery,
            alert=self._alert.model_copy(deep=True) if self._alert else None,
            updated_at=self._updated_at)

    def to_dict(self) -> dict[str, Any]:
        return self.state().model_dump(mode="json")

    def to_json(self) -> str:
        return self.state().model_dump_json()

    # --- what it knows --------------------------------------------------------------------

    @property
    def stream(self) -> StreamKey:
        return self._stream

    @property
    def learning(self) -> bool:
        """True during warm-up, while the tests run against the prior rate."""
        return self._learned < self._config.warmup_images

    @property
    def baseline(self) -> float:
        """The in-control rate the tests compare against: the prior during warm-up, then the
        learned estimate (one pseudo-event at the prior rate keeps a stream that has seen no
        event yet off zero)."""
        if self.learning:
            return self._prior
        weight = 1.0 / self._prior
        return (self._base_events + self._prior * weight) / (self._base_images + weight)

    @property
    def design(self) -> Design:
        return self._design

    @property
    def alert(self) -> AlertState | None:
        return self._alert.model_copy(deep=True) if self._alert else None

    @property
    def cusum(self) -> float:
        """The CUSUM statistic in nats (the decision interval is ``design.cusum.h_nats``)."""
        return self._s * self._design.cusum.unit

    def health(self) -> dict[str, Any]:
        """The stream as a control chart shows it: the baseline, the spike test's limit (a
        rate over its window of images) and the current window, the CUSUM against its
        decision interval, and whether an alert is open."""
        spike = self._design.spike
        window = len(self._buckets) * self._bucket_size
        return {
            "rate_kind": self._stream.rate, "camera": self._stream.camera,
            "images": self._images, "learning": self.learning,
            "warmup_images": self._config.warmup_images, "baseline": self.baseline,
            "limit": spike.ucl / spike.window, "window": spike.window,
            "window_images": window,
            "window_rate": self._window_events / window if window else None,
            "cusum": self.cusum, "cusum_limit": self._design.cusum.h_nats,
            "alert_open": self._alert is not None,
        }

    # --- the hot path ---------------------------------------------------------------------

    def observe(self, is_event: bool, job_id: str, now: float) -> Transition | None:
        """Count one image of this stream; the alert that opened or resolved with it, if any.

        O(1): a few integer updates per image; the spike window is evaluated when a bucket
        fills and the learning block is settled when it is full.
        """
        self._images += 1
        self._pending_images += 1
        self._bucket_images += 1
        if is_event:
            self._pending_events += 1
            self._bucket_events += 1
            self._recent.append((self._images, job_id))
            s = self._s + self._up
            self._run_images += 1
            self._run_events += 1
        else:
            s = self._s - self._down
            if s > 0:
                self._run_images += 1
            else:
                s = self._run_images = self._run_events = 0
        transition = None
        if self._alert is not None:
            if s > self._h:
                s = self._h
        elif s >= self._h and self._images >= self._config.min_images:
            self._s = s
            transition = self._open("shift", now)
        self._s = s
        if self._bucket_images == self._bucket_size:
            opened = self._close_bucket(now)
            transition = transition or opened
        if self._pending_images >= self._config.learn_block_images:
            self._settle_block()
        if self._alert is not None and transition is None:
            if self._s < self._half and self._window_ok:
                self._recovery += 1
                if self._recovery >= self._config.recovery_images:
                    transition = self._resolve(now, "recovered")
            else:
                self._recovery = 0
        self._updated_at = now
        return transition

    def _close_bucket(self, now: float) -> Transition | None:
        buckets = self._buckets
        if len(buckets) == buckets.maxlen:
            self._window_events -= buckets[0]
        buckets.append(self._bucket_events)
        self._window_events += self._bucket_events
        self._bucket_images = self._bucket_events = 0
        full = len(buckets) == buckets.maxlen
        self._window_ok = not full or self._window_events <= self._design.spike.ucl
        if (not self._window_ok and self._alert is None
                and self._images >= self._config.min_images):
            return self._open("spike", now)
        return None

    def _settle_block(self) -> None:
        """Learn from the block just finished: during warm-up, always; after it, commit the
        block held from before once this one ended in control (CUSUM below h/2, no alert),
        hold both while the CUSUM is elevated, drop both while an alert is open."""
        images, events = self._pending_images, self._pending_events
        self._pending_images = self._pending_events = 0
        if self.learning:
            self._commit(images, events)
        elif self._alert is not None:
            self._held_images = self._held_events = 0
        elif self._s >= self._half:
            self._held_images += images
            self._held_events += events
        else:
            self._commit(self._held_images, self._held_events)
            self._held_images, self._held_events = images, events

    def _commit(self, images: int, events: int) -> None:
        if images == 0:
            return
        self._learned += images
        self._base_images += images
        self._base_events += events
        memory = self._config.baseline_memory_images
        if self._base_images > memory:
            keep = memory / self._base_images
            self._base_images *= keep
            self._base_events *= keep
        new = design(self._config, self.baseline)
        if new is not self._design:
            self._set_design(new, cusum_nats=self._s * self._design.cusum.unit)

    def _set_design(self, new: Design, cusum_nats: float) -> None:
        """Switch to the tests for a new baseline, carrying the CUSUM over in nats."""
        self._design = new
        self._up, self._down, self._h = new.cusum.up, new.cusum.down, new.cusum.h
        self._half = self._h / 2
        self._s = min(max(0, round(cusum_nats / new.cusum.unit)), self._h)

    # --- the alert lifecycle --------------------------------------------------------------

    def _open(self, test: TestName, now: float) -> Transition:
        if test == "spike":
            window, events = self._config.spike_window_images, self._window_events
            limit = self._design.spike.ucl / window
        else:
            cusum = self._design.cusum
            window, events = self._run_images, self._run_events
            limit = (cusum.h + window * cusum.down) / ((cusum.up + cusum.down) * max(window, 1))
        first = self._images - window
        job_ids = [job_id for number, job_id in self._recent if number > first]
        rate = events / window if window else 0.0
        self._alert = AlertState(
            id=f"{self._stream.name}:{self._images}:{int(now)}", test=test, opened_at=now,
            opened_image=self._images, rate=rate, baseline=self.baseline, limit=limit,
            window=window, events=events, job_ids=job_ids)
        self._recovery = 0
        if not self.learning:
            # The blocks that led here are not in control: never learn them (during warm-up
            # every image counts, see the module docstring).
            self._pending_images = self._pending_events = 0
            self._held_images = self._held_events = 0
        return self._transition("opened", now)

    def _resolve(self, now: float, reason: str) -> Transition:
        transition = self._transition("resolved", now, reason)
        self._alert = None
        self._recovery = 0
        return transition

    def _transition(self, kind: Literal["opened", "resolved"], now: float,
                    reason: str = "") -> Transition:
        alert = self._alert
        assert alert is not None
        if kind == "opened":
            rate, limit, window, events = alert.rate, alert.limit, alert.window, alert.events
            job_ids = tuple(alert.job_ids)
        else:
            window = len(self._buckets) * self._bucket_size
            events = self._window_events
            rate = events / window if window else 0.0
            limit, job_ids = self._design.spike.ucl / self._config.spike_window_images, ()
        key = self._stream
        return Transition(
            kind=kind, alert_id=alert.id, stream=key.name, line=key.line, camera=key.camera,
            rate_kind=key.rate, test=alert.test, rate=rate, baseline=self.baseline,
            limit=limit, window=window, events=events, job_ids=job_ids, at=now,
            opened_at=alert.opened_at, acknowledged=alert.acknowledged, reason=reason)

    def acknowledge(self, now: float, by: str | None = None) -> bool:
        """Mark the open alert as seen by a person (it stays open until the rate recovers);
        False when no alert is open."""
        if self._alert is None:
            return False
        self._alert.acknowledged = True
        self._alert.acknowledged_at = now
        self._alert.acknowledged_by = by
        return True

    def relearn(self, now: float) -> Transition | None:
        """Forget the baseline and learn again from the prior (after a deliberate change of
        the process); resolves the open alert, if any, with reason "relearn"."""
        transition = self._resolve(now, "relearn") if self._alert is not None else None
        fresh = LineHealthMonitor(self._stream, self._config)
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))
        self._updated_at = now
        return transition
