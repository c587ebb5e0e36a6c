# shellcheck shell=bash
# What the benchmark scripts (scripts/bench-*.sh) share: strict mode, the repository root as
# STARLING_ROOT and working directory, their arguments (bench_args), the release builds, brokers
# on free loopback ports (Debian's Mosquitto with bench/mosquitto.conf, and starling-broker), and
# one run of starling-bench recorded as one JSON line. Sourced first thing:
# `source "$(dirname "$0")/lib/bench.sh"`.
#
# Every broker started here is a child of the script, stopped by its PID (SIGTERM, then SIGKILL
# after 5 s); every generator run is bounded by its own limits and by `timeout`.
#
# Environment: NICE (default 0) runs the brokers and the generator at that niceness, the same
# for all of them (-19 shields the runs from other work on a busy machine; it needs root).
set -euo pipefail
STARLING_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export STARLING_ROOT
cd "$STARLING_ROOT"

# shellcheck source=scripts/lib/setup.sh
source "$STARLING_ROOT/scripts/lib/setup.sh"

BENCH_NICE=${NICE:-0}
BROKER_PID=""

# bench_args NAME REPS [OUT.jsonl] [REPS] [THIRD]: the benchmark's arguments. Sets `out` (default
# /tmp/NAME-<date>.jsonl), `reps` (default REPS; a whole number from 1) and `only` (a case regex,
# default `.`); `-h` or `--help` prints the script's leading comment and exits.
bench_args() {
  local name=$1 default_reps=$2
  shift 2
  case "${1:-}" in
    -h | --help)
      awk 'NR > 1 && !/^#/ { exit } NR > 1 && !/^# shellcheck/ { sub(/^# ?/, ""); print }' "$0"
      exit 0
      ;;
  esac
  out=${1:-/tmp/$name-$(date +%Y%m%d-%H%M%S).jsonl}
  reps=${2:-$default_reps}
  only=${3:-.}
  if ! [[ $reps =~ ^[1-9][0-9]*$ ]]; then
    echo "REPS must be a whole number from 1, not '$reps' (--help says more)" >&2
    exit 2
  fi
}

# Builds starling-broker and starling-bench (release, plus any further `cargo build` arguments)
# and sets STARLING_BROKER, STARLING_BENCH and TARGET_DIR.
bench_build() {
  apt_install_missing mosquitto
  # The brokers and the generator inherit this: 10,000 idle connections need the file descriptors.
  ulimit -n "$(ulimit -Hn)"
  cargo build --release -q --locked -p starling-broker -p starling-bench --bin starling-broker --bin starling-bench "$@"
  TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  STARLING_BROKER="$TARGET_DIR/release/starling-broker"
  STARLING_BENCH="$TARGET_DIR/release/starling-bench"
}

bench_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to 10 s for PORT to accept connections while PID lives.
bench_wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "the broker (pid $2) exited before listening on $1" >&2; return 1; }
    sleep 0.1
  done
  echo "nothing listens on $1 after 10 s" >&2
  return 1
}

# Starts Mosquitto on PORT with bench/mosquitto.conf, logging to LOG; sets BROKER_PID.
bench_start_mosquitto() {
  local port=$1 log=$2
  local conf="${log%.log}.conf"
  { cat "$STARLING_ROOT/bench/mosquitto.conf"; echo "listener $port 127.0.0.1"; } >"$conf"
  nice -n "$BENCH_NICE" mosquitto -c "$conf" >"$log" 2>&1 &
  BROKER_PID=$!
  bench_wait_port "$port" "$BROKER_PID"
}

# Starts starling-broker on PORT (no auth, its HTTP listener on a free port, warnings only),
# logging to LOG, with any further arguments; sets BROKER_PID.
bench_start_starling() {
  local port=$1 log=$2
  shift 2
  RUST_LOG=${RUST_LOG:-warn} nice -n "$BENCH_NICE" "$STARLING_BROKER" --mqtt "127.0.0.1:$port" \
    --http 127.0.0.1:0 --auth none "$@" >"$log" 2>&1 &
  BROKER_PID=$!
  bench_wait_port "$port" "$BROKER_PID"
}

bench_stop_broker() {
  [ -n "$BROKER_PID" ] || return 0
  kill "$BROKER_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$BROKER_PID" 2>/dev/null || true
  wait "$BROKER_PID" 2>/dev/null || true
  BROKER_PID=""
}

# bench_run OUT CASE BROKER REP LOG GENERATOR-ARGS...: one generator run against the broker in
# BROKER_PID; appends its JSON line to OUT with the case, the broker, the repetition, the exit
# code, whether the broker was alive at the end and whether its log shows a panic.
bench_run() {
  local out=$1 case=$2 broker=$3 rep=$4 log=$5
  shift 5
  local result rc=0 alive=true panics
  result=$(timeout 600 nice -n "$BENCH_NICE" "$STARLING_BENCH" "$@" --broker-pid "$BROKER_PID" --label "$broker") || rc=$?
  kill -0 "$BROKER_PID" 2>/dev/null || alive=false
  panics=$(grep -c "panicked" "$log" || true)
  python3 - "$case" "$broker" "$rep" "$rc" "$alive" "$panics" "$*" "${result:-}" >>"$out" <<'PY'
import json, sys
case, broker, rep, rc, alive, panics, args, line = sys.argv[1:9]
try:
    result = json.loads(line)
except ValueError:
    result = {"error": f"no result line: {line!r}"}
record = {"case": case, "broker": broker, "rep": int(rep), "exit": int(rc),
          "broker_alive_at_end": alive == "true", "broker_panics": int(panics), "args": args}
record.update(result)
print(json.dumps(record))
PY
  echo "$(date +%T) rep $rep $case $broker: exit $rc$([ "$alive" = true ] || echo ', broker died')$([ "$panics" = 0 ] || echo ", $panics panics")" >&2
}
