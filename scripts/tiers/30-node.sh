#!/usr/bin/env bash
# MQTT.js in Node against the starling-broker binary: ws://, wss:// trusting the --dev-tls CA,
# mqtts:// and raw MQTT on the wss port, messages crossing transports, and 200 clean ends in a
# row over ws:// and wss:// (node's test runner).
# The tests start the broker on loopback port 0 and stop it themselves.
set -euo pipefail
cd "$STARLING_ROOT"
cargo build -q -p starling-broker --bin starling-broker
target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
export STARLING_BROKER_BIN="$target_dir/debug/starling-broker"
[ -d tests/node/node_modules ] || (cd tests/node && npm ci --no-audit --no-fund --silent)
cd tests/node
timeout 600 node --test --test-concurrency=1 transport.test.mjs close.test.mjs
