#!/usr/bin/env bash
# Headless Chromium (Debian's chromium via playwright-core) with MQTT.js over wss:// and MQTT 5,
# trusting the --dev-tls CA through an NSS database (certutil), exchanging messages with
# mosquitto_pub/mosquitto_sub over TLS on the mqtts listener.
set -euo pipefail
cd "$STARLING_ROOT"
for tool in chromium certutil mosquitto_pub mosquitto_sub jq; do
  command -v "$tool" >/dev/null || { echo "missing $tool (scripts/lib/setup.sh installs it)"; exit 1; }
done
cargo build -q -p starling-broker --bin starling-broker
target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
export STARLING_BROKER_BIN="$target_dir/debug/starling-broker"
[ -d tests/node/node_modules ] || (cd tests/node && npm ci --no-audit --no-fund --silent)
cd tests/node
timeout 600 node --test --test-concurrency=1 browser.test.mjs
