"""Fixtures the unit tests share: a migrated SQLite database (a file under the test's tmp_path)."""

from __future__ import annotations

import pytest

from monitor.config import DatabaseSettings
from monitor.storage import migrations
from monitor.storage.session import create_db_engine, make_sessionmaker


@pytest.fixture
def factory(tmp_path):
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'm.db'}")
    migrations.upgrade(settings)
    engine = create_db_engine(settings)
    yield make_sessionmaker(engine)
    engine.dispose()
