"""The shared core against a real S3 server (SeaweedFS) and the local Redis."""

from __future__ import annotations

import pytest
import redis
from pydantic import SecretStr

from inspectq.config import Settings
from inspectq.jobs import ImageRef, JobError, JobRecord, JobStore, Status, new_job_id, utc_now
from inspectq.keyspace import keys_for
from inspectq.result import Decision, InspectionResult, ModelInfo, Thresholds, Timings
from inspectq.storage import ObjectExists, ObjectStore, StorageUnavailable
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY

REDIS_DB = 8


@pytest.fixture
def settings(s3_endpoint: str) -> Settings:
    return Settings(
        redis_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
        s3_endpoint_url=s3_endpoint,
        s3_bucket="core-tests",
        s3_access_key_id=TEST_ACCESS_KEY,
        s3_secret_access_key=TEST_SECRET_KEY,
    )


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    object_store = ObjectStore(settings)
    object_store.ensure_bucket()
    return object_store


def _record(job_id: str) -> JobRecord:
    now = utc_now()
    return JobRecord(
        id=job_id,
        tenant="default",
        status=Status.QUEUED,
        created_at=now,
        updated_at=now,
        enqueued_at=0.0,
        line="line-1",
        thresholds={"pass": 0.4, "reject": 0.65},
        image=ImageRef(key=keys_for(job_id).image, sha256="0" * 64, bytes=3, content_type="x"),
    )


def a_result(score: float = 0.1) -> InspectionResult:
    """A complete result as a worker would record it."""
    return InspectionResult(
        decision=Decision.PASS, score=score, defects=[], width=64, height=48,
        model=ModelInfo(name="inspectq_seg", version="1", sha256="f" * 64,
                        classes=("background", "scratch")),
        thresholds=Thresholds(pass_threshold=0.4, reject_threshold=0.65), timings=Timings(),
        cache_hit=False,
    )


def test_wrong_secret_is_refused(settings: Settings, store: ObjectStore) -> None:
    """SeaweedFS checks signatures: a client with a wrong secret cannot read the bucket."""
    bad = ObjectStore(settings.model_copy(update={"s3_secret_access_key": SecretStr("wrong")}))
    with pytest.raises(Exception) as caught:
        bad.ping()
    assert "403" in str(caught.value) or "Forbidden" in str(caught.value)


def test_conditional_put_first_writer_wins(store: ObjectStore) -> None:
    key = f"tests/{new_job_id()}"
    store.put(key, b"first", only_if_new=True)
    with pytest.raises(ObjectExists):
        store.put(key, b"second", only_if_new=True)
    assert store.get(key) == b"first"
    assert store.get(key + "-missing") is None


def test_delete_many_sweeps_past_the_per_request_limit(store: ObjectStore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    keys = [f"sweep/{index:05d}" for index in range(1003)]  # two DeleteObjects requests
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: store.put(key, b"x"), keys))
    store.put("sweep-keep", b"kept")
    store.delete_many([*keys, "sweep/never-written"])
    assert store.list_keys("sweep/") == []
    assert store.get("sweep-keep") == b"kept"


