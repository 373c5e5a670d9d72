"""The SQL results index of finished jobs (issue 11): listings, exports, line statistics,
batches and operator feedback, on PostgreSQL (production) or SQLite (local use).

See :mod:`inspectq.index.results` for the behaviour, :mod:`inspectq.index.schema` for the
tables and :mod:`inspectq.index.partitions` for PostgreSQL's day partitions and retention.
"""

from inspectq.index.results import (
    EXPORT_COLUMN_DOCS,
    FeedbackEntry,
    IndexUnavailable,
    JobFilter,
    Page,
    ResultsIndex,
    migrations_config,
)

__all__ = [
    "EXPORT_COLUMN_DOCS",
    "FeedbackEntry",
    "IndexUnavailable",
    "JobFilter",
    "Page",
    "ResultsIndex",
    "migrations_config",
]
