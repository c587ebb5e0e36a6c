#!/usr/bin/env bash
# Throughput, latency, idle-connection memory and connection rate of starling-broker next to
# Mosquitto in the same run, with the shared mqttbench tool (see its README).
#
#   scripts/bench-broker.sh [OUT.jsonl] [REPS] [CASE-REGEX]
#
# Builds the release broker and mqttbench, runs every case REPS times (default 3) alternating
# the brokers, then prints the summary table (median [min-max] and ratio of medians).
# Not part of CI: it takes about 3 minutes per repetition and wants an otherwise idle machine.
# Environment: MQTTBENCH_DIR (default ../shared/tools/mqttbench), BROKER_ENV, STARLING_ARGS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-/tmp/starling-bench-$(date +%Y%m%d-%H%M%S).jsonl}
reps=${2:-3}
only=${3:-.}
bench_dir=${MQTTBENCH_DIR:-$root/../shared/tools/mqttbench}

cargo build --release -q -p starling-broker --bin starling-broker
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
starling_bin="$target_dir/release/starling-broker"
MQTTBENCH=$("$bench_dir/build.sh")
export MQTTBENCH

# The HTTP listener on an ephemeral port, so a busy 9090 cannot stop a run; one log line per
# connection is the broker's default, but Mosquitto's benchmark config logs only warnings.
BROKERS="mosquitto starling" STARLING_BIN="$starling_bin" \
  STARLING_ARGS="${STARLING_ARGS:---http 127.0.0.1:0}" \
  BROKER_ENV="${BROKER_ENV:-RUST_LOG=warn}" \
  "$bench_dir/scripts/run-anchors.sh" "$out" "$reps" "$only"
python3 "$bench_dir/scripts/summarize.py" "$out" mosquitto starling
echo "raw results: $out"
