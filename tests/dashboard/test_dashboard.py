"""The dashboard in headless Chromium against the real API, S3, Redis and PostgreSQL: sign
in, the lines overview (and its live update), the line view and its export, the job view,
the review queue worked with the keyboard, and the try-it page with its sliders.

Screenshots of every view land in docs/screenshots/ (docs/dashboard.md shows them)."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path

import requests
from playwright.sync_api import expect

from api.apikeys import add_key, revoke_key
from api.dashboard import CONTENT_SECURITY_POLICY
from inspectq import keyspace
from inspectq.alerting import AlertEvent, LineAlerting, effective
from inspectq.index.alerts import AlertIndex
from inspectq.linehealth import LineHealthMonitor, StreamKey, Transition
from inspectq.result import ImageQuality, Thresholds, final_decision
from tests.dashboard.conftest import AUTH, DEFECT_BOX, Page, Stack, part_image


def test_the_page_is_served_with_a_strict_csp_and_no_inline_script(stack: Stack) -> None:
    response = requests.get(f"{stack.url}/dashboard/", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    csp = response.headers["Content-Security-Policy"]
    assert csp == CONTENT_SECURITY_POLICY
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and "unsafe" not in csp
    assert directives["img-src"] == "'self' blob: data:"
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", response.text, re.S)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
    script = requests.get(f"{stack.url}/dashboard/app.js", timeout=10)
    assert script.status_code == 200
    assert script.headers["Content-Type"].startswith("text/javascript")
    # Every value is shown through textContent: no HTML parsing of strings anywhere.
    assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write",
                         script.text)
    assert requests.get(f"{stack.url}/dashboard/../api/app.py", timeout=10).status_code == 404


def test_a_wrong_key_shows_the_sign_in_error(tab: Page) -> None:
    tab.sign_in("not-a-key")
    expect(tab.page.locator("#sign-in-error")).to_contain_text("not accepted")
    expect(tab.page.locator("#nav")).to_be_hidden()
    assert tab.page.evaluate("sessionStorage.getItem('inspectq.key')") is None
    tab.shot("sign-in-error")
    # The browser reports the refused request itself; nothing else went wrong.
    assert all("401" in error for error in tab.errors), tab.errors


def test_views_are_the_tenants_a_revoked_key_signs_out_and_sign_out_forgets_the_key(
    tab: Page, stack: Stack
) -> None:
    stack.ended("press-9", "REJECT", 0.9)  # the default tenant's
    stack.index()
    keys_file = Path(stack.settings.api_keys_file)
    key, entry = add_key(keys_file, "acme")
    tab.sign_in(key)
    tab.page.wait_for_selector("#nav:not([hidden])")
    expect(tab.page.locator("#lines")).to_contain_text("No inspected images")
    assert tab.page.evaluate("sessionStorage.getItem('inspectq.key')") == key
    assert revoke_key(keys_file, entry.id)
    tab.page.get_by_role("button", name="Refresh now").click()
    expect(tab.page.locator("#sign-in-error")).to_contain_text("not accepted")
    assert tab.page.evaluate("sessionStorage.getItem('inspectq.key')") is None

    tab.sign_in()
    expect(tab.page.locator('[data-line="press-9"]')).to_be_visible()
    tab.page.get_by_role("button", name="Sign out").click()
    expect(tab.page.locator("#sign-in")).to_be_visible()
    assert tab.page.evaluate("sessionStorage.getItem('inspectq.key')") is None
    tab.page.reload()  # nothing left to sign in with
    expect(tab.page.locator("#sign-in")).to_be_visible()
    assert all("401" in error for error in tab.errors), tab.errors


def test_lines_overview_counts_and_updates_live_then_line_job_views(
    tab: Page, stack: Stack
) -> None:
    plan = [("PASS", 0.1, "cam-1"), ("PASS", 0.12, "cam-2"), ("PASS", 0.2, "cam-1"),
            ("REVIEW", 0.5, "cam-2"), ("REJECT", 0.9, "cam-1"), ("PASS", 0.05, "cam-1")]
    jobs = [stack.ended("press-1", decision, score, camera) for decision, score, camera in plan]
    stack.ended("press-2", "REJECT", 0.8)
    stack.ended("press-2", "PASS", 0.1)
    stack.index()

    tab.sign_in()
    card = tab.page.locator('[data-line="press-1"]')
    expect(card.locator('[data-count="total"] b')).to_have_text("6")
    expect(card.locator('[data-count="PASS"] b')).to_have_text("4")
    expect(card.locator('[data-count="REVIEW"] b')).to_have_text("1")
    expect(card.locator('[data-count="REJECT"] b')).to_have_text("1")
    expect(card.locator('[data-rate="reject"] b')).to_have_text("16.7%")
    expect(card.locator('[data-rate="review"] b')).to_have_text("16.7%")
    expect(card.locator("svg.chart rect.bar")).to_have_count(1)  # one minute, 1 of 6
    expect(tab.page.locator('[data-line="press-2"] [data-count="REJECT"] b')).to_have_text("1")
    tab.shot("lines")

    # New jobs end; the open page shows them within one refresh, without a reload.
    tab.page.evaluate("window.__same_page = true")
    jobs += [stack.ended("press-1", "REJECT", 0.95, "cam-2") for _ in range(2)]
    stack.index()
    expect(card.locator('[data-count="REJECT"] b')).to_have_text("3", timeout=15_000)
    expect(card.locator('[data-count="total"] b')).to_have_text("8")
    expect(card.locator('[data-rate="reject"] b')).to_have_text("37.5%")
    assert tab.page.evaluate("window.__same_page") is True
    tab.page.set_viewport_size({"width": 768, "height": 1024})
    tab.shot("lines-tablet")
    tab.page.set_viewport_size({"width": 1366, "height": 768})
    tab.page.select_option("#window", "8h")  # hourly buckets over 8 hours
    expect(card.locator("svg.chart text").last).to_contain_text("per hour")
    expect(card.locator('[data-count="total"] b')).to_have_text("8")
    assert tab.page.evaluate("location.hash") == "#/lines?window=8h"

    # Line view: the REJECT and REVIEW overlays, filters, export.
    card.locator("h2 a").click()
    thumbs = tab.page.locator("#thumbs .thumb")
    expect(thumbs).to_have_count(4)  # 3 REJECT + 1 REVIEW, newest first
    expect(thumbs.first).to_have_attribute("data-job", jobs[-1])
    for i in range(4):
        expect(thumbs.nth(i).locator("img")).to_have_attribute("src", re.compile("^blob:"))
    tab.images_loaded("#thumbs img")
    tab.shot("line")
    with tab.page.expect_download() as download_info:
        tab.page.click("#export")
    rows = list(csv.DictReader(io.StringIO(download_info.value.path().read_text())))
    assert sorted(row["id"] for row in rows) == sorted(jobs[3:5] + jobs[6:])
    expect(tab.page.locator("#export-status")).to_contain_text("Exported 4 rows")
    tab.page.select_option("#camera", "cam-1")  # per camera: the one cam-1 REJECT
    expect(thumbs).to_have_count(1)
    expect(thumbs.first).to_have_attribute("data-job", jobs[4])
    tab.page.select_option("#camera", "")
    tab.page.select_option("#decision", "REVIEW")
    expect(thumbs).to_have_count(1)
    expect(thumbs.first).to_have_attribute("data-job", jobs[3])

    # Job view: image, overlay, heatmap and mask side by side, regions, thresholds, feedback.
    thumbs.first.click()
    expect(tab.page.locator("#regions tbody tr")).to_have_count(1)
    expect(tab.page.locator("#regions tbody td").first).to_have_text("scratch")
    expect(tab.page.locator("#job-thresholds")).to_contain_text("0.40")
    expect(tab.page.locator("#job-thresholds")).to_contain_text("0.65")
    expect(tab.page.locator("#job")).to_contain_text("inspectq_seg v3")
    expect(tab.page.locator("#job")).to_contain_text("no (score 0.42; above 1.00")
    for canvas in ("#heatmap-canvas", "#mask-canvas"):
        expect(tab.page.locator(canvas)).to_have_attribute("data-loaded", "true")
    # The heatmap in colour: hot on the gouge (probability 250/255), dark off it (8/255).
    hot, cold = tab.page.evaluate("""() => {
        const context = document.querySelector('#heatmap-canvas').getContext('2d');
        return [[175, 75], [60, 140]].map(([x, y]) => [...context.getImageData(x, y, 1, 1).data]);
    }""")
    assert hot[0] > 240 and hot[1] > 200 and cold[0] < 40 and cold[2] < 40, (hot, cold)
    shown = tab.page.locator("#job figure img")
    expect(shown).to_have_count(2)
    expect(shown.first).to_have_attribute("alt", f"Image of {jobs[3]}")
    tab.page.get_by_role("button", name="Correct to REJECT").click()
    expect(tab.page.locator("#feedback tbody tr")).to_have_count(1)
    assert stack.job(jobs[3])["feedback"]["latest"]["decision"] == "REJECT"
    tab.images_loaded("#job img")
    tab.shot("job")
    tab.page.set_viewport_size({"width": 768, "height": 1024})
    tab.shot("job-tablet")
    assert tab.errors == []


def test_the_control_chart_draws_baseline_limit_and_alerts_and_lists_open_ones(
    tab: Page, stack: Stack
) -> None:
    """The line's REJECT monitor as the workers leave it (its state in Redis, its alerts in
    the index, as the notify queue writes them), on a line configured to learn fast."""
    overrides = {"rates": ["reject"], "warmup_images": 40, "recovery_images": 10,
                 "min_images": 20, "prior_rates": {"reject": 0.05}}
    put = requests.put(f"{stack.url}/v1/lines/coat-4/alerting", headers=AUTH, json=overrides,
                       timeout=10)
    assert put.status_code == 200, put.text
    config = effective(stack.settings, LineAlerting(**overrides)).monitor_config()
    monitor = LineHealthMonitor(StreamKey("coat-4", "reject"), config)
    now = time.time()
    opened: list[Transition] = []
    # 5 % REJECT, then a burst that opens an alert 40 minutes ago, then 5 % again.
    decisions = [i % 20 == 0 for i in range(300)] + [True] * 30 + [i % 20 == 0
                                                                   for i in range(150)]
    for number, is_reject in enumerate(decisions):
        transition = monitor.observe(is_reject, f"j_{number:022d}", now - 2400 + number)
        if transition is not None:
            opened.append(transition)
    assert [t.kind for t in opened] == ["opened"] and monitor.alert is not None
    stack.backends.redis.set(keyspace.linehealth_state("default", "coat-4/*/reject"),
                             monitor.to_json())
    AlertIndex(stack.backends.index).record_event(
        AlertEvent.of("default", opened[0], opened[0], []))
    for decision, score in [("PASS", 0.1)] * 8 + [("REJECT", 0.9)] * 2:
        stack.ended("coat-4", decision, score)
    stack.index()

    tab.sign_in()
    card = tab.page.locator('[data-line="coat-4"]')
    chart = card.locator("svg.chart")
    expect(chart.locator("line.baseline")).to_have_count(1)
    expect(chart.locator("line.limit")).to_have_count(1)
    expect(chart.locator("rect.alert-mark")).to_have_count(1)
    expect(chart.locator("rect.bar")).not_to_have_count(0)  # 1, or 2 across a minute
    limit_y = float(chart.locator("line.limit").get_attribute("y1"))
    baseline_y = float(chart.locator("line.baseline").get_attribute("y1"))
    assert limit_y < baseline_y  # the limit is drawn above the baseline
    health = monitor.health()
    legend = card.locator(".legend")
    expect(legend).to_contain_text(f"baseline {health['baseline'] * 100:.1f}%")
    expect(legend).to_contain_text(f"control limit {health['limit'] * 100:.1f}% over 200 images")
    expect(card.locator("[data-open-alerts]")).to_have_attribute("data-open-alerts", "1")
    test = "spike" if opened[0].test == "spike" else "sustained rise"  # the CUSUM's name
    expect(card.locator(".alerts li")).to_contain_text(f"REJECT rate {test}")
    tab.shot("lines-control")
    assert tab.errors == []


def test_the_model_page_shows_the_served_versions_card_and_the_others(tab: Page) -> None:
    model = requests.get(f"{tab.stack.url}/v1/model", headers=AUTH, timeout=10).json()
    [served] = [v["card"] for v in model["versions"] if v["served"]]
    tab.sign_in()
    tab.page.get_by_role("link", name="Model").click()
    expect(tab.page.locator("#served h2")).to_have_text("inspectq_seg version 2 (served)")
    expect(tab.page.locator("#served")).to_contain_text(served["sha256"])
    rows = tab.page.locator("#per-class tbody tr")
    expect(rows).to_have_count(len(served["metrics"]["per_class"]))
    for i, (name, got) in enumerate(served["metrics"]["per_class"].items()):
        expect(rows.nth(i).locator("td")).to_have_text(
            [name, f"{got['dice']:.4f}", f"{got['iou']:.4f}", f"{got['pixels']:,}"])
    other = tab.page.locator("#other-versions tbody tr")
    expect(other).to_have_count(1)
    expect(other.first).to_have_attribute("data-version", "1")
    expect(other.first.locator("td").nth(3)).to_have_text(
        f"{served['label_only']['metrics']['mean_dice']:.4f}")
    tab.shot("model")
    tab.page.set_viewport_size({"width": 768, "height": 1024})
    tab.shot("model-tablet")
    assert tab.errors == []


def test_the_line_view_pages_through_rejects_and_reviews_newest_first(
    tab: Page, stack: Stack
) -> None:
    """55 REJECT and REVIEW images, interleaved: 48 on the first page, 7 more on the next,
    merged from the two keyset-paged listings in the API's order, none twice."""
    jobs = [stack.ended("roll-2", "REJECT" if i % 3 else "REVIEW", 0.9 if i % 3 else 0.5)
            for i in range(55)]
    stack.ended("roll-2", "PASS", 0.1)  # not shown
    stack.index()
    listed = requests.get(f"{stack.url}/v1/jobs?line=roll-2&limit=100", headers=AUTH,
                          timeout=10).json()["jobs"]
    expected = [job["id"] for job in listed if job["decision"] != "PASS"]
    assert sorted(expected) == sorted(jobs)
    tab.sign_in()
    tab.go("#/line/roll-2")
    thumbs = tab.page.locator("#thumbs .thumb")
    expect(thumbs).to_have_count(48)
    more = tab.page.locator("#load-more")
    expect(more).to_have_text("Load more (48 shown)")
    tab.images_loaded("#thumbs img")
    more.scroll_into_view_if_needed()
    tab.shot("line-paging", full_page=False)
    more.click()
    expect(thumbs).to_have_count(55)
    expect(more).to_be_hidden()
    assert [thumbs.nth(i).get_attribute("data-job") for i in range(55)] == expected
    assert tab.errors == []


