#!/usr/bin/env bash
# Headless Chromium (Debian's chromium via playwright-core) with MQTT.js over wss:// and MQTT 5,
# trusting the --dev-tls CA through an NSS database (certutil), exchanging messages with
# mosquitto_pub/mosquitto_sub over TLS on the mqtts listener.
source "$(dirname "$0")/../lib/tier.sh"
need chromium certutil mosquitto_pub mosquitto_sub jq
cargo build -q -p starling-broker --bin starling-broker
target_dir=$(target_dir)
export STARLING_BROKER_BIN="$target_dir/debug/starling-broker"
node_modules tests/node
cd tests/node
timeout 600 node --test --test-concurrency=1 browser.test.mjs
