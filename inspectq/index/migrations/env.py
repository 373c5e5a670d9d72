"""Alembic environment of the results index.

Run through :meth:`inspectq.index.ResultsIndex.migrate` (no alembic.ini): the caller passes
an open connection in ``config.attributes["connection"]`` and holds the migration lock. A
developer writing a new revision builds the same Config with
``inspectq.index.migrations_config(url)`` and calls ``alembic.command.revision`` on it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from inspectq.index.schema import metadata

#: The index's own version table, so another Alembic history in the same database never
#: collides with it.
VERSION_TABLE = "inspectq_index_version"


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Autogenerate compares our tables only (partitions are made by `maintain`)."""
    if type_ == "table":
        return name in metadata.tables
    return True


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_name=_include_name,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection in config.attributes")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()
