"""Throughput, side by side in one run: the model in-process, Triton alone, then the whole
pipeline through the API, all on 256x256 images (one tile each), so ``end-to-end / Triton``
says how much of Triton's capacity the pipeline delivers to users. The per-stage split comes from
the ``timings`` each job reports; the CPU census (kernel counters per service) says where the
machine's cores went during the end-to-end run.
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psutil
from tqdm import tqdm

from devstack import procs
from devstack.client import InspectqClient
from devstack.samples import Sample
from devstack.stack import REPO, StackConfig
from triton_models.synth import render

STAGES = ("ingest_ms", "queue_wait_ms", "s3_get_ms", "preprocess_ms", "triton_ms",
          "postprocess_ms", "record_ms", "total_ms")


@dataclass(frozen=True)
class Phase:
    images: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per service

    @property
    def rate(self) -> float:
        return self.images / self.seconds


#: Services whose CPU time the census counts (each with its children: Triton's Python-backend
#: stub, the worker's pool, gunicorn's workers; the indexer writes the results index).
CENSUS = ("triton", "worker", "api", "indexer", "s3", "redis")


class CpuCensus:
    """CPU seconds used by each service of the stack (and by this process: the benchmark's
    clients) between ``start()`` and ``stop()``, read from the kernel's per-process counters.
    A service not started by the dev stack (the machine's own Redis) is found by name."""

    def __init__(self, config: StackConfig) -> None:
        self._roots: dict[str, psutil.Process] = {}
        for name in CENSUS:
            pid = procs.running_pid(config.dirs, name)
            if pid is not None:
                self._roots[name] = psutil.Process(pid)
            elif name == "redis":
                found = [p for p in psutil.process_iter(["name"])
                         if p.info["name"] == "redis-server"]
                if found:
                    self._roots[name] = found[0]
        self._roots["bench clients"] = psutil.Process()
        self._before: dict[str, float] = {}

    def _seconds(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for name, root in self._roots.items():
            tree = [root] if name == "bench clients" else [root, *root.children(recursive=True)]
            total = 0.0
            for process in tree:
                try:
                    times = process.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    continue
            used[name] = total
        return used

    def start(self) -> None:
        self._before = self._seconds()

    def stop(self) -> dict[str, float]:
        after = self._seconds()
        return {name: after[name] - self._before.get(name, 0.0) for name in after}


def bench_images(count: int) -> list[Sample]:
    """Images never sent before (a fresh seed each run, a third of them clean), so the
    result cache, which keys on the image bytes, never short-cuts inference."""
    seed = secrets.randbits(31)
    kinds = (None, "scratch", "pit", None, "crack", "stain")
    out = []
    for index in tqdm(range(count), desc="drawing images", unit="img", leave=False):
        kind = kinds[index % len(kinds)]
        out.append(Sample(f"b{index}", render(seed, index, kind)[0], kind, None))
    return out


def model_and_triton(config: StackConfig, clients: int, seconds: float) -> dict[str, Any]:
    """In-process TorchScript (batch 8) and Triton alone with ``clients`` one-image clients:
    the model engineer's benchmark, run in the model env against the stack's Triton.
    """
    proc = subprocess.run(
        [str(config.model_python), "-m", "triton_models.bench", "--grpc-url",
         config.settings.triton_url, "--clients", str(clients), "--seconds", f"{seconds:g}"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"triton_models.bench failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def end_to_end(
    config: StackConfig, images: list[Sample], clients: int, census: CpuCensus | None = None
) -> tuple[Phase, list[dict[str, float]]]:
    """Upload every image through the API from ``clients`` threads, wait for all results;
    ``census`` (if given) counts CPU time over exactly that span."""
    api = [InspectqClient(config.api_url, config.settings.api_key.get_secret_value())
           for _ in range(clients)]
    bodies = [s.png() for s in images]
    timings: list[dict[str, float]] = []
    failures: list[str] = []
    with tqdm(total=len(bodies), desc=f"end-to-end, {clients} clients", unit="img") as bar:
        if census is not None:
            census.start()
        started = time.perf_counter()

        def one(index: int) -> None:
            client = api[index % clients]
            job = client.wait_done(client.submit(bodies[index], line="bench")["id"])
            if job["status"] == "done" and job["result"].get("cache_hit"):
                failures.append(f"{job['id']}: a cache hit, not a measurement")
            elif job["status"] == "done":
                timings.append(job["result"]["timings"])
            else:
                failures.append(f"{job['id']}: {job.get('error')}")
            bar.update(1)

        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(one, range(len(bodies))))
        seconds = time.perf_counter() - started
        cpu = census.stop() if census is not None else {}
    if failures:
        raise RuntimeError(f"{len(failures)} jobs failed during the benchmark: {failures[:3]}")
    return Phase(len(bodies), seconds, cpu), timings


def report(model: dict[str, Any], e2e: Phase, timings: list[dict[str, float]]) -> str:
    in_process = next(v for k, v in model.items() if k.startswith("in_process_"))
    triton_key = next(k for k in model if k.startswith("triton_") and k.endswith("_per_s"))
    triton = model[triton_key]
    lines = ["", "inspectq benchmark (256x256 images, one tile each; this machine)", ""]
    lines.append(f"  in-process model, TorchScript b8  {in_process:8.1f} images/s")
    lines.append(f"  Triton alone ({triton_key.split('_')[1]} gRPC clients x 1)  {triton:8.1f} "
                 f"images/s (mean batch formed {model['triton_mean_batch_formed']})")
    lines.append(f"  end-to-end through the API        {e2e.rate:8.1f} images/s "
                 f"({e2e.images} images, all done, in {e2e.seconds:.1f}s)")
    lines.append(f"  ratio end-to-end / Triton: {e2e.rate / triton:.2f}")
    lines.append("")
    lines.append("  per-stage time per image (ms): mean / p50 / p95")
    for stage in STAGES:
        values = sorted(t[stage] for t in timings if stage in t)
        if not values:
            continue
        p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
        lines.append(f"    {stage[:-3]:<12} {statistics.fmean(values):8.1f} "
                     f"{statistics.median(values):8.1f} {p95:8.1f}")
    if e2e.cpu:
        cores = psutil.cpu_count() or 1
        lines.append("")
        lines.append(f"  CPU time per image during the end-to-end run (ms; {cores} cores "
                     f"x {e2e.seconds:.1f}s = {cores * e2e.seconds * 1000 / e2e.images:.1f}"
                     " ms per image available)")
        for name, seconds in sorted(e2e.cpu.items(), key=lambda item: -item[1]):
            lines.append(f"    {name:<14} {seconds * 1000 / e2e.images:8.1f}")
        lines.append(f"    {'total':<14} {sum(e2e.cpu.values()) * 1000 / e2e.images:8.1f}")
    return "\n".join(lines)
