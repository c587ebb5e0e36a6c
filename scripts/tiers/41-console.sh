#!/usr/bin/env bash
# The web console (/console/, served by `starling-dev`) in headless Chromium: every screen
# driven as a user would, the in-page MQTT.js client over wss:// trusting the dev CA, mosquitto_pub
# over mqtts://, axe-core on each screen. Screenshots of every main screen go to
# test-output/41-console/screenshots/ (gitignored).
source "$(dirname "$0")/../lib/tier.sh"
need chromium certutil mosquitto_pub curl jq
cargo build -q -p starling-dev --bin starling-dev
target_dir=$(target_dir)
export STARLING_DEV_BIN="$target_dir/debug/starling-dev"
export STARLING_CONSOLE_ARTIFACTS="$STARLING_ROOT/test-output/41-console/screenshots"
rm -rf "$STARLING_CONSOLE_ARTIFACTS"
node_modules tests/node
cd tests/node
timeout 600 node --test --test-concurrency=1 console.test.mjs
