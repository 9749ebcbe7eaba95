"""Alembic, driven from ``DatabaseSettings``: upgrade, downgrade and the current revision."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.exc import SQLAlchemyError

from monitor.config import DatabaseSettings
from monitor.errors import StorageError
from monitor.storage.session import create_db_engine

#: The migration scripts live at the top of the repository, beside ``monitor/``.
SCRIPT_LOCATION = Path(__file__).resolve().parents[2] / "alembic"


def alembic_config(settings: DatabaseSettings) -> Config:
    if not (SCRIPT_LOCATION / "env.py").is_file():
        raise StorageError(f"migration scripts not found at {SCRIPT_LOCATION}; run from a checkout of the project")
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    # env.py takes the engine from here rather than reading settings a second time.
    config.attributes["engine"] = create_db_engine(settings)
    return config


def _run(settings: DatabaseSettings, action: str, revision: str) -> None:
    config = alembic_config(settings)
    try:
        getattr(command, action)(config, revision)
    except (CommandError, SQLAlchemyError) as exc:
        raise StorageError(f"{action} to {revision!r} failed: {str(exc).splitlines()[0]}") from exc
    finally:
        config.attributes["engine"].dispose()


def upgrade(settings: DatabaseSettings, revision: str = "head") -> None:
    _run(settings, "upgrade", revision)


def downgrade(settings: DatabaseSettings, revision: str) -> None:
    _run(settings, "downgrade", revision)


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        raise StorageError("the migration chain is empty")
    return head


def current_revision(settings: DatabaseSettings) -> str | None:
    """The revision the database is at, or None for an empty (base) database."""
    engine = create_db_engine(settings)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot read the schema revision: {str(exc).splitlines()[0]}") from exc
    finally:
        engine.dispose()


def require_head(settings: DatabaseSettings) -> None:
    """Fail with a clear message when the database is not migrated to the code's schema."""
    current, head = current_revision(settings), head_revision()
    if current != head:
        raise StorageError(
            f"database schema is at {current or 'base (empty)'}, the code needs {head}: run `monitor db upgrade`"
        )
