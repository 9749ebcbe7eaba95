import socket

import pytest

from monitor import telemetry
from monitor.config import MetricsSettings
from monitor.errors import ServiceError


def test_a_taken_metrics_port_is_one_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServiceError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            telemetry.serve(MetricsSettings(host="127.0.0.1", port=port))


def test_port_zero_serves_nothing():
    assert telemetry.serve(MetricsSettings(port=0)) is None
