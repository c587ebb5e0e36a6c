#!/usr/bin/env bash
# MQTT.js in Node against the starling-broker binary: ws://, wss:// trusting the --dev-tls CA,
# mqtts:// and raw MQTT on the wss port, messages crossing transports, and 200 clean ends in a
# row over ws:// and wss:// (node's test runner).
# The tests start the broker on loopback port 0 and stop it themselves.
source "$(dirname "$0")/../lib/tier.sh"
cargo build -q -p starling-broker --bin starling-broker
target_dir=$(target_dir)
export STARLING_BROKER_BIN="$target_dir/debug/starling-broker"
node_modules tests/node
cd tests/node
timeout 600 node --test --test-concurrency=1 transport.test.mjs close.test.mjs
