#!/usr/bin/env bash
# The on-publish hook end to end (tests/python/test_hook_e2e.py): `starling-dev` (debug build)
# with a webhook in Python on loopback that verifies every request with `cryptography` against
# the broker's /publickeys, and paho-mqtt clients whose messages it changes and drops. The test
# starts and stops dev itself (its own process group, a temporary data directory).
source "$(dirname "$0")/../lib/tier.sh"
cargo build -q -p starling-dev --bin starling-dev
target_dir=$(target_dir)
export STARLING_DEV_BIN="$target_dir/debug/starling-dev"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/python/test_hook_e2e.py
