"""The task's stage orchestration, run in-process against real Redis, S3 and Triton."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
import tritonclient.grpc as grpcclient
from pydantic import SecretStr

from inspectq import keyspace
from inspectq.jobs import Status
from inspectq.keyspace import QUEUE, keys_for
from inspectq.queue import enqueue_inspection
from tests.workers.conftest import (
    CLOSED_PORT_URL,
    accepted_seconds_ago,
    png,
    slow_image,
    strip_with_scratch,
    submit,
    wait_for,
)
from tests.workers.triton_server import CLASSES, TritonProcess, fixture_sha256
from workers import deadletter
from workers.app import create_app
from workers.infer import TileOutputs, TritonModel
from workers.services import Services, build_services
from workers.tasks import RetryLater, inspect_job


def _inference_count(url: str) -> int:
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics("inspectq_seg", as_json=True)
    finally:
        client.close()
    return sum(int(m.get("inference_count", 0)) for m in stats["model_stats"])


def test_steel_strip_is_inspected_end_to_end(services: Services) -> None:
    job_id = submit(services, png(strip_with_scratch()))
    final = inspect_job(services, job_id)
    assert final is not None and final.status is Status.DONE, final
    result = final.result.model_dump(mode="json", by_alias=True)  # what a client reads
    assert result["decision"] == "REJECT" and result["score"] == pytest.approx(0.95)
    assert (result["width"], result["height"]) == (1600, 256)
    assert result["defects"] == [{
        "class": "scratch", "score": pytest.approx(0.95, abs=1e-3),
        "bbox": [1500, 10, 1540, 30], "area_px": 800,
        "area_ratio": pytest.approx(800 / (1600 * 256), abs=1e-6),
    }]
    assert result["model"] == {"name": "inspectq_seg", "version": "1",
                               "sha256": fixture_sha256(),
                               "classes": list(CLASSES)}
    assert result["thresholds"] == {"pass": 0.40, "reject": 0.65}
    assert set(result["timings"]) == {"queue_wait_ms", "s3_get_ms", "preprocess_ms",
                                      "triton_ms", "postprocess_ms", "record_ms", "total_ms",
                                      "ingest_ms"}
    assert result["timings"]["triton_ms"] > 0 and result["cache_hit"] is False
    # The model's optional out-of-domain score, max over tiles: a steel strip is in domain.
    assert result["ood_score"] == pytest.approx(0.25) and result["review_reasons"] == []
    mask = cv2.imdecode(np.frombuffer(services.store.get(final.mask), np.uint8),
                        cv2.IMREAD_UNCHANGED)
    assert mask.shape == (256, 1600) and (mask[10:30, 1500:1540] == 1).all()
    assert int(mask.sum()) == 800
    # The heatmap beside it: the stitched defect probability, 255 for 1.0.
    heatmap = cv2.imdecode(np.frombuffer(services.store.get(final.heatmap), np.uint8),
                           cv2.IMREAD_UNCHANGED)
    assert heatmap.shape == (164, 1024)  # scaled down to a long side of 1024 (x 0.64)
    assert heatmap[12, 970] == 242 and heatmap.max() == 242  # round(0.95 * 255)
    assert heatmap[100, 500] == 5  # the fixture model says 0.02 off the defect
    # No overlay yet: the API draws it on its first request.
    assert services.store.get(keys_for(job_id).overlay) is None
    # The outcome is durable: a flushed Redis gives the same result back from S3.
    services.redis.flushdb()
    assert services.jobs.get(job_id).result == final.result


def test_clean_image_passes_and_thresholds_come_from_the_job(services: Services) -> None:
    clean = np.random.default_rng(0).integers(100, 140, (300, 500, 3), dtype=np.uint8)
    passed = inspect_job(services, submit(services, png(clean)))
    assert passed.result.decision == "PASS" and passed.result.defects == []
    assert passed.result.quality.issues == []
    review = inspect_job(services, submit(services, png(strip_with_scratch(seed=3)),
                                          thresholds=(0.9, 0.99)))
    assert review.result.decision == "REVIEW"


def test_a_blank_frame_is_reviewed_and_a_cache_hit_reports_the_same_quality(
    services: Services,
) -> None:
    """An all-black frame scores low (the model sees nothing) and used to PASS."""
    data = png(np.zeros((256, 256, 3), np.uint8))
    first = inspect_job(services, submit(services, data))
    assert first.result.score < 0.40 and first.result.decision == "REVIEW"
    assert first.result.quality.issues == ["blank", "saturated"]
    assert first.result.quality.detail.startswith("blank: ")
    assert first.result.review_reasons == ["blank", "saturated"]
    second = inspect_job(services, submit(services, data))
    assert second.result.cache_hit is True and second.result.decision == "REVIEW"
    assert second.result.quality == first.result.quality


def test_an_out_of_domain_image_goes_to_a_person_whatever_its_score(
    services: Services,
) -> None:
    """The fixture model calls a mostly pure-green tile out of domain (ood_score 2.0): the
    image is REVIEWed with the reason, neither REJECTed for its scratch nor PASSed when it
    has none; a cache hit keeps the reason."""
    green = np.zeros((256, 1600, 3), np.uint8)
    green[..., 1] = 230
    scratched = green.copy()
    scratched[10:30, 1500:1540] = (255, 0, 0)
    for image, score in ((scratched, 0.95), (green, 0.05)):
        done = inspect_job(services, submit(services, png(image))).result
        assert done.score == pytest.approx(score)
        assert done.decision == "REVIEW" and done.ood_score == pytest.approx(2.0)
        # (the flat green frame also fails the quality checks, reasons that follow)
        assert done.review_reasons[0] == "out_of_domain"
    again = inspect_job(services, submit(services, png(scratched))).result
    assert again.cache_hit is True and again.decision == "REVIEW"
    assert again.review_reasons == ["out_of_domain"]
    # One green tile among in-domain ones is enough: the image's ood score is their max.
    mixed = strip_with_scratch()
    mixed[:, :256] = green[:, :256]
    assert inspect_job(services, submit(services, png(mixed))).result.decision == "REVIEW"


def test_the_focus_limit_is_a_setting_and_part_of_the_cached_answer(
    services: Services,
) -> None:
    """INSPECTQ_FOCUS_MIN_SHARPNESS: a defocused texture is out_of_focus (REVIEW) under the
    default and PASSes with the check off; the same bytes are inferred again, not answered
    from the cache with the other limit's quality."""
    cells = np.random.default_rng(5).integers(60, 200, (64, 64), np.uint8)
    texture = cv2.resize(cells, (512, 512), interpolation=cv2.INTER_NEAREST)
    data = png(cv2.cvtColor(cv2.GaussianBlur(texture, (0, 0), 8), cv2.COLOR_GRAY2RGB))
    strict = inspect_job(services, submit(services, data)).result
    assert strict.quality.issues == ["out_of_focus"] and strict.decision == "REVIEW"
    relaxed = replace(services, settings=services.settings.model_copy(
        update={"focus_min_sharpness": 0.0}))
    lenient = inspect_job(relaxed, submit(relaxed, data)).result
    assert lenient.cache_hit is False
    assert lenient.quality.issues == [] and lenient.decision == "PASS"


