"""``python -m devstack.alerts_sim`` (``make alerts-sim``): how often the line-health monitor
(:mod:`inspectq.linehealth`, the real class, not a copy) raises a false alert, and how many
images it needs to see a real rise, on synthetic decision streams; side by side with the old
fixed rule (rate > 30 % over 300 s after 20 images, 900 s cooldown), re-implemented here for
the comparison only.

* **False alerts**: a line at a stationary rate, 1 image/s, for ``--weeks`` independent weeks
  of 604,800 images each; every week starts from an empty state (warm-up included), so the
  cost of learning the baseline is in the figure. Alerts opened / weeks.
* **Detection**: ``--runs`` independent streams at the baseline rate that step up at an image
  drawn uniformly from [5,000, 30,000] (after the 2,000-image warm-up: 1.4 to 8.3 hours into a
  line's life, while the baseline is still being refined), then stay up. Delay = images from
  the step (the first image at the new rate counts 1) to the alert opening; a run that does
  not alert within 20,000 images counts as never (infinite). A run whose alert opened before
  the step and is still open at the step is left out and counted.
* Streams: the REJECT rate at 2 % stepping to 6 % and 10 %, the REVIEW rate at 5 % stepping to
  15 % and 25 %, both with the monitor's default configuration (whose priors are 2 % and 5 %).

Prints a table, then, as its last line, one JSON object with every figure. Seeded: the same
``--seed`` gives the same figures on any machine (each task draws from its own child of one
``numpy.random.SeedSequence``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from inspectq.linehealth import LineHealthMonitor, MonitorConfig, StreamKey, design

WEEK_IMAGES = 604_800  # one week at 1 image/s
STEP_FROM, STEP_TO = 5_000, 30_000
DETECT_CAP = 20_000

# The old rule (workers/alert.py defaults), at 1 image/s: seconds are images.
OLD_WINDOW, OLD_MIN_IMAGES, OLD_RATE, OLD_COOLDOWN = 300, 20, 0.30, 900


@dataclass(frozen=True)
class Scenario:
    kind: str  # "reject" or "review": the stream's rate, so its prior
    baseline: float
    steps: tuple[float, ...]


SCENARIOS = (Scenario("reject", 0.02, (0.06, 0.10)), Scenario("review", 0.05, (0.15, 0.25)))


# --- the old rule ---------------------------------------------------------------------------


def old_rule_fires(flags: np.ndarray) -> list[int]:
    """Image indices at which the old fixed rule alerts: the rate over the last 300 images
    (seconds, at 1 image/s) above 30 % once 20 images were seen, then quiet for 900."""
    sums = np.cumsum(flags, dtype=np.int64)
    window = sums.copy()
    window[OLD_WINDOW:] -= sums[:-OLD_WINDOW]
    seen = np.minimum(np.arange(1, len(flags) + 1), OLD_WINDOW)
    candidates = np.flatnonzero((seen >= OLD_MIN_IMAGES) & (window > OLD_RATE * seen))
    fires: list[int] = []
    for index in candidates.tolist():
        if not fires or index - fires[-1] >= OLD_COOLDOWN:
            fires.append(index)
    return fires


# --- the tasks (each runs in a pool process, draws from its own seed) --------------------


def _monitor(kind: str) -> LineHealthMonitor:
    return LineHealthMonitor(StreamKey("sim", kind), MonitorConfig())  # type: ignore[arg-type]


def week_task(kind: str, rate: float, seed: np.random.SeedSequence) -> dict[str, Any]:
    """One week at a stationary rate: the alerts the monitor and the old rule raise."""
    flags = np.random.default_rng(seed).random(WEEK_IMAGES) < rate
    monitor = _monitor(kind)
    observe = monitor.observe
    opened = {"spike": 0, "shift": 0}
    for index, is_event in enumerate(flags.tolist()):
        transition = observe(is_event, str(index) if is_event else "", float(index))
        if transition is not None and transition.kind == "opened":
            opened[transition.test] += 1
    return {"kind": kind, "opened": opened, "old": len(old_rule_fires(flags)),
            "baseline": monitor.baseline}


def detect_task(kind: str, rate: float, stepped: float, seed: np.random.SeedSequence,
                runs: int) -> dict[str, Any]:
    """``runs`` streams stepping from ``rate`` to ``stepped``: the monitor's delays (None:
    never within DETECT_CAP), which test saw it, and the old rule's delays."""
    rng = np.random.default_rng(seed)
    delays: list[int | None] = []
    tests: list[str] = []
    old: list[int | None] = []
    excluded = prestep_alerts = 0
    for _ in range(runs):
        step_at = int(rng.integers(STEP_FROM, STEP_TO + 1))
        flags = np.concatenate([rng.random(step_at) < rate,
                                rng.random(DETECT_CAP) < stepped])
        monitor = _monitor(kind)
        observe = monitor.observe
        events = flags.tolist()
        saw_prestep = False
        for index in range(step_at):
            transition = observe(events[index], str(index), float(index))
            saw_prestep = saw_prestep or (transition is not None and transition.kind == "opened")
        prestep_alerts += saw_prestep
        if monitor.alert is not None:
            excluded += 1
            continue
        delay, test = None, "none"
        for index in range(step_at, step_at + DETECT_CAP):
            transition = observe(events[index], str(index), float(index))
            if transition is not None and transition.kind == "opened":
                delay, test = index - step_at + 1, transition.test
                break
        delays.append(delay)
        tests.append(test)
        after = [fire for fire in old_rule_fires(flags) if fire >= step_at]
        old.append(after[0] - step_at + 1 if after else None)
    return {"kind": kind, "stepped": stepped, "delays": delays, "tests": tests, "old": old,
            "excluded": excluded, "prestep_alerts": prestep_alerts}


