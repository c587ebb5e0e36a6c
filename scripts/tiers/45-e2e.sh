#!/usr/bin/env bash
# End to end through `starling-dev` (debug build): the mosquitto commands it prints work as
# pasted; namespaces, brokers and tokens through the Cloudflare-compatible routes; MQTT.js in
# headless Chromium over wss:// trusting the dev CA, mosquitto_pub over mqtts://, MQTT.js in Node;
# tenant isolation, revocation, key rotation and broker deletion reaching connected clients.
set -euo pipefail
cd "$STARLING_ROOT"
for tool in chromium certutil mosquitto_pub mosquitto_sub curl stdbuf jq; do
  command -v "$tool" >/dev/null || { echo "missing $tool (scripts/lib/setup.sh installs it)"; exit 1; }
done
cargo build -q -p starling-dev --bin starling-dev
target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
export STARLING_DEV_BIN="$target_dir/debug/starling-dev"
[ -d tests/node/node_modules ] || (cd tests/node && npm ci --no-audit --no-fund --silent)
cd tests/node
timeout 300 node --test --test-concurrency=1 e2e.test.mjs