def test_a_sideways_camera_jpeg_is_inspected_upright(services: Services) -> None:
    """EXIF orientation 6 (camera turned): the 320x160 raster is a 160x320 part; size, box
    and mask are in upright pixels."""
    import io

    from PIL import Image

    stored = np.full((160, 320, 3), 90, np.uint8)
    stored[10:30, 20:60] = (255, 0, 0)  # the fixture model's scratch, stored top left
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", exif=exif, quality=100, subsampling=0)
    job_id = submit(services, buffer.getvalue())
    final = inspect_job(services, job_id)
    result = final.result
    assert (result.width, result.height) == (160, 320)
    assert result.decision == "REJECT"
    [scratch] = result.defects
    assert scratch.bbox == (130, 20, 150, 60)  # rows 10:30 of the raster, turned clockwise
    mask = cv2.imdecode(np.frombuffer(services.store.get(final.mask), np.uint8),
                        cv2.IMREAD_UNCHANGED)
    assert mask.shape == (320, 160) and (mask[20:60, 130:150] == 1).all()


def test_12_bit_data_in_a_16_bit_png_is_scaled_by_its_real_depth(services: Services) -> None:
    """Scaled by 65535 the red scratch was dark red (16 of 255) and the strip PASSed; scaled
    by 4095 it is the same image as in 8 bits."""
    deep = ((strip_with_scratch(seed=5).astype(np.uint32) * 4095 + 127) // 255).astype(np.uint16)
    ok, data = cv2.imencode(".png", cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    assert ok and deep.max() == 4095
    result = inspect_job(services, submit(services, data.tobytes())).result
    assert result.decision == "REJECT" and result.score == pytest.approx(0.95)
    assert [d.bbox for d in result.defects] == [(1500, 10, 1540, 30)]


def test_same_bytes_same_model_are_inferred_once(services: Services) -> None:
    data = png(strip_with_scratch(seed=7))
    first = inspect_job(services, submit(services, data))
    count_after_first = _inference_count(services.settings.triton_url)
    second_id = submit(services, data, thresholds=(0.96, 0.99))
    second = inspect_job(services, second_id)
    assert _inference_count(services.settings.triton_url) == count_after_first
    assert second.result.cache_hit is True and first.result.cache_hit is False
    assert second.result.defects == first.result.defects
    # The decision is made again from this job's own thresholds.
    assert first.result.decision == "REJECT" and second.result.decision == "PASS"
    assert second.mask != first.mask  # each job (each run) has its own copy
    assert services.store.get(second.mask) == services.store.get(first.mask)
    assert second.heatmap != first.heatmap
    assert services.store.get(second.heatmap) == services.store.get(first.heatmap) is not None


def test_undecodable_image_fails_at_once(services: Services) -> None:
    final = inspect_job(services, submit(services, b"GIF89a this is not really an image"))
    assert final.status is Status.FAILED and final.error.code == "undecodable_image"


def test_triton_down_retries_then_fails(services: Services) -> None:
    job_id = submit(services, png(strip_with_scratch(seed=11)))
    down = build_services(services.settings.model_copy(update={"triton_url": CLOSED_PORT_URL}))
    with pytest.raises(RetryLater):
        inspect_job(down, job_id, retries=0)
    record = services.jobs.get(job_id)
    assert record.status is Status.RETRYING
    assert record.retry.attempt == 1 and record.retry.reason == "triton_unavailable"
    assert 0 < record.retry.next_attempt_in_s <= services.settings.retry_backoff_max_s
    final = inspect_job(down, job_id, retries=services.settings.max_retries)
    assert final.status is Status.FAILED and final.error.code == "triton_unavailable"


def test_triton_client_recovers_without_restart(services: Services) -> None:
    """The same TritonModel that failed against a dead address works once it is back."""
    model = services.model
    real_url = model.url
    model.url = CLOSED_PORT_URL
    job_id = submit(services, png(strip_with_scratch(seed=12)))
    with pytest.raises(RetryLater):
        inspect_job(services, job_id)
    model.url = real_url  # "Triton is back": same object, no restart
    assert inspect_job(services, job_id, retries=1).status is Status.DONE


def test_storage_down_retries_then_fails(services: Services) -> None:
    job_id = submit(services, png(strip_with_scratch(seed=13)))
    down = build_services(services.settings.model_copy(update={
        "s3_endpoint_url": "http://127.0.0.1:9", "s3_max_attempts": 1,
        "s3_connect_timeout_s": 0.5}))
    with pytest.raises(RetryLater):
        inspect_job(down, job_id, retries=0)
    assert services.jobs.get(job_id).retry.reason == "storage_unavailable"
    # The last retry gives up: the image is still unreachable, the record store answers
    # (with both down, the failure itself could not be written, and the message waits).
    flaky = replace(down, redis=services.redis, jobs=services.jobs)
    final = inspect_job(flaky, job_id, retries=services.settings.max_retries)
    assert final.status is Status.FAILED and final.error.code == "storage_unavailable"
    assert "gave up after" in final.error.message


def test_unexpected_error_fails_with_internal_error(services: Services) -> None:
    job_id = submit(services, png(strip_with_scratch(seed=14)))
    wrong_key = build_services(services.settings.model_copy(update={
        "s3_secret_access_key": SecretStr("wrong")}))
    # records readable; the image GET is refused with 403
    broken = replace(wrong_key, redis=services.redis, jobs=services.jobs)
    final = inspect_job(broken, job_id)
    assert final.status is Status.FAILED and final.error.code == "internal_error"
    assert final.error.message.startswith("ClientError")


def test_poison_message_is_dead_lettered_and_replayed(
    services: Services, redis_client: redis.Redis
) -> None:
    job_id = submit(services, png(strip_with_scratch(seed=15)))
    max_deliveries = services.settings.max_deliveries
    # Each delivery counts; a worker that died mid-job never got to record anything.
    for _ in range(max_deliveries):
        redis_client.incr(f"inspectq:deliveries:{job_id}:0")
    final = inspect_job(services, job_id)
    assert final.status is Status.FAILED and final.error.code == "poison_message"
    assert [e["id"] for e in deadletter.list_dead(services)] == [job_id]
    assert redis_client.lrange(keyspace.DEADLETTER_LIST, 0, -1) == [job_id.encode()]

    app = create_app(services.settings)
    assert deadletter.replay(services, app, job_id) is True
    assert services.jobs.get(job_id).status is Status.QUEUED
    assert job_id in services.jobs.pending_job_ids() and not deadletter.list_dead(services)
    assert job_id.encode() in b"".join(redis_client.lrange(QUEUE, 0, -1))
    assert inspect_job(services, job_id).status is Status.DONE
    assert deadletter.replay(services, app, job_id) is False  # done jobs never reopen


def test_a_delivery_after_the_job_ended_is_ignored(services: Services) -> None:
    job_id = submit(services, png(strip_with_scratch(seed=16)))
    first = inspect_job(services, job_id)
    again = inspect_job(services, job_id)  # a redelivered message after the job ended
    assert again.result == first.result and again.updated_at == first.updated_at


class ModelThatFindsNothing(TritonModel):
    """Another model version, served between two deliveries of one job: it finds nothing."""

    def infer(self, tiles: np.ndarray) -> TileOutputs:
        count, _, height, width = tiles.shape
        return TileOutputs(class_map=np.zeros((count, height, width), np.uint8),
                           defect_prob=np.zeros((count, height, width), np.float32),
                           image_score=np.zeros(count, np.float32), info=self.current_info())


def test_two_runs_in_flight_together_leave_one_consistent_outcome(
    services: Services, triton: TritonProcess
) -> None:
    """A redelivery racing the first run, with a model switch between them: the run that
    records first wins, and the mask clients read is that run's, not the last one written."""
    import threading

    image = slow_image(seed=18)  # the fixture model takes 3 s on it...
    image[100:120, 60:200] = (255, 0, 0)  # ...and finds a scratch
    job_id = submit(services, png(image))
    first_run: list[object] = []
    started = triton.slow_requests()
    slow = threading.Thread(target=lambda: first_run.append(inspect_job(services, job_id)))
    slow.start()
    wait_for(lambda: triton.slow_requests() > started, 20, "run 1 inside Triton")
    switched = replace(services, model=ModelThatFindsNothing(
        services.settings.triton_url, services.settings.triton_model, 16, 10))
    second = inspect_job(switched, job_id)  # run 2 records first
    slow.join(timeout=30)
    [first] = first_run
    assert second.result.defects == [] and first == second  # one outcome: run 2's
    recorded = services.jobs.get(job_id)
    assert recorded.mask == second.mask
    mask = cv2.imdecode(np.frombuffer(services.store.get(recorded.mask), np.uint8),
                        cv2.IMREAD_UNCHANGED)
    assert not mask.any()  # run 1 wrote its scratch mask too, but not under this key


def test_malformed_job_id_is_dropped_without_touching_storage(services: Services) -> None:
    assert inspect_job(services, "../../etc/passwd") is None
    assert inspect_job(services, "j_" + "x" * 22) is None  # well-formed but unknown


def test_one_tenant_learns_nothing_from_another_tenants_cache(services: Services) -> None:
    """The same bytes from another tenant are inferred afresh: no cache hit, no shared mask,
    no faster answer that would reveal the first tenant's image."""
    data = png(strip_with_scratch(seed=8))
    first = inspect_job(services, submit(services, data, tenant="acme"))
    count_after_first = _inference_count(services.settings.triton_url)
    other = inspect_job(services, submit(services, data, tenant="globex"))
    assert first.result.cache_hit is False and other.result.cache_hit is False
    assert _inference_count(services.settings.triton_url) > count_after_first
    again = inspect_job(services, submit(services, data, tenant="acme"))
    assert again.result.cache_hit is True  # within one tenant the cache still works


def test_ops_commands_list_replay_and_reconcile(
    services: Services, redis_client: redis.Redis
) -> None:
    import json
    import subprocess
    import sys

    from tests.conftest import settings_env

    env = settings_env(services.settings)
    job_id = submit(services, png(strip_with_scratch(seed=17)))
    for _ in range(services.settings.max_deliveries):
        redis_client.incr(keyspace.deliveries(job_id, 0))
    inspect_job(services, job_id)

    def run(*args: str) -> list[dict]:
        done = subprocess.run([str(Path(sys.executable).with_name("inspectq")), *args],
                              env=env, capture_output=True, text=True, timeout=60, check=True)
        return [json.loads(line) for line in done.stdout.splitlines()]

    [entry] = run("deadletter", "list")
    assert entry["id"] == job_id and entry["deliveries"] == 4
    assert run("deadletter", "replay", "--all") == [{"id": job_id, "replayed": True}]
    accepted_seconds_ago(services, job_id, 60)  # past the reconciler's enqueue grace
    redis_client.flushdb()  # the replayed message and the cache are lost...
    [report] = run("reconcile")
    assert report["requeued_ids"] == [job_id]  # ...and the reconciler puts the job back
    assert redis_client.llen(QUEUE) == 1


def test_reconciler_requeues_stale_jobs_whose_message_is_gone(
    services: Services, redis_client: redis.Redis
) -> None:
    """An ingest that recorded a job but failed to enqueue it leaves a `queued` record in
    Redis and no message: once it is older than any legitimate wait, it is requeued."""
    from workers.reconcile import reconcile

    app = create_app(services.settings)
    lost, waiting, fresh = (submit(services, png(strip_with_scratch(seed=s)))
                            for s in (41, 42, 43))
    enqueue_inspection(app, waiting)
    for job_id in (lost, waiting):  # age both records past the stale limit
        aged = services.jobs.get(job_id).model_copy(update={"updated_at": "2020-01-01T00:00:00Z"})
        redis_client.set(f"inspectq:job:{job_id}", aged.to_json())
    report = reconcile(services, app)
    assert report.requeued == [lost] and report.live == 2  # waiting: in the queue; fresh
    assert reconcile(services, app).requeued == []  # now in the queue, and guarded
    from workers.reconcile import job_ids_in_broker

    assert job_ids_in_broker(redis_client) == {lost, waiting}
    assert fresh not in report.requeued


def test_a_polled_job_whose_message_was_flushed_is_requeued_at_once(
    services: Services, redis_client: redis.Redis
) -> None:
    """After a Redis flush a polling client puts the record back as `queued`; that must not
    make the lost job look alive: the broker's own state decides."""
    from workers.reconcile import reconcile

    app = create_app(services.settings)
    polled, unwatched = (submit(services, png(strip_with_scratch(seed=s))) for s in (44, 45))
    for job_id in (polled, unwatched):
        accepted_seconds_ago(services, job_id, 60)  # well inside the old 660 s window
        enqueue_inspection(app, job_id)
    redis_client.flushdb()  # the queue and the cache are gone
    assert services.jobs.get(polled).status is Status.QUEUED  # a client polls: cached again
    report = reconcile(services, app)
    assert sorted(report.requeued) == sorted([polled, unwatched])
    assert reconcile(services, app).requeued == []  # in the queue now, and guarded


def test_an_unreadable_pending_record_is_quarantined_and_the_sweep_goes_on(
    services: Services, redis_client: redis.Redis
) -> None:
    from workers.reconcile import reconcile

    app = create_app(services.settings)
    lost = submit(services, png(strip_with_scratch(seed=46)))
    accepted_seconds_ago(services, lost, 60)
    poisoned = submit(services, png(strip_with_scratch(seed=47)))
    bad = b'{"id": "' + poisoned.encode() + b'", "metadata": {"a": ' + b"[" * 300 + b"]" * 300
    services.store.put(keyspace.pending(poisoned), bad + b"}}")
    redis_client.flushdb()
    report = reconcile(services, app)
    assert report.requeued == [lost] and report.unreadable == 1
    assert services.store.get(keyspace.quarantined(keyspace.pending(poisoned))) is not None
    assert poisoned not in services.jobs.pending_job_ids()
    assert int(redis_client.get(keyspace.QUARANTINED_COUNT)) == 1
    assert reconcile(services, app).unreadable == 0  # moved aside: not met again


def test_hard_time_limit_records_timeout_but_outages_wait_for_redelivery(
    services: Services,
) -> None:
    """Celery calls the task's on_failure in the parent process when the hard time limit
    kills a child; the job must end `failed`, not stay `processing` with its message acked."""
    from celery.exceptions import TimeLimitExceeded

    from inspectq.queue import INSPECT_TASK

    task = create_app(services.settings).tasks[INSPECT_TASK]
    outage_id = submit(services, png(strip_with_scratch(seed=51)))
    task.on_failure(redis.ConnectionError("down"), "t1", (outage_id,), {}, None)
    assert services.jobs.get(outage_id).status is Status.QUEUED
    killed_id = submit(services, png(strip_with_scratch(seed=52)))
    task.on_failure(TimeLimitExceeded(150), "t2", (killed_id,), {}, None)
    final = services.jobs.get(killed_id)
    assert final.status is Status.FAILED and final.error.code == "timeout"


def test_reconciler_clears_the_pending_entry_of_a_finished_job(
    services: Services, redis_client: redis.Redis
) -> None:
    """A worker that wrote the outcome but died before clearing ``pending/<id>``: the
    reconciler clears it and neither requeues the job nor touches its outcome."""
    from inspectq.keyspace import PENDING_PREFIX
    from workers.reconcile import reconcile

    job_id = submit(services, png(strip_with_scratch(seed=44)))
    done = inspect_job(services, job_id)
    services.store.put_json(PENDING_PREFIX + job_id, {"left": "by a crash"})
    assert job_id in services.jobs.pending_job_ids()
    report = reconcile(services, create_app(services.settings))
    assert report.closed == [job_id] and report.requeued == []
    assert job_id not in services.jobs.pending_job_ids()
    assert services.jobs.get(job_id).result == done.result