# --- the summary --------------------------------------------------------------------------


def _percentile(delays: list[int | None], q: float) -> int | None:
    """The q-th percentile (one of the delays, no interpolation) with "never" as infinity;
    None when it is never."""
    if not delays:
        return None
    values = np.array([math.inf if d is None else d for d in delays], dtype=float)
    result = float(np.percentile(values, q, method="inverted_cdf"))
    return None if math.isinf(result) else int(result)


def _fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}"


def _summarise(scenario: Scenario, weeks: list[dict[str, Any]],
               detections: list[dict[str, Any]]) -> dict[str, Any]:
    n_weeks = len(weeks)
    spike = sum(w["opened"]["spike"] for w in weeks)
    shift = sum(w["opened"]["shift"] for w in weeks)
    summary: dict[str, Any] = {
        "baseline_rate": scenario.baseline,
        "false_alerts_per_week": (spike + shift) / n_weeks,
        "false_alerts_per_week_by_test": {"spike": spike / n_weeks, "shift": shift / n_weeks},
        "false_alerts_per_week_max": max(sum(w["opened"].values()) for w in weeks),
        "detect_median_images": {}, "detect_p90_images": {}, "detect_mean_images": {},
        "detected_by_spike_fraction": {}, "never_detected": {},
        "runs_left_out_alert_open_at_step": {}, "runs_with_false_alert_before_step": {},
        "old_rule": {"false_alerts_per_week": sum(w["old"] for w in weeks) / n_weeks,
                     "detect_median_images": {}, "detect_p90_images": {},
                     "detected_fraction": {}},
    }
    for stepped in scenario.steps:
        key = f"{stepped:.2f}"
        parts = [d for d in detections if d["stepped"] == stepped]
        delays = [x for d in parts for x in d["delays"]]
        tests = [x for d in parts for x in d["tests"]]
        old = [x for d in parts for x in d["old"]]
        found = [x for x in delays if x is not None]
        summary["detect_median_images"][key] = _percentile(delays, 50)
        summary["detect_p90_images"][key] = _percentile(delays, 90)
        summary["detect_mean_images"][key] = round(float(np.mean(found)), 1) if found else None
        summary["detected_by_spike_fraction"][key] = round(
            tests.count("spike") / max(len(tests), 1), 3)
        summary["never_detected"][key] = delays.count(None)
        summary["runs_left_out_alert_open_at_step"][key] = sum(d["excluded"] for d in parts)
        summary["runs_with_false_alert_before_step"][key] = sum(
            d["prestep_alerts"] for d in parts)
        summary["old_rule"]["detect_median_images"][key] = _percentile(old, 50)
        summary["old_rule"]["detect_p90_images"][key] = _percentile(old, 90)
        summary["old_rule"]["detected_fraction"][key] = round(
            sum(x is not None for x in old) / max(len(old), 1), 3)
    return summary


