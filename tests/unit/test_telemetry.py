import json
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


def _get(url: str) -> tuple[int, str, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - a local test server
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_metrics_and_probes_are_served_on_one_port(tmp_path):
    from prometheus_client import Counter

    from monitor.services.process import free_port

    restarts = Counter("test_restarts_total", "restarts", ["role"], registry=None)
    restarts.labels("persist").inc(2)
    port = free_port()
    served = telemetry.serve(MetricsSettings(host="127.0.0.1", port=port), multiprocess_dir=tmp_path,
                             collectors=[restarts],
                             probes={"/livez": lambda: (True, {"status": "ok"}),
                                     "/readyz": lambda: (False, {"status": "failing", "roles": {"persist": {}}})})
    assert served == port
    status, content_type, body = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert 'test_restarts_total{role="persist"} 2.0' in body
    assert _get(f"http://127.0.0.1:{port}/livez") == (200, "application/json", '{"status": "ok"}')
    status, content_type, body = _get(f"http://127.0.0.1:{port}/readyz")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body) == {"status": "failing", "roles": {"persist": {}}}


def test_the_supervisor_metrics_are_named_but_only_its_endpoint_serves_them():
    from prometheus_client import REGISTRY

    assert {"monitor_worker_restarts_total", "monitor_worker_up", "monitor_worker_ready"} <= telemetry.METRIC_NAMES
    exported = {s.name for family in REGISTRY.collect() for s in family.samples}
    assert not exported & {"monitor_worker_restarts_total", "monitor_worker_up", "monitor_worker_ready"}
