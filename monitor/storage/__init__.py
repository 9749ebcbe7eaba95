"""Persistence: SQLAlchemy tables, sessions, Alembic migrations, and every query the monitor runs.

No module outside this package builds or runs SQL (``tests/unit/test_layering_storage.py`` checks):
writes are in ``repository`` and ``alerts``, replay runs in ``runs``, other reads in ``queries``.
"""
