"""The real CPU Triton server (gRPC) returns what in-process TorchScript returns, at batch 1
and at a batch that dynamic batching formed from concurrent single-image requests.

Tolerance: image_score within 1e-4 and defect_prob within 2e-3 absolute (one fp16 step near
1.0 is 4.9e-4); class_map equal on at least 99.99% of the pixels (an arg-max may flip where
two classes tie within float rounding). The server and in-process runs use the same
TorchScript file, so the differences measured here are 0 or float rounding from batch shape.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from devstack.ports import free_port
from triton_models import serve
from triton_models.repository import MODEL_NAME, Repositories

REPOS = Repositories()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Our own server on free ports; yields its gRPC address. Triton exits when it cannot
    bind a port, so "ready and our process still alive" means the answers are ours, not a
    stray server's that happened to hold the ports."""
    http, grpc, metrics = (free_port() for _ in range(3))
    log_path = tmp_path_factory.mktemp("triton") / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "triton_models.serve", "--http-port", str(http),
             "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        serve.wait_ready(http, timeout=120)
        assert process.poll() is None, "another server answered on our ports"
    except (TimeoutError, AssertionError) as error:
        process.kill()
        pytest.fail(f"{error}; tritonserver log:\n{log_path.read_text()[-3000:]}")
    yield f"127.0.0.1:{grpc}"
    process.terminate()
    process.wait(30)


@pytest.fixture(scope="module")
def local_model() -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(REPOS.model_file(REPOS.served_version()))).eval()


def infer(client: grpcclient.InferenceServerClient, images: np.ndarray) -> list[np.ndarray]:
    tensor = grpcclient.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    result = client.infer(MODEL_NAME, [tensor])
    names = [o.name for o in client.get_model_config(MODEL_NAME).config.output]
    return [result.as_numpy(name) for name in names]


def assert_same(remote: list[np.ndarray], local: list[np.ndarray]) -> None:
    """The first three outputs, and ood_score when the served version has it."""
    assert len(remote) == len(local)
    class_map, prob, score = remote[:3]
    assert class_map.dtype == np.uint8 and prob.dtype == np.float16 and score.dtype == np.float32
    assert (class_map == local[0]).mean() >= 0.9999
    assert np.abs(prob.astype(np.float32) - local[1].astype(np.float32)).max() <= 2e-3
    assert np.abs(score - local[2]).max() <= 1e-4
    if len(remote) == 4:
        assert remote[3].dtype == np.float32 and remote[3].shape == (len(score), 1)
        assert np.abs(remote[3] - local[3]).max() <= 1e-3 * max(1.0, float(local[3].max()))


def images(count: int, seed: int) -> np.ndarray:
    from triton_models import synth

    kinds = [None, "scratch", "pit", "crack", "stain"]
    return np.stack([synth.render(seed, i, kinds[i % 5])[0].transpose(2, 0, 1)
                     for i in range(count)])


def run_local(model: torch.jit.ScriptModule, batch: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        return [t.numpy() for t in model(torch.from_numpy(batch))]


def test_server_reports_version_sha_and_classes(server: str) -> None:
    client = grpcclient.InferenceServerClient(server)
    config = client.get_model_config(MODEL_NAME).config
    version = REPOS.served_version()
    from triton_models.verify import sha256_of

    assert config.parameters[f"sha256_v{version}"].string_value == sha256_of(
        REPOS.model_file(version))
    assert config.parameters["classes"].string_value == "background,scratch,pit,crack,stain"
    assert client.is_model_ready(MODEL_NAME, str(version))


def test_batch_1_matches_in_process(server: str, local_model: torch.jit.ScriptModule) -> None:
    client = grpcclient.InferenceServerClient(server)
    batch = images(3, seed=77)
    for i in range(len(batch)):
        assert_same(infer(client, batch[i : i + 1]), run_local(local_model, batch[i : i + 1]))


def test_dynamically_batched_requests_match(server: str,
                                            local_model: torch.jit.ScriptModule) -> None:
    """Single-image requests that queue up behind a busy model instance are batched.

    A full batch (max_batch_size, which can join no other request) occupies the server's
    one instance for over a second on this CPU; the single-image requests sent meanwhile
    wait in the queue, and the dynamic batcher serves them in batches. The margin is that
    whole execution, not the 2 ms queue delay of requests racing each other.
    """
    batch = images(8, seed=78)
    client = grpcclient.InferenceServerClient(server)
    config = client.get_model_config(MODEL_NAME).config
    before = client.get_inference_statistics(MODEL_NAME).model_stats[0]
    blocker_done = threading.Event()
    blocker = np.repeat(batch[:1], config.max_batch_size, axis=0)
    tensor = grpcclient.InferInput("images", list(blocker.shape), "UINT8")
    tensor.set_data_from_numpy(blocker)
    client.async_infer(MODEL_NAME, [tensor], callback=lambda **_: blocker_done.set())
    results: dict[int, list[np.ndarray]] = {}

    def send(i: int) -> None:
        results[i] = infer(grpcclient.InferenceServerClient(server), batch[i : i + 1])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(batch))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert blocker_done.wait(60)
    after = client.get_inference_statistics(MODEL_NAME).model_stats[0]
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count - 1  # less the blocker
    assert inferences == len(batch) + config.max_batch_size
    assert executions < len(batch), "dynamic batching formed no batch"
    local = run_local(local_model, batch)
    for i in range(len(batch)):
        assert_same(results[i], [out[i : i + 1] for out in local])
