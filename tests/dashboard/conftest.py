"""Fixtures for the dashboard tests: the real app served over real HTTP (a threaded werkzeug
server) on the local Redis (DB 6), a real SeaweedFS S3 server (``s3_endpoint``) and the real
PostgreSQL (results index, database ``inspectq_dashboard_test``), driven by Debian's
Chromium through Playwright's sync API (``executable_path``, never a downloaded browser).

No worker runs: tests end jobs as a worker does (mask and heatmap PNGs in S3,
``JobStore.finish``) and
index them with the real ``workers.indexer.Indexer``."""

from __future__ import annotations

import io
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import requests
from PIL import Image, ImageDraw, ImageFilter
from werkzeug.serving import make_server

from api.app import create_app
from devstack.ports import free_port
from inspectq.backends import Backends
from inspectq.config import Settings
from inspectq.keyspace import heatmap_beside, keys_for
from inspectq.result import InspectionResult
from inspectq.storage import ObjectStore
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY, empty_index, fresh_postgres
from triton_models import card
from triton_models.repository import MODEL_NAME, Repositories
from workers.indexer import Indexer

REDIS_URL = "redis://127.0.0.1:6379/6"
BUCKET = "dashboard-tests"
DEV_KEY = "inspectq-dev-key"
AUTH = {"Authorization": f"Bearer {DEV_KEY}"}
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SIZE = (240, 160)
DEFECT_BOX = (150, 40, 200, 110)  # where the test images have their "defect"


