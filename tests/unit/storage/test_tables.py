from datetime import UTC, datetime, timedelta, timezone

import pytest

from monitor.storage.tables import UTCDateTime


def test_utc_datetime_normalises_zones_and_refuses_naive():
    col = UTCDateTime()
    cet = timezone(timedelta(hours=1))
    stored = col.process_bind_param(datetime(2024, 1, 1, 12, tzinfo=cet), None)
    assert stored == datetime(2024, 1, 1, 11, tzinfo=UTC) and stored.tzinfo == UTC
    assert col.process_result_value(datetime(2024, 1, 1, 11), None).tzinfo == UTC
    with pytest.raises(ValueError, match="naive"):
        col.process_bind_param(datetime(2024, 1, 1), None)
