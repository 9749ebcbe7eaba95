"""Session helpers that need no database."""

import pytest

from monitor.errors import StorageError
from monitor.storage.session import display_url


def test_display_url_hides_the_password():
    assert display_url("postgresql+psycopg://monitor:s3cret@db:5432/monitor") == \
        "postgresql+psycopg://monitor:***@db:5432/monitor"
    assert display_url("sqlite:///data/monitor.db") == "sqlite:///data/monitor.db"
    with pytest.raises(StorageError, match="bad database URL"):
        display_url("not a url")