def part_image(seed: int) -> bytes:
    """A grey machined part with a dark gouge inside DEFECT_BOX (PNG)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, SIZE[0])[None, :]
    y = np.linspace(0, 1, SIZE[1])[:, None]
    grey = 110 + 60 * x + 30 * y + rng.normal(0, 6, (SIZE[1], SIZE[0]))
    image = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 20, 120, 140), outline=(70, 70, 70), width=4)  # the part's bore
    x0, y0, x1, y1 = DEFECT_BOX
    draw.line((x0 + 5, y0 + 5, x1 - 5, y1 - 5), fill=(40, 30, 30), width=6)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def mask_png() -> bytes:
    """The class map a worker would write: class 1 (scratch) under DEFECT_BOX."""
    mask = Image.new("L", SIZE, 0)
    mask.paste(1, DEFECT_BOX)
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def heatmap_png() -> bytes:
    """The defect probability a worker would store (grey, 255 = 1.0): high along the gouge,
    fading around it, low elsewhere."""
    heatmap = Image.new("L", SIZE, 8)
    x0, y0, x1, y1 = DEFECT_BOX
    ImageDraw.Draw(heatmap).line((x0 + 5, y0 + 5, x1 - 5, y1 - 5), fill=250, width=14)
    buffer = io.BytesIO()
    heatmap.filter(ImageFilter.GaussianBlur(4)).save(buffer, "PNG")
    return buffer.getvalue()


def result_for(decision: str, score: float, issues: tuple[str, ...] = ()) -> InspectionResult:
    x0, y0, x1, y1 = DEFECT_BOX
    area = (x1 - x0) * (y1 - y0)
    defects = [] if decision == "PASS" else [
        {"class": "scratch", "score": score, "bbox": list(DEFECT_BOX), "area_px": area,
         "area_ratio": round(area / (SIZE[0] * SIZE[1]), 6)}]
    return InspectionResult.model_validate({
        "decision": decision, "score": score, "defects": defects,
        "width": SIZE[0], "height": SIZE[1],
        "model": {"name": "inspectq_seg", "version": "3", "sha256": "ab" * 32,
                  "classes": ["background", "scratch"]},
        "thresholds": {"pass": 0.4, "reject": 0.65},
        "timings": {"ingest_ms": 4.0, "queue_wait_ms": 3.0, "s3_get_ms": 2.0,
                    "preprocess_ms": 1.5, "triton_ms": 20.0, "postprocess_ms": 1.0,
                    "record_ms": 2.5, "total_ms": 34.0},
        "quality": {"issues": list(issues), "detail": ""},
        "ood_score": 0.42,
        "cache_hit": False,
    })


@dataclass
class Stack:
    """The served API and what a test needs to feed it."""

    url: str
    settings: Settings
    backends: Backends
    seed: int = 0
    session: requests.Session = field(default_factory=requests.Session)

    def submit(self, line: str, camera: str = "cam-1", metadata: str | None = None) -> str:
        self.seed += 1
        form = {"line": line, "camera": camera}
        if metadata is not None:
            form["metadata"] = metadata
        response = self.session.post(
            f"{self.url}/v1/jobs", headers=AUTH,
            files={"image": ("part.png", part_image(self.seed), "image/png")}, data=form)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def end(self, job_id: str, decision: str, score: float,
            issues: tuple[str, ...] = ()) -> None:
        """End the job as a worker does: its run's mask and heatmap in S3, then its one
        outcome."""
        mask_key = keys_for(job_id).run_mask("test")
        self.backends.store.put(mask_key, mask_png(), "image/png")
        self.backends.store.put(str(heatmap_beside(mask_key)), heatmap_png(), "image/png")
        self.backends.jobs.finish(job_id, result=result_for(decision, score, issues),
                                  mask_key=mask_key)

    def index(self) -> None:
        indexer = Indexer(self.backends)
        while indexer.drain_once(block_s=0.1, linger_s=0):
            pass

    def ended(self, line: str, decision: str, score: float, camera: str = "cam-1") -> str:
        job_id = self.submit(line, camera)
        self.end(job_id, decision, score)
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.session.get(f"{self.url}/v1/jobs/{job_id}", headers=AUTH)
        assert response.status_code == 200, response.text
        return response.json()


def model_repository(root: Path) -> Path:
    """A model repository of two versions with real cards: the shipped model's card as the
    served version 2, and its image-label-only sibling's (the card's ``label_only``
    section: the same data, trained with the masks hidden) as version 1."""
    shipped = Repositories()
    served = card.read(shipped.model_file(shipped.served_version()).parent)
    for version, content in ((1, served["label_only"]), (2, served)):
        folder = root / MODEL_NAME / str(version)
        folder.mkdir(parents=True)
        (folder / card.CARD_JSON).write_text(json.dumps(content))
    (root / MODEL_NAME / "config.pbtxt").write_text(
        f'name: "{MODEL_NAME}"\nversion_policy: {{ specific: {{ versions: [ 2 ] }} }}\n')
    return root


@pytest.fixture(scope="session")
def stack(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    settings = Settings(
        database_url=fresh_postgres("inspectq_dashboard_test"),
        redis_url=REDIS_URL,
        s3_endpoint_url=s3_endpoint,
        s3_bucket=BUCKET,
        s3_access_key_id=TEST_ACCESS_KEY,
        s3_secret_access_key=TEST_SECRET_KEY,
        s3_max_attempts=1,
        triton_url=f"127.0.0.1:{free_port()}",  # no Triton in these tests
        api_keys_file=str(tmp_path_factory.mktemp("keys") / "keys.json"),
        rate_limit="10000/minute",
        max_wait_s=5,
        model_repository=str(model_repository(tmp_path_factory.mktemp("models"))),
    )
    ObjectStore(settings).ensure_bucket()
    server = make_server("127.0.0.1", free_port(), create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    backends = Backends.connect(settings)
    try:
        yield Stack(url=f"http://127.0.0.1:{server.server_port}", settings=settings,
                    backends=backends)
    finally:
        server.shutdown()
        thread.join(10)
        redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture(autouse=True)
def _empty_index(stack: Stack) -> None:
    empty_index(str(stack.settings.database_url))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module: its driver (a node process, and Playwright's event loop
    on this thread) is gone before the rest of the suite runs."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


class Page:
    """A fresh browser tab at 1366x768 that records console errors and page errors."""

    def __init__(self, browser: Any, stack: Stack) -> None:
        self.context = browser.new_context(viewport={"width": 1366, "height": 768},
                                           accept_downloads=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.stack = stack
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def open(self, hash_path: str = "") -> None:
        self.page.goto(f"{self.stack.url}/dashboard/{hash_path}")

    def sign_in(self, key: str = DEV_KEY) -> None:
        self.open()
        self.page.fill("#api-key", key)
        self.page.press("#api-key", "Enter")
        if key == DEV_KEY:
            self.page.wait_for_selector("#nav:not([hidden])")

    def go(self, hash_path: str) -> None:
        self.page.evaluate("h => { location.hash = h; }", hash_path)

    def images_loaded(self, selector: str) -> None:
        """Wait until every image under ``selector`` has loaded its picture (a function, not
        a string: the page's CSP forbids eval, which string predicates need)."""
        self.page.wait_for_function(
            """selector => { const images = [...document.querySelectorAll(selector)];
               return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);
            }""", arg=selector)

    def shot(self, name: str, full_page: bool = True) -> None:
        """Save docs/screenshots/<name>.png, after checking the view fits the window's width
        (nothing to scroll sideways: readable at 1366 px and on a 768 px tablet)."""
        overflow = self.page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name}: {overflow} px wider than the window"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


@pytest.fixture
def tab(browser: Any, stack: Stack) -> Iterator[Page]:
    page = Page(browser, stack)
    yield page
    page.context.close()
