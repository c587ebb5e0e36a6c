#!/usr/bin/env bash
# End to end through `starling-dev` (debug build): the mosquitto commands it prints work as
# pasted; namespaces, brokers and tokens through the Cloudflare-compatible routes; MQTT.js in
# headless Chromium over wss:// trusting the dev CA, mosquitto_pub over mqtts://, MQTT.js in Node;
# tenant isolation, revocation, key rotation and broker deletion reaching connected clients.
source "$(dirname "$0")/../lib/tier.sh"
need chromium certutil mosquitto_pub mosquitto_sub curl stdbuf jq
cargo build -q -p starling-dev --bin starling-dev
target_dir=$(target_dir)
export STARLING_DEV_BIN="$target_dir/debug/starling-dev"
node_modules tests/node
cd tests/node
timeout 300 node --test --test-concurrency=1 e2e.test.mjs
