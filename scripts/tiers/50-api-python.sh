#!/usr/bin/env bash
# The control plane over real HTTP against the test Postgres (DATABASE_URL): Python tests that
# check issued tokens with `cryptography`, concurrency, rotation and secrets at rest, then
# schemathesis against /openapi.json with a write-role token.
set -euo pipefail
cd "$STARLING_ROOT"
: "${DATABASE_URL:?DATABASE_URL must point to the test Postgres (scripts/test starts one)}"

cargo build --locked -q -p starling-api
bin="${CARGO_TARGET_DIR:-target}/debug/starling-api"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

work=$(mktemp -d /tmp/starling-api-tier.XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A fresh database for this tier.
db="starling_api_tier_$$"
psql -q "$DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
base="${DATABASE_URL%%\?*}"
db_url="${base%/*}/$db"

public_port=$(free_port)
internal_port=$(free_port)
kek=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
bootstrap="sat_$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
printf '%s' "$kek" >"$work/kek"
chmod 600 "$work/kek"

STARLING_API__KEK_FILE="$work/kek" STARLING_API__BOOTSTRAP_TOKEN="$bootstrap" \
  STARLING_API__JANITOR_INTERVAL_SECS=1 RUST_LOG=warn \
  "$bin" serve --database-url "$db_url" \
  --public-addr "127.0.0.1:$public_port" --internal-addr "127.0.0.1:$internal_port" \
  >"$work/api.log" 2>&1 &
pid=$!

url="http://127.0.0.1:$public_port"
for _ in $(seq 1 100); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/api.log"; exit 1; }
  sleep 0.1
done
curl -fsS "$url/readyz" >/dev/null

export STARLING_API_URL="$url" STARLING_API_INTERNAL_URL="http://127.0.0.1:$internal_port"
export STARLING_API_BOOTSTRAP="$bootstrap" STARLING_API_KEK="$kek" STARLING_API_DB_URL="$db_url"

status=0
python3 -m pytest -q -p no:cacheprovider tests/python/test_api_*.py || status=1

# schemathesis with a write-role token on objects that exist (namespace and broker `demo`).
write=$(python3 tests/python/test_api_support.py setup-schemathesis)
# Run from the temporary directory, so that schemathesis's own files stay out of the tree.
(cd "$work" && schemathesis run "$url/openapi.json" \
  --header "Authorization: Bearer $write" \
  --max-examples 100 \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --generation-database none \
  --request-timeout 30 \
  --no-color \
  --report har --report-har-path "$work/schemathesis.har") || status=1
# Requests and 2xx answers per operation, from the recorded exchanges.
python3 tests/python/test_api_support.py har-summary "$url/openapi.json" "$work/schemathesis.har" || status=1

if grep -q "panicked" "$work/api.log"; then
  echo "the api panicked:"; grep -B2 -A10 panicked "$work/api.log"; status=1
fi
exit $status
