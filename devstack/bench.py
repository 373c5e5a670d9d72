"""Throughput, side by side in one run: Triton alone, then the whole pipeline through the API.

Both phases use the same 256x256 images (one tile each), so ``end-to-end / Triton`` says
how much of Triton's capacity the pipeline delivers to users. The per-stage split comes from
the ``timings`` each job reports.
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tqdm import tqdm

from devstack.client import InspectqClient
from devstack.samples import Sample
from devstack.stack import REPO, StackConfig
from triton_models.synth import render

BENCH_SEED = 31337
STAGES = ("ingest_ms", "queue_wait_ms", "s3_get_ms", "preprocess_ms", "triton_ms",
          "postprocess_ms", "record_ms", "total_ms")


@dataclass(frozen=True)
class Phase:
    name: str
    images: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def bench_images(count: int, start: int = 0) -> list[Sample]:
    """Distinct images (a third clean), so the result cache never short-cuts inference."""
    kinds = (None, "scratch", "pit", None, "crack", "stain")
    out = []
    for index in tqdm(range(start, start + count), desc="drawing images", unit="img",
                      leave=False):
        kind = kinds[index % len(kinds)]
        out.append(Sample(f"b{index}", render(BENCH_SEED, index, kind)[0], kind, None))
    return out


def in_process(config: StackConfig) -> str:
    """The model engineer's in-process TorchScript benchmark, in the model env (torch)."""
    proc = subprocess.run(
        [str(config.model_python), "-m", "triton_models.bench", "--in-process-only"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    return (proc.stdout or proc.stderr).strip()


def triton_alone(config: StackConfig, images: list[Sample], clients: int) -> Phase:
    """``clients`` threads each sending one-image requests, as the workers do."""
    url, model = config.settings.triton_url, config.settings.triton_model
    tiles = [np.ascontiguousarray(s.rgb.transpose(2, 0, 1)[None]) for s in images]
    outputs = ("class_map", "defect_prob", "image_score")
    cursor = iter(range(len(tiles)))
    lock = threading.Lock()

    def worker(bar: tqdm) -> None:
        client = grpcclient.InferenceServerClient(url)
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            batch = grpcclient.InferInput("images", list(tiles[index].shape), "UINT8")
            batch.set_data_from_numpy(tiles[index])
            client.infer(model, [batch], outputs=requested)
            bar.update(1)

    with tqdm(total=len(tiles), desc=f"Triton, {clients} clients", unit="img") as bar:
        started = time.perf_counter()
        _run_threads(clients, lambda: worker(bar))
        seconds = time.perf_counter() - started
    return Phase("Triton alone", len(tiles), seconds)


def end_to_end(
    config: StackConfig, images: list[Sample], clients: int
) -> tuple[Phase, list[dict[str, float]]]:
    """Upload every image through the API from ``clients`` threads, wait for all results."""
    api = [InspectqClient(config.api_url, config.settings.api_key.get_secret_value())
           for _ in range(clients)]
    bodies = [s.png() for s in images]
    timings: list[dict[str, float]] = []
    failures: list[str] = []
    with tqdm(total=len(bodies), desc=f"end-to-end, {clients} clients", unit="img") as bar:
        started = time.perf_counter()

        def one(index: int) -> None:
            client = api[index % clients]
            job = client.wait_done(client.submit(bodies[index], line="bench")["id"])
            if job["status"] == "done":
                timings.append(job["result"]["timings"])
            else:
                failures.append(f"{job['id']}: {job.get('error')}")
            bar.update(1)

        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(one, range(len(bodies))))
        seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} jobs failed during the benchmark: {failures[:3]}")
    return Phase("end-to-end (API)", len(bodies), seconds), timings


def _run_threads(count: int, target: Callable[[], None]) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def report(triton: Phase, e2e: Phase, timings: list[dict[str, float]], model_line: str) -> str:
    lines = ["", "inspectq benchmark (256x256 images, one tile each; this machine)", ""]
    lines.append(f"  in-process model (TorchScript): {model_line}")
    for phase in (triton, e2e):
        lines.append(f"  {phase.name:<18} {phase.rate:8.1f} images/s "
                     f"({phase.images} images in {phase.seconds:.1f}s)")
    lines.append(f"  ratio end-to-end / Triton: {e2e.rate / triton.rate:.2f}")
    lines.append("")
    lines.append("  per-stage time per image (ms): mean / p50 / p95")
    for stage in STAGES:
        values = sorted(t[stage] for t in timings if stage in t)
        if not values:
            continue
        p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
        lines.append(f"    {stage[:-3]:<12} {statistics.fmean(values):8.1f} "
                     f"{statistics.median(values):8.1f} {p95:8.1f}")
    return "\n".join(lines)
