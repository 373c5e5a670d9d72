"""The line-health monitor's math and lifecycle (inspectq/linehealth.py): pure, no Redis."""

from __future__ import annotations

import json
import math
import random
from fractions import Fraction

import pytest

from inspectq.linehealth import (
    LineHealthMonitor,
    MonitorConfig,
    StreamKey,
    Transition,
    binomial_ucl,
    binomial_upper_tail,
    cusum_arl,
    design,
    events_for,
    grid_rate,
    stream_keys,
)

CONFIG = MonitorConfig()
STREAM = StreamKey("line-7", "reject", camera="cam-2")


def feed(monitor: LineHealthMonitor, rate: float, images: int, rng: random.Random,
         start: int = 0) -> list[tuple[int, Transition]]:
    """``images`` Bernoulli(rate) observations (job ids ``j<index>``, one per second);
    the transitions with the index of the image that caused them."""
    out = []
    for index in range(start, start + images):
        transition = monitor.observe(rng.random() < rate, f"j{index}", float(index))
        if transition is not None:
            out.append((index, transition))
    return out


def learned(rate: float = 0.02, images: int = 10_000, seed: int = 1) -> LineHealthMonitor:
    monitor = LineHealthMonitor(STREAM, CONFIG)
    assert feed(monitor, rate, images, random.Random(seed)) == []
    assert not monitor.learning
    return monitor


# --- the math, checked against independent computations -----------------------------------


def _exact_tail(n: int, p: Fraction, count: int) -> Fraction:
    return sum((math.comb(n, x) * p**x * (1 - p) ** (n - x) for x in range(count, n + 1)),
               Fraction(0))


@pytest.mark.parametrize(("n", "p", "alpha"),
                         [(200, 0.02, 3.3e-6), (200, 0.05, 1e-4), (50, 0.1, 0.01),
                          (500, 0.005, 1e-6)])
def test_the_p_chart_limit_is_the_exact_binomial_quantile(n: int, p: float,
                                                          alpha: float) -> None:
    ucl = binomial_ucl(n, p, alpha)
    exact = Fraction(str(p))
    assert _exact_tail(n, exact, ucl + 1) <= alpha < _exact_tail(n, exact, ucl)
    assert binomial_upper_tail(n, p, ucl + 1) == pytest.approx(
        float(_exact_tail(n, exact, ucl + 1)), rel=1e-9)


def test_the_spike_limit_is_far_from_three_sigma_for_small_rates() -> None:
    spike = design(CONFIG, 0.02).spike
    stride = CONFIG.spike_window_images // CONFIG.spike_buckets
    budget = CONFIG.false_alarms_per_week * CONFIG.spike_share * stride / CONFIG.images_per_week
    assert spike.alpha == pytest.approx(budget)
    assert float(_exact_tail(spike.window, Fraction(str(spike.p0)), spike.ucl + 1)) <= budget
    # p0 + 3 sigma is 9.9 events of 200: a real tail of 0.75 %, thousands of times the budget
    sigma3 = spike.window * spike.p0 + 3 * math.sqrt(spike.window * spike.p0 * (1 - spike.p0))
    normal_tail = _exact_tail(spike.window, Fraction(str(spike.p0)), math.floor(sigma3) + 1)
    assert normal_tail > 1000 * budget
    assert spike.ucl > sigma3


