#!/usr/bin/env bash
# Cloudflare's CLI, unchanged, against `starling-dev` (debug build): a pinned wrangler 3.x
# (tests/wrangler/package.json and its lock, installed from the npm registry by
# scripts/lib/setup.sh) runs every `wrangler pubsub` subcommand with only the CLOUDFLARE_*
# environment `dev` prints, once more without the account id and once with X-Auth-Key; the
# tokens it issued then publish and subscribe with mosquitto_pub/mosquitto_sub over mqtts trusting
# the dev CA. Telemetry, error reports and the update check are switched off or pointed at
# loopback, and a guard preloaded into wrangler fails the tier on any connection that leaves the
# machine, so nothing here needs the network beyond the npm install.
source "$(dirname "$0")/../lib/tier.sh"
need mosquitto_pub mosquitto_sub node npm jq
cargo build -q -p starling-dev --bin starling-dev
target_dir=$(target_dir)
export STARLING_DEV_BIN="$target_dir/debug/starling-dev"
node_modules tests/wrangler --ignore-scripts
echo "wrangler $(node -p "require('./tests/wrangler/node_modules/wrangler/package.json').version")"
cd tests/wrangler
timeout 600 node --test --test-concurrency=1 wrangler.test.mjs
