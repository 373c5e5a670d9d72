"""Stage 5: the traffic-light decision from the image score and the job's thresholds."""

from __future__ import annotations

from enum import StrEnum

from inspectq.jobs import Thresholds


class Decision(StrEnum):
    PASS = "PASS"
    REVIEW = "REVIEW"
    REJECT = "REJECT"


def decide(score: float, thresholds: Thresholds) -> Decision:
    """PASS below ``pass``, REJECT above ``reject``, REVIEW from ``pass`` to ``reject``
    inclusive: a score exactly on a threshold goes to a person, never silently through."""
    if score < thresholds.pass_threshold:
        return Decision.PASS
    if score > thresholds.reject_threshold:
        return Decision.REJECT
    return Decision.REVIEW
