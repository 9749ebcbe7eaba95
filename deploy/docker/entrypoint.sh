#!/bin/sh
# Container entry point. MONITOR_<NAME>_FILE=/path sets MONITOR_<NAME> from the file's contents
# (Compose secrets, Kubernetes secret volumes), so a secret need not sit in an environment
# definition; then the command runs in its place (under tini, which reaps and forwards signals).
set -eu

fail() {
  echo "entrypoint: $*" >&2
  exit 64
}

for name in $(env | sed -n 's/^\(MONITOR_[A-Z0-9_]*\)_FILE=.*/\1/p'); do
  file=$(printenv "${name}_FILE")
  [ -z "$(printenv "$name" || true)" ] || fail "both $name and ${name}_FILE are set; set only one"
  [ -r "$file" ] || fail "${name}_FILE names $file, which is not a readable file"
  value=$(cat "$file")
  export "$name=$value"
  unset "${name}_FILE"
done

# A secret that is set but empty is a deployment mistake (an unset Compose variable, an empty
# Kubernetes key), never a choice: an empty author key would fall back to a random per-container key
# and give the same author a different pseudonym on every replica.
for name in MONITOR_PRIVACY__AUTHOR_KEY MONITOR_DATABASE__PASSWORD MONITOR_KAFKA__SASL_PASSWORD MONITOR_CONSOLE__SECRET_KEY \
            MONITOR_KAFKA__SSL_KEY_PASSWORD; do
  if env | grep -q "^$name="; then
    [ -n "$(printenv "$name")" ] || fail "$name is set but empty; check the secret it comes from"
  fi
done

exec "$@"
