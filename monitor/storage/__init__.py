"""Persistence: SQLAlchemy tables, sessions, Alembic migrations and idempotent upserts."""