def test_review_queue_is_worked_with_the_keyboard(tab: Page, stack: Stack) -> None:
    review = [stack.ended("weld-3", "REVIEW", 0.45 + i / 100) for i in range(5)]
    stack.ended("weld-3", "REJECT", 0.9)  # not in the queue
    answered = stack.ended("weld-3", "REVIEW", 0.5)
    stack.index()
    posted = requests.post(f"{stack.url}/v1/jobs/{answered}/feedback", headers=AUTH,
                           json={"verdict": "correct", "decision": "PASS"}, timeout=10)
    assert posted.status_code == 201, posted.text

    tab.sign_in()
    tab.go("#/review")
    item = tab.page.locator("#review-item [data-job]")
    expect(item).to_have_attribute("data-job", review[-1])  # newest first
    expect(tab.page.locator("#review-progress")).to_contain_text("5 waiting")
    tab.images_loaded("#review-item img")
    tab.shot("review")
    tab.page.set_viewport_size({"width": 768, "height": 1024})
    tab.shot("review-tablet")
    seen = {}
    for key in ("p", "r", "1", "s", "p"):
        shown = item.get_attribute("data-job")
        assert shown not in seen
        seen[shown] = key
        if key == "1":  # the class keys come with the job's classes: 1 is "scratch"
            expect(tab.page.locator("#review-classes [data-class=scratch]")).to_be_visible()
        tab.page.keyboard.press(key)
        if key != "p" or len(seen) < 5:
            expect(item.or_(tab.page.locator("#review-empty"))).not_to_have_attribute(
                "data-job", shown)
    expect(tab.page.locator("#review-empty")).to_be_visible()
    assert set(seen) == set(review)
    for job_id, key in seen.items():
        feedback = stack.job(job_id).get("feedback")
        if key == "s":
            assert feedback is None
        elif key == "1":  # a REJECT of class scratch, on the model's region's box
            assert feedback["latest"]["verdict"] == "correct"
            assert feedback["latest"]["defects"] == [{"class": "scratch",
                                                      "bbox": list(DEFECT_BOX)}]
        else:
            assert feedback["latest"]["verdict"] == "correct"
            assert feedback["latest"]["decision"] == {"p": "PASS", "r": "REJECT"}[key]
            assert feedback["latest"]["by"] == "dashboard"
    assert tab.errors == []


