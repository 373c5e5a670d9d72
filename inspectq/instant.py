"""A point in time a client sends to filter or count the results index (``since``,
``until``). ISO 8601 allows years 1 to 9999 and any zone, but the index computes with these
times (a day partition, ``until`` minus a look-back window, 24 hours before ``until``) and
Python's datetime cannot go below year 1 or above 9999: ``0001-01-01T00:00:00+01:00`` in UTC
is in year 0. So a time is taken to UTC where it arrives and refused, with a message, outside
the years the index can hold (1970 to 9998), as a 400 rather than an overflow deep inside."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def in_index_range(value: datetime) -> datetime:
    """``value`` in UTC (`as_utc`), or ValueError outside 1970..9998."""
    try:
        utc = as_utc(value)
    except OverflowError:
        raise ValueError("is outside the years 1970 to 9998 the index holds") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError("is outside the years 1970 to 9998 the index holds")
    return utc


#: A client-sent time for the results index, in UTC, within 1970..9998.
Instant = Annotated[datetime, AfterValidator(in_index_range)]
