"""Alembic's environment: runs the revisions on the connection serve_app.store.migrate
passes, with the live metadata as the target (render_as_batch so that SQLite's limited
ALTER TABLE works through table copies)."""

from __future__ import annotations

from alembic import context

from serve_app.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through serve_app.store.migrate, which passes a connection")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
