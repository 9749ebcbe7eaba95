"""``python -m stream_jobs --role ROLE``: run one worker role (``monitor worker`` starts these)."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from monitor.errors import MonitorError
from stream_jobs.resources import ROLES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_jobs", description=__doc__)
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--loglevel", default="warn", choices=("crit", "error", "warn", "info", "debug"))
    args = parser.parse_args(argv)

    from faust import Worker

    from monitor import telemetry
    from monitor.cli import describe_validation_error
    from monitor.config import Settings
    from stream_jobs.app import build_worker

    try:
        settings = Settings()
        app = build_worker(settings, args.role)
        if not telemetry.multiprocess_enabled():  # started alone (a container): serve our own /metrics
            telemetry.serve(settings.metrics)
    except ValidationError as exc:
        print(f"error: {describe_validation_error(exc)}", file=sys.stderr)
        return 1
    except MonitorError as exc:  # a bad model folder, a database behind its migrations, a metrics port taken
        print(f"error: {exc}", file=sys.stderr)
        return 1
    Worker(app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
