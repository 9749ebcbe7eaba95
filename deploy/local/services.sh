#!/usr/bin/env bash
# Local Kafka and PostgreSQL for a one-machine setup: up | down | status [kafka|postgres|all].
# A thin wrapper: the logic lives in `monitor services` (monitor/services/), configured by MONITOR_* settings.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ ! -x $repo/.venv/bin/monitor ]]; then
  echo "run deploy/local/setup.sh first" >&2
  exit 1
fi
exec "$repo/.venv/bin/monitor" services "$@"
