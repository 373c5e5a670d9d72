"""Wake long-polls when their job ends, over one Redis subscription per process.

``JobStore.finish`` publishes on ``keyspace.job_ended(<id>)``. A subscription per waiting
request would hold one Redis connection for every open long-poll and cost a SUBSCRIBE and
an UNSUBSCRIBE round trip each; instead one daemon thread per process listens on the
pattern ``keyspace.JOB_ENDED_PATTERN`` and wakes the requests waiting for that job. The thread
starts on first use (so never before a fork) and reconnects after a Redis outage; while it
is away, waiters fall back to re-reading the record (``JobStore.wait`` does so at least every
``WAIT_RECHECK_S`` seconds anyway).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from inspectq import keyspace

log = logging.getLogger(__name__)

#: How long the listener waits before subscribing again after Redis went away.
_RECONNECT_DELAY_S = 1.0
#: Longest single read of the subscription (below the Redis client's socket timeout).
_POLL_S = 2.0
#: How long ``watch`` waits for the first subscription of a process to be confirmed.
_SUBSCRIBE_WAIT_S = 2.0


class JobEndings:
    """The process's one listener for job endings, and the events of the requests
    waiting for them."""

    def __init__(self, redis_client: redis.Redis) -> None:
        self._redis = redis_client
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextmanager
    def watch(self, job_id: str) -> Iterator[threading.Event]:
        """An event set when ``job_id`` ends (or the listener reconnected: read again)."""
        event = threading.Event()
        with self._lock:
            self._start_listening()
            self._waiters.setdefault(job_id, set()).add(event)
        # A publish before the subscription is confirmed would be missed: wait for it
        # (only the first request of a process, or one during an outage, ever waits).
        self._subscribed.wait(_SUBSCRIBE_WAIT_S)
        try:
            yield event
        finally:
            with self._lock:
                waiting = self._waiters.get(job_id)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._waiters[job_id]

    def _start_listening(self) -> None:
        """Start the listener thread if this process has none (called under the lock)."""
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._subscribed.clear()
        self._thread = threading.Thread(
            target=self._listen, name="inspectq-job-endings", daemon=True
        )
        self._thread.start()

    def _listen(self) -> None:
        outage = False  # log an outage once, and its end, not every retry
        while True:
            pubsub = self._redis.pubsub()
            try:
                pubsub.psubscribe(keyspace.JOB_ENDED_PATTERN)
                while True:
                    # A bounded read: the client's socket timeout would end an idle listen().
                    message = pubsub.get_message(timeout=_POLL_S)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        self._subscribed.set()
                        if outage:
                            log.warning("job-endings listener subscribed again")
                            outage = False
                    elif message["type"] == "pmessage":
                        name = message["channel"]
                        name = name.decode() if isinstance(name, bytes) else name
                        self._wake(keyspace.job_id_of_channel(name))
            except (redis.RedisError, OSError) as error:
                if not outage:
                    log.warning("job-endings listener lost Redis (%s); resubscribing", error)
                    outage = True
            finally:
                self._subscribed.clear()
                pubsub.close()
            self._wake_all()  # endings published while away were missed: read again
            time.sleep(_RECONNECT_DELAY_S)

    def _wake(self, job_id: str) -> None:
        with self._lock:
            for event in self._waiters.get(job_id, ()):
                event.set()

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._waiters.values():
                for event in events:
                    event.set()
