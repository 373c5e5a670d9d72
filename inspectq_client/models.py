"""Typed views of the API's answers. Each keeps the answer's JSON as ``raw`` too, so a field
this SDK does not type yet (timings, model, quality, ...) is still one lookup away."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Job statuses after which nothing changes.
TERMINAL_STATUSES = frozenset({"done", "failed"})


@dataclass(frozen=True)
class Accepted:
    """The answer to a submission (202): the job's id and where to poll it."""

    id: str
    status: str
    status_url: str
    #: True when the API answered an earlier submission's job (same Idempotency-Key):
    #: nothing new was created.
    replayed: bool = False


@dataclass(frozen=True)
class Defect:
    """One defect region, in upright image pixels."""

    class_name: str
    score: float
    #: [x0, y0, x1, y1]; x1 and y1 are exclusive.
    bbox: tuple[int, int, int, int]
    area_px: int
    area_ratio: float

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Defect:
        x0, y0, x1, y1 = body["bbox"]
        return cls(class_name=body["class"], score=body["score"], bbox=(x0, y0, x1, y1),
                   area_px=body["area_px"], area_ratio=body["area_ratio"])


@dataclass(frozen=True)
class Result:
    """A done job's result: the decision (PASS, REVIEW or REJECT), the image score, the
    defect regions (most confident first) and the upright image size."""

    decision: str
    score: float
    defects: tuple[Defect, ...]
    width: int
    height: int
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Result:
        return cls(decision=body["decision"], score=body["score"],
                   defects=tuple(Defect.from_json(region) for region in body["defects"]),
                   width=body["width"], height=body["height"], raw=body)


@dataclass(frozen=True)
class JobError:
    """Why a failed job failed."""

    code: str
    message: str


@dataclass(frozen=True)
class Job:
    """A job as ``GET /v1/jobs/<id>`` shows it. ``result`` is set once it is done,
    ``error`` once it failed; ``raw`` is the whole answer (``retry`` while retrying, ...)."""

    id: str
    status: str
    line: str
    created_at: str
    updated_at: str
    camera: str | None
    batch_id: str | None
    metadata: dict[str, Any]
    result: Result | None
    error: JobError | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def terminal(self) -> bool:
        """True once the job is done or failed (its outcome never changes after that)."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Job:
        result, error = body.get("result"), body.get("error")
        return cls(
            id=body["id"], status=body["status"], line=body["line"],
            created_at=body["created_at"], updated_at=body["updated_at"],
            camera=body.get("camera"), batch_id=body.get("batch_id"),
            metadata=body.get("metadata") or {},
            result=None if result is None else Result.from_json(result),
            error=None if error is None else JobError(code=error["code"],
                                                      message=error["message"]),
            raw=body,
        )
