#!/usr/bin/env bash
# Token issuance throughput (number=100) and GET /credentials latency percentiles, measured with
# wrk against a release build of starling-api on loopback, on Postgres (DATABASE_URL).
#
#   DATABASE_URL=postgres://... api/bench/credentials.sh [seconds]
#
# Needs wrk (Debian package `wrk`). Client and server share the machine: read the numbers as a
# lower bound for a dedicated host.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${DATABASE_URL:?DATABASE_URL must point to a Postgres server}"
secs="${1:-15}"
cargo build --locked -q --release -p starling-api
bin="${CARGO_TARGET_DIR:-target}/release/starling-api"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
db="starling_api_bench_$$"
psql -q "$DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
base="${DATABASE_URL%%\?*}"
port=$(free_port)
bootstrap="sat_$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
STARLING_API__KEK="$(python3 -c 'import secrets; print(secrets.token_hex(32))')" \
  STARLING_API__BOOTSTRAP_TOKEN="$bootstrap" RUST_LOG=error \
  "$bin" serve --database-url "${base%/*}/$db" --public-addr "127.0.0.1:$port" --internal-addr "127.0.0.1:$(free_port)" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true' EXIT
url="http://127.0.0.1:$port"
for _ in $(seq 1 100); do curl -fsS "$url/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

auth="Authorization: Bearer $bootstrap"
curl -fsS -X POST -H "$auth" -H 'content-type: application/json' -d '{"name":"bench"}' "$url/v1/namespaces" >/dev/null
curl -fsS -X POST -H "$auth" -H 'content-type: application/json' -d '{"name":"b1"}' "$url/v1/namespaces/bench/brokers" >/dev/null
write=$(curl -fsS -X POST -H "$auth" -H 'content-type: application/json' -d '{"name":"bench","role":"write"}' "$url/v1/tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

echo "=== number=100 (each request issues 100 tokens)"
wrk -t1 -c4 -d"${secs}s" --latency -H "Authorization: Bearer $write" \
  "$url/v1/namespaces/bench/brokers/b1/credentials?number=100&topicAcl=%23&expiration=3600"
echo "=== number=1 (latency of GET /credentials)"
wrk -t1 -c4 -d"${secs}s" --latency -H "Authorization: Bearer $write" \
  "$url/v1/namespaces/bench/brokers/b1/credentials?number=1&topicAcl=%23&expiration=3600"
