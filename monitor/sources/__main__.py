"""``python -m monitor.sources``: run the configured source (``MONITOR_SOURCE__*``) until SIGTERM; the
worker's ``source`` role (``monitor worker`` supervises it; started alone, one per container, it serves
its own /metrics, /livez and /readyz)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from monitor.errors import ConfigError, MonitorError
from monitor.supervision import EX_CONFIG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitor.sources", description=__doc__)
    parser.add_argument("--health-file", type=Path, default=None,
                        help="Where to keep this process's liveness and readiness (monitor worker reads it)")
    args = parser.parse_args(argv)

    from monitor import telemetry
    from monitor.config import Settings, describe_validation_error
    from monitor.health import HealthReporter, process_probes
    from monitor.sources.watch import watch

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"error: {describe_validation_error(exc)}", file=sys.stderr)
        return EX_CONFIG
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":
        logging.getLogger("kafka").setLevel(logging.WARNING)  # every connection at INFO; our errors say what matters
    reporter = HealthReporter(args.health_file, "source")
    try:
        if not telemetry.multiprocess_enabled():
            telemetry.serve(settings.metrics, probes=process_probes(
                reporter, heartbeat_timeout_s=settings.supervisor.heartbeat_timeout_s,
                startup_grace_s=settings.supervisor.startup_grace_s))
        asyncio.run(_run(settings, reporter, watch))
    except ConfigError as exc:  # a restart cannot fix it: the supervisor gives up
        print(f"error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except MonitorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


async def _run(settings, reporter, watch) -> None:  # noqa: ANN001
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await watch(settings.source, settings.kafka, settings.topics, stop=stop, health=reporter)


if __name__ == "__main__":
    sys.exit(main())
