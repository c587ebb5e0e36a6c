#!/usr/bin/env bash
# What durability costs: starling-broker keeping its state on disk (--data-dir, the `sync` and
# the `interval` policies) next to Starling in memory and Mosquitto with `persistence true`
# (Debian's, bench/mosquitto.conf with persistence on and its default autosave), in the same run,
# measured with starling-bench (bench/).
#
#   scripts/bench-persistence.sh [OUT.jsonl] [REPS] [CASE-REGEX]
#
# Cases, each on a fresh broker process and data directory per broker and repetition:
# - fanin-q1-persistent: 8 publishers, QoS 1, to a subscriber with a persistent session
#   (clean start 0, expiry 1 h): delivered/s and lost messages;
# - retained-write: 4 publishers write RETAINED_COUNT retained QoS 1 messages on distinct topics:
#   acknowledged writes/s;
# - restart: RESTART_RETAINED retained messages and RESTART_SESSIONS persistent sessions are
#   written, the broker is stopped with SIGTERM and started again on the same directory; the time
#   from the new process's start until it is ready (Starling: /readyz answers 200; Mosquitto: its
#   port accepts) and a resumed session's CONNACK says session_present=1 (Starling in memory has
#   nothing to restore and is left out).
# One JSON line per run goes to OUT; at the end a Markdown table per case shows the median
# [min-max] per broker and the ratio against Mosquitto. Exits 1 when a run failed, a broker died,
# or a restarted broker lost the session.
#
# Bounded: by default about 2 minutes per repetition. Environment: DURATION (seconds of publishing
# in fanin, default 5), RETAINED_COUNT (default 20000), RESTART_RETAINED (default 100000),
# RESTART_SESSIONS (default 10000), BROKERS (default "mosquitto starling-memory starling-sync
# starling-interval"), NICE (see scripts/lib/bench.sh). Not part of CI; it wants an otherwise idle
# machine (the `other CPU` row says how idle it was).
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/lib/bench.sh"

bench_args starling-bench-persistence 1 "$@"
duration=${DURATION:-5}
retained_count=${RETAINED_COUNT:-20000}
restart_retained=${RESTART_RETAINED:-100000}
restart_sessions=${RESTART_SESSIONS:-10000}
read -ra brokers <<<"${BROKERS:-mosquitto starling-memory starling-sync starling-interval}"

cases=(
  "fanin-q1-persistent|--scenario fanin --qos 1 --publishers 8 --persistent --duration $duration"
  "retained-write|--scenario retained --publishers 4 --count $retained_count --duration 120"
)

# shellcheck disable=SC2119 # no further cargo arguments
bench_build
command -v curl >/dev/null || { echo "curl is missing" >&2; exit 1; }
work=$(mktemp -d)
chmod 0755 "$work"
trap 'bench_stop_broker; rm -rf "$work"' EXIT
HTTP_PORT=""

# start BROKER PORT LOG DATA-DIR: one broker of the comparison; sets BROKER_PID (and HTTP_PORT
# for Starling).
start() {
  local broker=$1 port=$2 log=$3 data=$4
  mkdir -p "$data"
  # Mosquitto started as root runs as the user mosquitto, which must be able to write there.
  chmod 0777 "$data"
  case "$broker" in
    mosquitto)
      local conf="${log%.log}.conf"
      {
        sed 's/^persistence false$/persistence true/' "$STARLING_ROOT/bench/mosquitto.conf"
        echo "persistence_location $data/"
        echo "listener $port 127.0.0.1"
      } >"$conf"
      nice -n "$BENCH_NICE" mosquitto -c "$conf" >>"$log" 2>&1 &
      BROKER_PID=$!
      ;;
    starling-*)
      local storage=()
      case "$broker" in
        starling-sync) storage=(--data-dir "$data" --storage-sync sync) ;;
        starling-interval) storage=(--data-dir "$data" --storage-sync interval) ;;
      esac
      HTTP_PORT=$(bench_free_port)
      RUST_LOG=${RUST_LOG:-warn} nice -n "$BENCH_NICE" "$STARLING_BROKER" --mqtt "127.0.0.1:$port" \
        --http "127.0.0.1:$HTTP_PORT" --auth none "${storage[@]}" >>"$log" 2>&1 &
      BROKER_PID=$!
      ;;
    *) echo "unknown broker $broker" >&2; return 1 ;;
  esac
}

