"""``python -m stream_jobs --role ROLE``: run one worker role (``monitor worker`` starts and supervises
these; started alone, one per container, it serves its own /metrics, /livez and /readyz)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from monitor.errors import ConfigError, DataError, MonitorError, ModelError
from monitor.supervision import EX_CONFIG
from stream_jobs.resources import ROLES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_jobs", description=__doc__)
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--loglevel", default="warn", choices=("crit", "error", "warn", "info", "debug"))
    parser.add_argument("--health-file", type=Path, default=None,
                        help="Where to keep this process's liveness and readiness (monitor worker reads it)")
    args = parser.parse_args(argv)

    from faust import Worker

    from monitor import telemetry
    from monitor.config import Settings, describe_validation_error
    from monitor.health import HealthReporter, process_probes
    from stream_jobs.app import build_worker

    try:
        settings = Settings()
        if args.role == "explain" and settings.explainer.nice:
            # Best-effort: on a machine it shares with classify, the LLM takes the cores classification
            # leaves (escalations it cannot reach in time are stored unexplained, max_wait_s).
            os.nice(settings.explainer.nice)
        reporter = HealthReporter(args.health_file, args.role)
        if not telemetry.multiprocess_enabled():
            # Started alone (a container): serve our own /metrics and probes, from before the models
            # load, so that /livez says "starting" rather than nothing while they do.
            probes = process_probes(reporter, heartbeat_timeout_s=settings.supervisor.heartbeat_timeout_s,
                                    startup_grace_s=settings.supervisor.startup_grace_s)
            telemetry.serve(settings.metrics, probes=probes)
        app = build_worker(settings, args.role, health=reporter)
    except ValidationError as exc:
        print(f"error: {describe_validation_error(exc)}", file=sys.stderr)
        return EX_CONFIG
    except (ConfigError, ModelError, DataError) as exc:  # a restart cannot fix these: the supervisor gives up
        print(f"error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except MonitorError as exc:  # a database behind its migrations or unreachable, a metrics port taken
        print(f"error: {exc}", file=sys.stderr)
        return 1
    Worker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