def test_unreachable_store_raises_storage_unavailable(settings: Settings) -> None:
    dead = ObjectStore(settings.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:9"}))
    with pytest.raises(StorageUnavailable):
        dead.get("anything")


def test_job_outcome_survives_redis_flush_and_first_outcome_wins(
    store: ObjectStore, redis_client: redis.Redis, settings: Settings
) -> None:
    jobs = JobStore(settings, store, redis_client)
    job_id = new_job_id()
    jobs.create(_record(job_id))
    assert job_id in jobs.pending_job_ids()
    jobs.update(job_id, status=Status.PROCESSING)
    assert jobs.get(job_id).status is Status.PROCESSING

    first = jobs.finish(job_id, result=a_result())
    second = jobs.finish(job_id, error=JobError(code="late", message="a redelivery"))
    assert first.status is Status.DONE
    assert second.status is Status.DONE and second.result == a_result()
    # Finishing leaves the pending entry for the reconciler's batched sweep.
    assert job_id in jobs.pending_job_ids()
    jobs.clear_pending([job_id])
    assert job_id not in jobs.pending_job_ids()

    redis_client.flushdb()
    recovered = jobs.get(job_id)
    assert recovered is not None and recovered.result == a_result()
    # A terminal job never moves back to a transient state.
    assert jobs.update(job_id, status=Status.PROCESSING).status is Status.DONE


def _subscribers(redis_client: redis.Redis) -> list[dict]:
    """Pub/sub connections on this test's database (other stacks may share the server)."""
    return [client for client in redis_client.client_list(_type="pubsub")
            if client["db"] == str(REDIS_DB)]


def test_wait_returns_when_the_job_ends(
    store: ObjectStore, redis_client: redis.Redis, settings: Settings
) -> None:
    import threading
    import time

    jobs = JobStore(settings, store, redis_client)
    subscribed_before = len(_subscribers(redis_client))
    job_ids = [new_job_id() for _ in range(6)]
    for job_id in job_ids:
        jobs.create(_record(job_id))
    ended: dict[str, float] = {}

    def waiter(job_id: str) -> None:
        record = jobs.wait(job_id, timeout_s=20)
        assert record is not None and record.status is Status.DONE
        ended[job_id] = time.monotonic()

    threads = [threading.Thread(target=waiter, args=(job_id,)) for job_id in job_ids]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    finished_at = {}
    for job_id in job_ids:
        jobs.finish(job_id, result=a_result())
        finished_at[job_id] = time.monotonic()
    for thread in threads:
        thread.join(15)
    # Woken by the ending itself, well before the safety re-read (WAIT_RECHECK_S).
    assert all(ended[job_id] - finished_at[job_id] < 1.0 for job_id in job_ids), ended
    # Six waiters, one subscription for the process.
    assert len(_subscribers(redis_client)) == subscribed_before + 1
    assert jobs.wait(new_job_id(), timeout_s=0.1) is None


def test_wait_survives_its_subscription_being_killed(
    store: ObjectStore, redis_client: redis.Redis, settings: Settings
) -> None:
    import threading
    import time

    jobs = JobStore(settings, store, redis_client)
    first, second = new_job_id(), new_job_id()
    jobs.create(_record(first))
    jobs.create(_record(second))
    threading.Timer(0.3, lambda: jobs.finish(first, result=a_result())).start()
    assert jobs.wait(first, timeout_s=10).status is Status.DONE  # the listener is up
    for subscriber in _subscribers(redis_client):
        redis_client.client_kill_filter(_id=subscriber["id"])
    threading.Timer(2.5, lambda: jobs.finish(second, result=a_result())).start()
    started = time.monotonic()
    assert jobs.wait(second, timeout_s=20).status is Status.DONE
    assert time.monotonic() - started < 4.0  # resubscribed: woken, not left to the re-read


@pytest.mark.parametrize("body", [
    b'{"id": "x", ' + b"[" * 300,  # truncated and deeply nested
    b"\x00\xff not json",
    b'{"id": "j_AAAAAAAAAAAAAAAAAAAAAA"}',  # JSON, but not a job record
], ids=["deep-truncated", "binary", "not-a-record"])
def test_an_unreadable_record_is_quarantined_counted_and_reads_as_unknown(
    settings: Settings, store: ObjectStore, redis_client: redis.Redis, body: bytes
) -> None:
    jobs = JobStore(settings, store, redis_client)
    job_id = new_job_id()
    store.put(f"pending/{job_id}", body)
    assert job_id in jobs.pending_job_ids()
    assert jobs.get(job_id) is None  # no exception: the reader goes on
    assert job_id not in jobs.pending_job_ids()
    assert store.get(f"quarantine/pending/{job_id}") == body  # kept for a person
    assert int(redis_client.get("inspectq:quarantined")) == 1


def test_an_unreadable_cached_copy_falls_back_to_the_durable_record(
    settings: Settings, store: ObjectStore, redis_client: redis.Redis
) -> None:
    jobs = JobStore(settings, store, redis_client)
    job_id = new_job_id()
    jobs.create(_record(job_id))
    redis_client.set(f"inspectq:job:{job_id}", b"{garbage")
    assert jobs.cached([job_id]) == {}
    redis_client.set(f"inspectq:job:{job_id}", b"{garbage")
    record = jobs.get(job_id)
    assert record is not None and record.id == job_id  # from S3, and cached again
    assert jobs.cached([job_id])[job_id] == record
    assert int(redis_client.get("inspectq:quarantined")) == 2
    assert store.get(f"quarantine/inspectq:job:{job_id}") is None  # a copy is just dropped