# ready BROKER PORT: waits (60 s at most) until the broker takes work: Starling's /readyz answers
# 200, Mosquitto's port accepts.
ready() {
  local broker=$1 port=$2 deadline=$((SECONDS + 60))
  while [ $SECONDS -lt $deadline ]; do
    kill -0 "$BROKER_PID" 2>/dev/null || { echo "the broker (pid $BROKER_PID) exited" >&2; return 1; }
    if [ "$broker" = mosquitto ]; then
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    elif curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/readyz" 2>/dev/null; then
      return 0
    fi
    sleep 0.01
  done
  echo "the broker was not ready within 60 s" >&2
  return 1
}

# stop_gracefully: SIGTERM, and 60 s to write its state and exit (Mosquitto saves its database
# at exit); SIGKILL after that.
stop_gracefully() {
  kill "$BROKER_PID" 2>/dev/null || true
  for _ in $(seq 1 600); do
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.1
  done
  bench_stop_broker
}

record_restart() {
  python3 - "$@" >>"$out" <<'PY'
import json, sys
broker, rep, rc, ms, fill_ms, present, retained, sessions, retained_rc, sessions_rc = sys.argv[1:11]
print(json.dumps({"case": "restart", "broker": broker, "rep": int(rep), "exit": int(rc),
                  "restart_ms": float(ms) if ms else None,
                  "fill_ms": float(fill_ms) if fill_ms else None,
                  "session_present": present == "true", "retained": int(retained),
                  "sessions": int(sessions), "fill_exit": [int(retained_rc), int(sessions_rc)],
                  "broker_alive_at_end": True, "broker_panics": 0}))
PY
}

: >"$out"
for rep in $(seq 1 "$reps"); do
  for c in "${cases[@]}"; do
    name=${c%%|*}
    read -ra args <<<"${c#*|}"
    [[ $name =~ $only ]] || continue
    for broker in "${brokers[@]}"; do
      port=$(bench_free_port)
      log="$work/$name-$broker-$rep.log"
      start "$broker" "$port" "$log" "$work/data-$name-$broker-$rep"
      ready "$broker" "$port"
      bench_run "$out" "$name" "$broker" "$rep" "$log" "${args[@]}" --port "$port"
      bench_stop_broker
      rm -rf "$work/data-$name-$broker-$rep"
    done
  done

  [[ restart =~ $only ]] || continue
  for broker in "${brokers[@]}"; do
    [ "$broker" = starling-memory ] && continue
    port=$(bench_free_port)
    log="$work/restart-$broker-$rep.log"
    data="$work/data-restart-$broker-$rep"
    start "$broker" "$port" "$log" "$data"
    ready "$broker" "$port"
    fill_start=$(date +%s%N)
    retained_rc=0 sessions_rc=0
    timeout 600 nice -n "$BENCH_NICE" "$STARLING_BENCH" --scenario retained --publishers 4 \
      --count "$restart_retained" --duration 300 --port "$port" >"$work/fill.json" || retained_rc=$?
    timeout 600 nice -n "$BENCH_NICE" "$STARLING_BENCH" --scenario sessions \
      --conns "$restart_sessions" --port "$port" >"$work/sessions.json" || sessions_rc=$?
    fill_ms=$(( ($(date +%s%N) - fill_start) / 1000000 ))
    stop_gracefully
    began=$(date +%s%N)
    start "$broker" "$port" "$log" "$data"
    rc=0 ms="" present=false
    if ready "$broker" "$port"; then
      resume=$(timeout 60 "$STARLING_BENCH" --scenario resume --port "$port") || rc=$?
      ms=$(( ($(date +%s%N) - began) / 1000000 ))
      [[ $resume == *'"session_present":true'* ]] && present=true
    else
      rc=1
    fi
    stop_gracefully
    record_restart "$broker" "$rep" "$rc" "$ms" "$fill_ms" "$present" "$restart_retained" \
      "$restart_sessions" "$retained_rc" "$sessions_rc"
    echo "$(date +%T) rep $rep restart $broker: ${ms:-?} ms, session_present=$present" \
      "(fill exits $retained_rc/$sessions_rc: $(head -c 300 "$work/fill.json"))" >&2
    rm -rf "$data"
  done
done

echo
echo "$(mosquitto -h 2>&1 | head -1); starling-broker $("$STARLING_BROKER" --version 2>&1 | awk '{print $NF}')" \
  "(release); $(nproc) cores; raw results: $out"
python3 scripts/lib/bench_persistence_summary.py "$out" "$(IFS=,; echo "${brokers[*]}")"
