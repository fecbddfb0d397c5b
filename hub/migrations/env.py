"""Alembic environment: migrations run on the connection the store hands over."""

from __future__ import annotations

from alembic import context

from hub.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the store runs migrations
    raise RuntimeError("run migrations through hub.store.Store (gridhub migrate)")
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
