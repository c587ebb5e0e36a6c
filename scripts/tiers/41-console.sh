#!/usr/bin/env bash
# The web console (/console/, served by `starling-dev`) in headless Chromium: every screen
# driven as a user would, the in-page MQTT.js client over wss:// trusting the dev CA, mosquitto_pub
# over mqtts://, axe-core on each screen. Screenshots of every main screen go to
# test-output/41-console/screenshots/ (gitignored).
set -euo pipefail
cd "$STARLING_ROOT"
for tool in chromium certutil mosquitto_pub curl jq; do
  command -v "$tool" >/dev/null || { echo "missing $tool (scripts/lib/setup.sh installs it)"; exit 1; }
done
cargo build -q -p starling-dev --bin starling-dev
target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
export STARLING_DEV_BIN="$target_dir/debug/starling-dev"
export STARLING_CONSOLE_ARTIFACTS="$STARLING_ROOT/test-output/41-console/screenshots"
rm -rf "$STARLING_CONSOLE_ARTIFACTS"
[ -d tests/node/node_modules ] || (cd tests/node && npm ci --no-audit --no-fund --silent)
cd tests/node
timeout 600 node --test --test-concurrency=1 console.test.mjs
