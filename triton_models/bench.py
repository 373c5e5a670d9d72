"""Throughput of the served model: in-process TorchScript and through the real Triton server.

    .venv-model/bin/python -m triton_models.bench [--clients 4] [--seconds 10]

Prints in-process images/s at batch 8 (256x256), then starts the CPU Triton server on
spare ports (or uses --grpc-url) and prints images/s with several concurrent gRPC clients
each sending one image per request, plus the mean batch size dynamic batching formed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from triton_models.repository import MODEL_NAME, Repositories
from triton_models.serve import wait_ready


def images_per_second(model: Any, batch: int, runs: int) -> float:
    """In-process throughput of a loaded TorchScript model on random uint8 images."""
    import torch

    images = torch.randint(0, 256, (batch, 3, 256, 256), dtype=torch.uint8)
    with torch.inference_mode():
        for _ in range(3):  # TorchScript profiles and optimizes on the first calls
            model(images)
        start = time.perf_counter()
        for _ in range(runs):
            model(images)
    return batch * runs / (time.perf_counter() - start)


def in_process(model_path: Path, batch: int, runs: int, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.jit.load(str(model_path), map_location="cpu").eval()
    return images_per_second(model, batch, runs)


def triton_clients(url: str, clients: int, seconds: float, batch: int) -> dict[str, float]:
    import tritonclient.grpc as grpcclient

    def stats() -> tuple[int, int]:
        reply = grpcclient.InferenceServerClient(url).get_inference_statistics(MODEL_NAME)
        s = reply.model_stats[0]
        return s.inference_count, s.execution_count

    before = stats()
    done = [0] * clients
    deadline = time.monotonic() + seconds

    def worker(i: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        data = np.random.default_rng(i).integers(0, 256, (batch, 3, 256, 256), dtype=np.uint8)
        tensor = grpcclient.InferInput("images", list(data.shape), "UINT8")
        tensor.set_data_from_numpy(data)
        while time.monotonic() < deadline:
            client.infer(MODEL_NAME, [tensor])
            done[i] += batch

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    after = stats()
    executions = max(after[1] - before[1], 1)
    return {"images_per_s": sum(done) / elapsed,
            "mean_batch_formed": (after[0] - before[0]) / executions}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--client-batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--grpc-url", default=None,
                        help="use a running server (host:port) instead of starting one")
    parser.add_argument("--ports", default="18100,18101,18102", help="http,grpc,metrics")
    args = parser.parse_args(argv)
    repos = Repositories()
    model_path = repos.model_file(repos.served_version())
    result: dict[str, object] = {"model": str(model_path)}
    rate = in_process(model_path, args.batch, args.runs, args.threads)
    result[f"in_process_b{args.batch}_images_per_s"] = round(rate, 1)
    print(f"in-process TorchScript, batch {args.batch}, 256x256: {rate:.1f} images/s", flush=True)
    server = None
    url = args.grpc_url
    if url is None:
        http, grpc, metrics = args.ports.split(",")
        server = subprocess.Popen(
            [sys.executable, "-m", "triton_models.serve", "--http-port", http, "--grpc-port",
             grpc, "--metrics-port", metrics], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        url = f"127.0.0.1:{grpc}"
        wait_ready(int(http))
    try:
        triton = triton_clients(url, args.clients, args.seconds, args.client_batch)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    result[f"triton_{args.clients}_clients_x_b{args.client_batch}_images_per_s"] = round(
        triton["images_per_s"], 1)
    result["triton_mean_batch_formed"] = round(triton["mean_batch_formed"], 2)
    print(f"Triton gRPC, {args.clients} clients x batch {args.client_batch}: "
          f"{triton['images_per_s']:.1f} images/s (mean batch formed "
          f"{triton['mean_batch_formed']:.2f})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
