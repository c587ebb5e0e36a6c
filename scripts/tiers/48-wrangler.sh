#!/usr/bin/env bash
# Cloudflare's CLI, unchanged, against `starling-dev` (debug build): a pinned wrangler 3.x
# (tests/wrangler/package.json and its lock, installed from the npm registry by
# scripts/lib/setup.sh) runs every `wrangler pubsub` subcommand with only the CLOUDFLARE_*
# environment `dev` prints, once more without the account id and once with X-Auth-Key; the
# tokens it issued then publish and subscribe with mosquitto_pub/mosquitto_sub over mqtts trusting
# the dev CA. Telemetry, error reports and the update check are switched off or pointed at
# loopback, and a guard preloaded into wrangler fails the tier on any connection that leaves the
# machine, so nothing here needs the network beyond the npm install.
set -euo pipefail
cd "$STARLING_ROOT"
for tool in mosquitto_pub mosquitto_sub node npm jq; do
  command -v "$tool" >/dev/null || { echo "missing $tool (scripts/lib/setup.sh installs it)"; exit 1; }
done
cargo build -q -p starling-dev --bin starling-dev
target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
export STARLING_DEV_BIN="$target_dir/debug/starling-dev"
[ -d tests/wrangler/node_modules ] || (cd tests/wrangler && npm ci --ignore-scripts --no-audit --no-fund --silent)
echo "wrangler $(node -p "require('./tests/wrangler/node_modules/wrangler/package.json').version")"
cd tests/wrangler
timeout 600 node --test --test-concurrency=1 wrangler.test.mjs