def _table(name: str, summary: dict[str, Any]) -> list[str]:
    old = summary["old_rule"]
    rows = [f"{name} rate, stationary at {summary['baseline_rate']:.0%} "
            f"(1 image/s; delays in images after the step; never = not within {DETECT_CAP})",
            f"  {'':<26}{'line-health monitor':>22}{'old fixed rule':>18}",
            f"  {'false alerts / week':<26}{summary['false_alerts_per_week']:>22.2f}"
            f"{old['false_alerts_per_week']:>18.2f}"]
    for key in summary["detect_median_images"]:
        new_cell = (f"{_fmt(summary['detect_median_images'][key])} / "
                    f"{_fmt(summary['detect_p90_images'][key])}")
        old_cell = (f"{_fmt(old['detect_median_images'][key])} / "
                    f"{_fmt(old['detect_p90_images'][key])}")
        rows.append(f"  {'step to ' + key + ' median / p90':<26}{new_cell:>22}{old_cell:>18}")
    return rows


def _design_summary(kind: str, baseline: float) -> dict[str, Any]:
    config = MonitorConfig()
    found = design(config, baseline)
    return {"baseline": found.baseline, "p1": round(found.cusum.p1, 6),
            "cusum_up_down": [found.cusum.up, found.cusum.down],
            "cusum_h_nats": round(found.cusum.h_nats, 3), "cusum_arl0": round(found.cusum.arl0),
            "cusum_arl1": round(found.cusum.arl1, 1),
            "spike_window": found.spike.window, "spike_stride": found.spike.stride,
            "spike_ucl": found.spike.ucl, "spike_tail_per_check": found.spike.tail,
            "false_alarms_per_week_budget": config.false_alarms_per_week,
            "warmup_images": config.warmup_images}


def run(weeks: int, runs: int, seed: int, processes: int) -> dict[str, Any]:
    started = time.perf_counter()
    root = np.random.SeedSequence(seed)
    jobs: list[tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]] = []
    per_task = 25
    for scenario, scenario_seed in zip(SCENARIOS, root.spawn(len(SCENARIOS)), strict=True):
        week_seeds, detect_seed = scenario_seed.spawn(2)
        for child in week_seeds.spawn(weeks):
            jobs.append((week_task, (scenario.kind, scenario.baseline, child)))
        for stepped, step_seed in zip(scenario.steps, detect_seed.spawn(len(scenario.steps)),
                                      strict=True):
            chunks = [per_task] * (runs // per_task) + ([runs % per_task] if runs % per_task
                                                         else [])
            for count, child in zip(chunks, step_seed.spawn(len(chunks)), strict=True):
                jobs.append((detect_task, (scenario.kind, scenario.baseline, stepped, child,
                                           count)))
    with ProcessPoolExecutor(processes) as pool:
        futures = [pool.submit(function, *args) for function, args in jobs]
        results = [future.result() for future in tqdm(futures, desc="simulating", unit="task")]
    summaries = {}
    for scenario in SCENARIOS:
        mine = [r for r in results if r["kind"] == scenario.kind]
        summaries[scenario.kind] = _summarise(
            scenario, [r for r in mine if "opened" in r], [r for r in mine if "delays" in r])
    reject, review = summaries["reject"], summaries["review"]
    output: dict[str, Any] = {
        "false_alerts_per_week": reject["false_alerts_per_week"],
        "detect_median_images": reject["detect_median_images"],
        "detect_p90_images": reject["detect_p90_images"],
        **{key: value for key, value in reject.items()
           if key not in ("false_alerts_per_week", "detect_median_images",
                          "detect_p90_images")},
        "review": review,
        "design": {s.kind: _design_summary(s.kind, s.baseline) for s in SCENARIOS},
        "weeks": weeks, "runs": runs, "seed": seed,
        "step_at_images": [STEP_FROM, STEP_TO],
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weeks", type=int, default=10, help="stationary weeks per stream")
    parser.add_argument("--runs", type=int, default=200, help="step runs per step size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    output = run(args.weeks, args.runs, args.seed, args.processes)
    print()
    print("\n".join([*_table("REJECT", output), "", *_table("REVIEW", output["review"])]))
    print(f"\n{args.weeks} weeks and {args.runs} step runs per step size, seed {args.seed}, "
          f"{output['runtime_s']} s")
    print(json.dumps(output))


if __name__ == "__main__":
    main()
