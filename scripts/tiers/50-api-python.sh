#!/usr/bin/env bash
# The control plane over real HTTP against the test Postgres (DATABASE_URL): Python tests that
# check issued tokens with `cryptography`, concurrency, rotation and secrets at rest, then
# schemathesis against /openapi.json (a write-role pass and an admin-only pass).
source "$(dirname "$0")/../lib/tier.sh"
: "${DATABASE_URL:?DATABASE_URL must point to the test Postgres (scripts/test starts one)}"

cargo build --locked -q -p starling-api
bin="${CARGO_TARGET_DIR:-target}/debug/starling-api"

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

# schemathesis, in two passes over one api (tests/python/api_schemathesis.py sets up the objects
# the document's examples name and judges the reports):
# - the write role, over every operation it may call (all but the five below);
# - the admin-only operations (API tokens, the audit log, accounts) with the bootstrap token, the
#   only one that may create accounts. The write role gets 403 there by design, which
#   api/tests/routes.rs (admin_only_routes_refuse_read_and_write_roles) checks.
# Each pass writes schemathesis's NDJSON event report; the verdict needs, per operation, at least
# one 2xx and 100 examples (fewer only for operations without parameters or a body), and over
# all of them no 5xx and no failed check. Every check runs (5xx, status codes, content types,
# response schemas and headers, schema-invalid input refused, authentication not ignored,
# deleted objects gone) but `positive_data_acceptance`: some schema-valid requests are refused
# by design in ways a schema does not express (the compatible routes answer a name conflict with
# 400 as Cloudflare did; a page size above the configured maximum and a cursor this api did not
# issue are 400s). Runs from the temporary directory, so that schemathesis's own files stay out
# of the tree.
write=$(python3 tests/python/api_schemathesis.py setup)
admin_only='^/v1/(accounts|tokens|audit)'
st_run() {
  (cd "$work" && timeout 600 schemathesis --config-file "$STARLING_ROOT/tests/python/schemathesis.toml" \
    run "$url/openapi.json" \
    --max-examples 100 \
    --checks all --exclude-checks positive_data_acceptance \
    --phases examples,coverage,fuzzing \
    --generation-database none \
    --request-timeout 30 \
    --no-color \
    "$@")
}
echo "--- schemathesis, write role"
st_run --header "Authorization: Bearer $write" --exclude-path-regex "$admin_only" \
  --report ndjson --report-ndjson-path "$work/write.ndjson" || status=1
echo "--- schemathesis, admin-only operations (bootstrap token)"
st_run --header "Authorization: Bearer $STARLING_API_BOOTSTRAP" --include-path-regex "$admin_only" \
  --report ndjson --report-ndjson-path "$work/admin.ndjson" || status=1
echo "--- schemathesis, per operation"
python3 tests/python/api_schemathesis.py report "$url/openapi.json" \
  write="$work/write.ndjson" admin="$work/admin.ndjson" || status=1

if grep -q "panicked" "$work/api.log"; then
  echo "the api panicked:"; grep -B2 -A10 panicked "$work/api.log"; status=1
fi
exit $status
