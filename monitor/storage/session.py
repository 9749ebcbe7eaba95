"""Engines and sessions from ``DatabaseSettings``; library errors become ``StorageError``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import DatabaseSettings
from monitor.errors import StorageError


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API objects
    cursor = dbapi_connection.cursor()
    # Foreign keys are off by default in SQLite; WAL lets a reader run beside the one writer.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_db_engine(settings: DatabaseSettings) -> Engine:
    """An engine for the configured URL; creates the SQLite file's folder if needed."""
    try:
        url = make_url(settings.url)
    except ArgumentError as exc:
        raise StorageError(f"bad database URL {settings.url!r}: {exc}") from exc
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=settings.echo)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we ship
    if settings.password is not None:
        # The password comes from a secret, the rest of the URL from plain configuration.
        url = url.set(password=settings.password.get_secret_value())
    return create_engine(url, echo=settings.echo, pool_size=settings.pool_size, pool_pre_ping=True,
                         connect_args=libpq_tls_args(settings))


def display_url(url: str) -> str:
    """The database URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError as exc:
        raise StorageError(f"bad database URL: {exc}") from exc


def libpq_tls_args(settings: DatabaseSettings) -> dict[str, str]:
    """The TLS settings as libpq connection parameters (they win over the same ones in the URL)."""
    return {name: str(value) for name in ("sslmode", "sslrootcert", "sslcert", "sslkey")
            if (value := getattr(settings, name)) is not None}


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error, raising ``StorageError``."""
    session = factory()
    try:
        yield session
        session.commit()
    except SQLAlchemyError as exc:
        _rollback_quietly(session)
        raise StorageError(f"database error: {exc.__class__.__name__}: {str(exc).splitlines()[0]}",
                           transient=is_transient(exc)) from exc
    except BaseException:
        _rollback_quietly(session)
        raise
    finally:
        try:
            session.close()
        except SQLAlchemyError:  # the connection is already gone; the pool discards it
            pass


# SQLSTATE classes and codes that say "try again later", not "this row is wrong": connection exceptions
# (08), insufficient resources (53), operator intervention such as a shutdown or a failover (57), and
# the two transaction rollbacks every PostgreSQL client must expect: serialization_failure (40001)
# and deadlock_detected (40P01).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57")
_TRANSIENT_SQLSTATES = ("40001", "40P01", "55P03")  # 55P03: lock_not_available


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (PostgreSQL), if the driver gave one."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_transient(exc: SQLAlchemyError) -> bool:
    """Whether the same transaction may succeed later: the database's fault, not the data's."""
    code = sqlstate(exc)
    if code is not None:
        return code in _TRANSIENT_SQLSTATES or code[:2] in _TRANSIENT_SQLSTATE_CLASSES
    # No SQLSTATE: the connection could not be made or was lost (psycopg raises OperationalError
    # without one then), SQLite was busy or locked, or the pool had no connection to give.
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeoutError)


def _rollback_quietly(session: Session) -> None:
    """Roll back; a connection lost mid-transaction cannot roll back and needs nothing undone."""
    try:
        session.rollback()
    except SQLAlchemyError:
        pass


def ping(engine: Engine) -> None:
    """Run ``SELECT 1``; raise ``StorageError`` with the reason if the database does not answer."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise StorageError(
            f"database {engine.url.render_as_string(hide_password=True)} does not answer: "
            f"{str(exc.orig if getattr(exc, 'orig', None) else exc).splitlines()[0]}"
        ) from exc
