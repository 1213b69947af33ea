"""Alembic's entry point: migrate the connection ``upgrade`` hands over (online mode only)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlmodel import SQLModel

# PostgreSQL: one migrating transaction at a time per database (the key is arbitrary but fixed).
_ADVISORY_KEY = 0x756E656D62

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through unembargo.models.migrations.upgrade (it passes a connection)")
if connection.dialect.name == "postgresql":
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_KEY})
context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
