"""Alembic environment: the engine comes from ``monitor db`` (``config.attributes['engine']``).

Run through ``monitor db upgrade|downgrade``; plain ``alembic`` works too, building the engine
from the same settings (``MONITOR_DATABASE__URL``).
"""

from alembic import context

from monitor.storage.tables import Base

config = context.config
target_metadata = Base.metadata


def _engine():
    engine = config.attributes.get("engine")
    if engine is None:
        from monitor.config import Settings
        from monitor.storage.session import create_db_engine

        engine = create_db_engine(Settings().database)
    return engine


def run_migrations_offline() -> None:
    context.configure(
        url=_engine().url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    with _engine().connect() as connection:
        # Batch mode lets later migrations ALTER tables on SQLite (copy-and-move).
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
