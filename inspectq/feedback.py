"""Operator feedback: a person confirms or corrects a job's decision.

Inspection engineers work the REVIEW images off (and audit the rest): each answer is a
:class:`Feedback`. Every entry is kept, the latest one counts. Durable copy: one S3 object
per entry under the job (``keyspace.keys_for(id).feedback_entry``), so two operators
answering at once never overwrite each other; the job's cached record and the results
index carry the history and the latest verdict.

Corrections are what the retraining loop feeds on (``inspectq dataset export``): a
``correct`` entry names the right decision and, where the operator drew them, the defect
boxes the model missed or misplaced.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inspectq.result import Decision
from inspectq.text import Text


class FeedbackDefect(BaseModel):
    """A defect an operator marked: its class and box in upright image pixels."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="forbid")

    class_name: Text = Field(alias="class", min_length=1, max_length=64)
    bbox: tuple[int, int, int, int] = Field(
        description="[x0, y0, x1, y1]; x1 and y1 exclusive, x0 < x1 and y0 < y1."
    )

    @model_validator(mode="after")
    def _box(self) -> Self:
        x0, y0, x1, y1 = self.bbox
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise ValueError("bbox must be [x0, y0, x1, y1] with 0 <= x0 < x1 and 0 <= y0 < y1")
        return self


class FeedbackIn(BaseModel):
    """What an operator sends (``POST /v1/jobs/<id>/feedback``)."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["confirm", "correct"] = Field(
        description="confirm: the decision was right; correct: it was wrong."
    )
    decision: Decision | None = Field(
        default=None, description="With correct: the right decision (required unless"
        " defects are given, which then mean REJECT)."
    )
    defects: list[FeedbackDefect] | None = Field(
        default=None, max_length=100,
        description="With correct: the defects as the operator sees them.",
    )
    note: Text | None = Field(default=None, max_length=2000)
    by: Text | None = Field(default=None, max_length=128, description="Who answered.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.verdict == "confirm" and (self.decision is not None or self.defects):
            raise ValueError("a confirm carries no decision or defects; use verdict=correct")
        if self.verdict == "correct" and self.decision is None and not self.defects:
            raise ValueError("a correct names the right decision, or the defects")
        return self


class Feedback(FeedbackIn):
    """One stored entry: what was sent, when, and the decision it stands for."""

    at: str = Field(description="When it was given (ISO 8601, UTC).")

    def effective_decision(self, model_decision: Decision) -> Decision:
        """The decision this entry says is right: the model's on a confirm; on a correct, the
        one named, else REJECT (defects were marked)."""
        if self.verdict == "confirm":
            return model_decision
        return self.decision or Decision.REJECT

    def for_index(self) -> dict[str, object]:
        """The entry as the results index records it (``ResultsIndex.record_feedback``)."""
        entry = self.model_dump(mode="json", by_alias=True, exclude={"at"})
        entry["decision"] = self.decision.value if self.decision else None
        entry["at"] = datetime.fromisoformat(self.at.replace("Z", "+00:00"))
        return entry
