"""inspectq's Python SDK: submit images, wait for decisions, list and export results, give
feedback. It needs only ``requests`` (``pip install 'inspectq[client]'``) and imports nothing
of the server.

    from inspectq_client import Client

    with Client("http://127.0.0.1:8080", "inspectq-dev-key") as client:
        job = client.wait(client.submit("part.png", line="press-3").id, timeout_s=60)
        print(job.status, job.result.decision if job.result else job.error)

docs/client.md describes it, and the ``inspectq submit|wait|results|feedback`` commands
built on it.
"""

from inspectq_client.client import Client, Filters, default_idempotency_key
from inspectq_client.errors import ApiError
from inspectq_client.models import Accepted, Defect, Job, JobError, Result

__all__ = [
    "Accepted",
    "ApiError",
    "Client",
    "Defect",
    "Filters",
    "Job",
    "JobError",
    "Result",
    "default_idempotency_key",
]