def test_the_review_queue_pages_past_its_first_fifty(tab: Page, stack: Stack) -> None:
    """The queue fetches 50 at a time: skipping all of them brings the next page, not
    "nothing to review"."""
    review = {stack.ended("weld-9", "REVIEW", 0.5) for _ in range(51)}
    stack.index()
    tab.sign_in()
    tab.go("#/review")
    item = tab.page.locator("#review-item [data-job]")
    expect(tab.page.locator("#review-progress")).to_contain_text("50+ waiting")
    seen: list[str] = []
    for _ in range(50):
        expect(item).not_to_have_attribute("data-job", seen[-1] if seen else "")
        seen.append(str(item.get_attribute("data-job")))
        tab.page.keyboard.press("s")
    expect(item).not_to_have_attribute("data-job", seen[-1])
    expect(tab.page.locator("#review-progress")).to_contain_text("1 waiting")
    seen.append(str(item.get_attribute("data-job")))
    assert len(set(seen)) == 51 and set(seen) == review
    assert tab.errors == []


def test_try_it_uploads_waits_for_the_overlay_and_re_decides_with_the_sliders(
    tab: Page, stack: Stack, tmp_path
) -> None:
    image = tmp_path / "part.png"
    image.write_bytes(part_image(99))
    tab.sign_in()
    tab.go("#/try")
    tab.page.set_input_files("#try-file", str(image))
    tab.page.fill("#try-line", "bench-7")
    tab.page.get_by_role("button", name="Inspect").click()
    status = tab.page.locator("#try-status")
    expect(status).to_have_attribute("data-job", re.compile(r"."))
    job_id = status.get_attribute("data-job")
    expect(status).to_contain_text("waiting")
    assert stack.job(job_id)["line"] == "bench-7"
    stack.end(job_id, "REVIEW", 0.5)  # the page is long-polling: it sees the job end

    overlay = tab.page.locator("#try-overlay")
    expect(overlay).to_have_attribute("src", re.compile("^blob:"))
    tab.images_loaded("#try-overlay")
    decision = tab.page.locator("#try-decision")
    expect(decision).to_have_attribute("data-decision", "REVIEW")
    tab.page.fill("#pass-threshold", "0.55")  # 0.5 < 0.55: PASS
    expect(decision).to_have_attribute("data-decision", "PASS")
    tab.page.fill("#pass-threshold", "0.5")  # on the threshold: REVIEW (inclusive)
    expect(decision).to_have_attribute("data-decision", "REVIEW")
    tab.page.fill("#reject-threshold", "0.45")  # below pass: pass follows down to 0.45
    expect(decision).to_have_attribute("data-decision", "REJECT")
    expect(tab.page.locator("output[for=pass-threshold]")).to_have_text("0.45")
    tab.page.focus("#reject-threshold")
    for _ in range(10):  # the keyboard moves a slider too: 0.55, and 0.5 <= 0.55 is REVIEW
        tab.page.keyboard.press("ArrowRight")
    expect(tab.page.locator("output[for=reject-threshold]")).to_have_text("0.55")
    expect(decision).to_have_attribute("data-decision", "REVIEW")
    tab.shot("try-it")

    # The rule itself is inspectq.result.final_decision's, on every kind of case.
    cases = [(score, issues, ood) for score in (0.0, 0.39, 0.4, 0.5, 0.65, 0.66, 1.0)
             for issues in ([], ["blank"], ["low_contrast", "saturated"])
             for ood in (None, 0.3, 1.0, 1.01, 7.5)]
    got = tab.page.evaluate(
        """async cases => { const { decide } = await import('./app.js');
           return cases.map(([s, q, o]) => decide(s, 0.4, 0.65, q, o)); }""", cases)
    thresholds = Thresholds(pass_threshold=0.4, reject_threshold=0.65)
    assert got == [final_decision(score, thresholds, ImageQuality(issues=issues), ood).value
                   for score, issues, ood in cases]
    assert tab.errors == []


def test_what_the_api_holds_is_shown_as_text_never_as_markup(tab: Page, stack: Stack) -> None:
    markup = '<img src="x" onerror="window.__xss = 1"><b id="injected">bold</b>'
    job_id = stack.submit("paint-1", metadata=json.dumps({"lot": markup}))
    stack.end(job_id, "REJECT", 0.9)
    stack.index()
    posted = requests.post(f"{stack.url}/v1/jobs/{job_id}/feedback", headers=AUTH,
                           json={"verdict": "confirm", "note": markup, "by": markup},
                           timeout=10)
    assert posted.status_code == 201, posted.text
    tab.sign_in()
    tab.go(f"#/job/{job_id}")
    row = tab.page.locator("#feedback tbody tr")
    expect(row.locator("td").nth(4)).to_have_text(markup)
    expect(row.locator("td").nth(3)).to_have_text(markup)
    expect(tab.page.locator("#job")).to_contain_text(json.dumps({"lot": markup},
                                                                separators=(",", ":")))
    tab.images_loaded("#job img")
    assert tab.page.locator("#injected").count() == 0
    assert tab.page.evaluate("window.__xss") is None
    assert tab.errors == []
