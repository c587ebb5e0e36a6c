#!/usr/bin/env bash
# Durable broker state under crashes and a full disk, against the release broker binary:
# tests/python/test_durability_crash.py (paho-mqtt publishers and persistent subscribers while the
# broker is stopped with SIGKILL, then SIGTERM, at least 20 times at random moments; the seed is
# printed and STARLING_CRASH_SEED replays it) and tests/python/test_durability_disk_full.py (a
# tmpfs of 8 MiB as the data directory, filled up: publishes are refused with 0x97/0x80, nothing
# acknowledged is lost, the broker recovers once space returns; it needs root to mount and says so
# when it cannot).
#
# Builds the broker with --release (the crash test is about the binary users run), runs pytest
# with STARLING_BROKER_BIN set; the tests start and stop the broker themselves.
source "$(dirname "$0")/../lib/tier.sh"

cargo build --release -q --locked -p starling-broker --bin starling-broker
export STARLING_BROKER_BIN="$(target_dir)/release/starling-broker"
timeout 1200 python3 -m pytest -q -s -p no:cacheprovider \
  tests/python/test_durability_crash.py tests/python/test_durability_disk_full.py