def _exact_arl(p: Fraction, up: int, down: int, h: int) -> Fraction:
    """The CUSUM's ARL from 0 by Gaussian elimination in exact rationals, on the dense
    Markov chain (an independent route to cusum_arl's recurrence)."""
    rows = []
    for s in range(h):
        row = [Fraction(0)] * h + [Fraction(1)]
        row[s] += 1
        row[max(0, s - down)] -= 1 - p
        if s + up < h:
            row[s + up] -= p
        rows.append(row)
    for col in range(h):
        pivot = next(r for r in range(col, h) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(h):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    return rows[0][h] / rows[0][0]


@pytest.mark.parametrize(("p", "up", "down", "h"),
                         [(0.02, 26, 1, 60), (0.2, 8, 5, 30), (0.05, 10, 1, 25), (0.3, 5, 4, 17)])
def test_cusum_arl_matches_an_exact_solve(p: float, up: int, down: int, h: int) -> None:
    assert cusum_arl(p, up, down, h) == pytest.approx(
        float(_exact_arl(Fraction(str(p)), up, down, h)), rel=1e-8)


def test_cusum_arl_matches_a_simulation() -> None:
    rng = random.Random(3)
    runs = []
    for _ in range(2000):
        s, n = 0, 0
        while s < 12:
            n += 1
            s = s + 5 if rng.random() < 0.1 else max(0, s - 1)
        runs.append(n)
    assert sum(runs) / len(runs) == pytest.approx(cusum_arl(0.1, 5, 1, 12), rel=0.06)


def test_h_is_derived_from_the_budget_and_grows_as_it_shrinks() -> None:
    hs = []
    for budget in (4.0, 1.0, 0.5, 0.1, 0.01):
        config = MonitorConfig(false_alarms_per_week=budget)
        cusum = design(config, 0.02).cusum
        target = config.images_per_week / (budget * (1 - config.spike_share))
        assert cusum.arl0 >= target > cusum_arl(cusum.p0, cusum.up, cusum.down, cusum.h - 1)
        hs.append(cusum.h_nats)
    assert hs == sorted(hs) and len(set(hs)) == len(hs)
    # ... and with the image rate: a faster line sees more images per week
    assert design(MonitorConfig(images_per_second=10), 0.02).cusum.h > design(CONFIG, 0.02).cusum.h


def test_the_cusum_increments_are_the_log_likelihood_ratio() -> None:
    cusum = design(CONFIG, 0.02).cusum
    assert cusum.p1 == pytest.approx(3 * cusum.p0)
    assert cusum.down * cusum.unit == pytest.approx(math.log((1 - cusum.p0) / (1 - cusum.p1)))
    assert cusum.up * cusum.unit == pytest.approx(math.log(cusum.p1 / cusum.p0), rel=0.02)


def test_grid_rate() -> None:
    assert grid_rate(0.02) == pytest.approx(0.02, rel=1e-4)
    assert grid_rate(0.0201) == grid_rate(0.0199) == grid_rate(0.02) != grid_rate(0.0203)
    assert grid_rate(0.0) == pytest.approx(0.001, rel=0.02)
    assert grid_rate(0.9) == pytest.approx(0.5, rel=0.02)


# --- the monitor ----------------------------------------------------------------------------


def test_warmup_uses_the_prior_then_the_learned_rate() -> None:
    monitor = LineHealthMonitor(STREAM, CONFIG)
    assert monitor.learning and monitor.baseline == CONFIG.prior_rate("reject") == 0.02
    assert monitor.design.baseline == grid_rate(0.02)
    # 1 event every 25 images: 4 %, twice the prior, spread evenly (no alert)
    events = 0
    for index in range(CONFIG.warmup_images - 1):
        events += index % 25 == 0
        assert monitor.observe(index % 25 == 0, f"j{index}", float(index)) is None
    assert monitor.learning and monitor.baseline == 0.02
    last = CONFIG.warmup_images - 1
    monitor.observe(last % 25 == 0, "last", float(last))
    events += last % 25 == 0
    assert not monitor.learning
    # one pseudo-event at the prior rate (50 images at 2 %)
    assert monitor.baseline == pytest.approx((events + 1) / (CONFIG.warmup_images + 50))
    assert monitor.design.baseline == grid_rate(monitor.baseline)


def test_during_warmup_a_broken_line_alerts_against_the_prior() -> None:
    monitor = LineHealthMonitor(STREAM, CONFIG)
    found = feed(monitor, 0.4, 1000, random.Random(5))
    assert [t.kind for _, t in found] == ["opened"]
    assert found[0][1].baseline == 0.02 and found[0][0] >= CONFIG.min_images - 1


def test_a_stationary_stream_does_not_alert() -> None:
    """300,000 images (3.5 days at 1/s) at 2 %: the budget allows 0.5 false alerts a week,
    so at most one here; a mistuned h (or 3-sigma limits) would give dozens."""
    monitor = LineHealthMonitor(STREAM, CONFIG)
    found = feed(monitor, 0.02, 300_000, random.Random(11))
    assert len([t for _, t in found if t.kind == "opened"]) <= 1
    assert monitor.baseline == pytest.approx(0.02, rel=0.1)
    assert len(monitor.to_json()) < 2000  # state stays small


def test_a_step_to_five_times_opens_exactly_one_alert() -> None:
    monitor = learned()
    found = feed(monitor, 0.10, 3000, random.Random(2), start=10_000)
    assert [t.kind for _, t in found] == ["opened"]
    index, alert = found[0]
    assert index - 10_000 < 1000
    assert (alert.stream, alert.line, alert.camera, alert.rate_kind) == (
        "line-7/cam-2/reject", "line-7", "cam-2", "reject")
    assert alert.test in ("spike", "shift")
    assert alert.baseline == pytest.approx(0.02, rel=0.25)
    assert 0 < alert.window <= index + 1 and alert.events <= alert.window
    assert alert.rate == pytest.approx(alert.events / alert.window)
    assert alert.rate > alert.limit > alert.baseline
    assert 1 <= len(alert.job_ids) <= 5
    first = index - alert.window + 1
    assert all(first <= int(job_id[1:]) <= index for job_id in alert.job_ids)
    assert f"j{index}" in alert.job_ids  # the image that tripped it was an event
    assert alert.at == float(index) == alert.opened_at and not alert.acknowledged
    assert monitor.alert is not None and monitor.alert.id == alert.alert_id
    json.dumps(alert.to_dict())
    assert "line-7" in alert.text


def test_it_resolves_once_the_rate_has_been_back_for_the_recovery_period() -> None:
    monitor = learned()
    assert [t.kind for _, t in feed(monitor, 0.10, 2000, random.Random(2), 10_000)] == ["opened"]
    baseline = monitor.baseline
    found = feed(monitor, 0.02, 20_000, random.Random(3), start=12_000)
    assert [t.kind for _, t in found][:1] == ["resolved"]
    index, resolved = found[0]
    assert index - 12_000 >= CONFIG.recovery_images
    assert resolved.reason == "recovered" and resolved.job_ids == ()
    assert resolved.rate <= resolved.limit
    assert monitor.alert is None
    # the shift was not learned into the baseline
    assert monitor.baseline == pytest.approx(baseline, rel=0.05)


def test_acknowledging_does_not_resolve() -> None:
    monitor = learned()
    assert not monitor.acknowledge(1.0, by="qa")
    feed(monitor, 0.10, 2000, random.Random(2), 10_000)
    assert monitor.acknowledge(12_000.0, by="qa")
    alert = monitor.alert
    assert alert is not None and alert.acknowledged and alert.acknowledged_by == "qa"
    again = LineHealthMonitor.from_json(STREAM, CONFIG, monitor.to_json())
    assert again.alert is not None and again.alert.acknowledged
    assert feed(again, 0.10, 2000, random.Random(4), 12_000) == []  # still open, no new one
    found = feed(again, 0.02, 20_000, random.Random(5), 14_000)
    assert found[0][1].kind == "resolved" and found[0][1].acknowledged


def test_state_round_trips_through_json_and_replays_identically() -> None:
    monitor = learned(images=5_000)
    feed(monitor, 0.10, 1500, random.Random(6), 5_000)
    raw = monitor.to_json()
    copy = LineHealthMonitor.from_json(STREAM, CONFIG, raw.encode())
    assert copy.to_json() == raw
    assert LineHealthMonitor.from_state(STREAM, CONFIG, json.loads(raw)).to_dict() == \
        monitor.to_dict()
    a = feed(monitor, 0.02, 5_000, random.Random(7), 6_500)
    b = feed(copy, 0.02, 5_000, random.Random(7), 6_500)
    assert a == b and monitor.to_json() == copy.to_json()


@pytest.mark.parametrize("raw", [
    None, b"", "not json", "[1, 2]", "{}", '{"version": 2, "stream": "line-7/cam-2/reject"}',
    '{"version": 1, "stream": "line-7/cam-2/reject", "images": -3}',
    '{"version": 1, "stream": "line-7/cam-2/reject", "base_images": 10, "base_events": 20}',
    '{"version": 1, "stream": "line-7/cam-2/reject", "alert": {"id": 3}}',
    '{"version": 1, "stream": "line-7/cam-2/reject", "recent_events": [[1]]}',
    b"\xff\xfe", '{"version": 1, "stream": "line-7/cam-2/reject", "buckets": "abc"}',
])
def test_a_missing_or_garbled_state_starts_learning_again(raw: str | bytes | None) -> None:
    monitor = LineHealthMonitor.from_json(STREAM, CONFIG, raw)
    assert monitor.learning and monitor.alert is None
    assert json.loads(monitor.to_json())["images"] == 0
    assert monitor.observe(True, "j0", 0.0) is None


def test_another_streams_state_is_not_used() -> None:
    monitor = learned(images=3000)
    other = LineHealthMonitor.from_json(StreamKey("line-8", "reject"), CONFIG, monitor.to_json())
    assert other.learning and json.loads(other.to_json())["images"] == 0


def test_relearn_resolves_and_starts_over() -> None:
    monitor = learned()
    feed(monitor, 0.10, 2000, random.Random(2), 10_000)
    transition = monitor.relearn(12_000.0)
    assert transition is not None and transition.kind == "resolved"
    assert transition.reason == "relearn"
    assert monitor.learning and monitor.alert is None and monitor.baseline == 0.02


def test_streams_and_events() -> None:
    assert [k.name for k in stream_keys(CONFIG, "l1", "c1")] == [
        "l1/*/reject", "l1/*/review", "l1/*/failure"]
    per_camera = MonitorConfig(per_camera=True, rates=("reject",))
    assert [k.name for k in stream_keys(per_camera, "l1", "c1")] == ["l1/*/reject",
                                                                      "l1/c1/reject"]
    assert events_for("REJECT", failed=False) == {"reject": True, "review": False,
                                                  "failure": False}
    assert events_for(None, failed=True) == {"failure": True}


def test_config_rejects_a_window_that_is_not_whole_buckets() -> None:
    with pytest.raises(ValueError, match="multiple"):
        MonitorConfig(spike_window_images=205, spike_buckets=10)
