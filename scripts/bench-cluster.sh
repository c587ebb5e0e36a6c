#!/usr/bin/env bash
# Throughput and latency between replicas of one broker next to one replica and a single node, in
# the same run, measured with starling-bench (bench/):
#
#   scripts/bench-cluster.sh [OUT.jsonl] [REPS] [CASE-REGEX]
#
# Builds the release broker and generator and starts one `nats-server -js` (Debian's) on
# loopback. Within a repetition each case runs three times, each on fresh broker processes on
# free loopback ports:
# - `mosquitto`: Debian's Mosquitto with bench/mosquitto.conf, the yardstick;
# - `single`: one broker without [cluster];
# - `one-replica`: replica A of a two-replica broker, publishers and subscribers on A;
# - `a-to-b`: the same two replicas, publishers on A and subscribers on B
#   (`--subscriber-port`);
# - `three`: three replicas, publishers on A and the subscribers spread over A, B and C in
#   turn (fan-out across three replicas).
# One JSON line per run goes to OUT; at the end a Markdown table per case shows median [min-max]
# of each and the ratios one-replica/single, a-to-b/single, three/single, a-to-b/one-replica,
# single/mosquitto and a-to-b/mosquitto. Exits 1 when a run failed or a
# broker died.
#
# Not part of CI: it wants an otherwise idle machine (the `other CPU` row tells how idle it was).
# Environment: NICE (see scripts/lib/bench.sh).
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/lib/bench.sh"

bench_args starling-bench-cluster 3 "$@"

cases=(
  "fanin-q0|--scenario fanin --qos 0 --publishers 8 --duration 10"
  "fanin-q1|--scenario fanin --qos 1 --publishers 8 --duration 10"
  "fanout-q0|--scenario fanout --qos 0 --subscribers 100 --duration 10"
  "latency-q0|--scenario latency --qos 0 --rate 5000 --duration 10 --warmup 1"
)

# shellcheck disable=SC2119 # no further cargo arguments
bench_build
apt_install_missing nats-server
PATH="$PATH:/usr/sbin"
logs=$(mktemp -d)
NATS_PID=""
REPLICA_B_PID=""
REPLICA_C_PID=""
stop_all() {
  bench_stop_broker
  for p in $REPLICA_B_PID $REPLICA_C_PID $NATS_PID; do
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
}
trap 'stop_all; rm -rf "$logs"' EXIT

nats_port=$(bench_free_port)
nice -n "$BENCH_NICE" nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$logs/js" -m 0 \
  >"$logs/nats.log" 2>&1 </dev/null &
NATS_PID=$!
bench_wait_port "$nats_port" "$NATS_PID"
nats=(--cluster-nats "nats://127.0.0.1:$nats_port")

# start_replica ID PORT LOG: a replica of the broker on PORT (BROKER_PID), once /readyz
# answers 200 (it reached NATS and read its tenants' state).
start_replica() {
  local http
  http=$(bench_free_port)
  STARLING_BROKER__CLUSTER__REPLICA_ID=$1 RUST_LOG=${RUST_LOG:-warn} nice -n "$BENCH_NICE" \
    "$STARLING_BROKER" --mqtt "127.0.0.1:$2" --http "127.0.0.1:$http" --auth none "${nats[@]}" \
    >"$3" 2>&1 </dev/null &
  BROKER_PID=$!
  bench_wait_port "$2" "$BROKER_PID"
  for _ in $(seq 300); do
    if curl -fsS "http://127.0.0.1:$http/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "replica $1 never became ready" >&2
  return 1
}

: >"$out"
for rep in $(seq 1 "$reps"); do
  for c in "${cases[@]}"; do
    name=${c%%|*}
    read -ra args <<<"${c#*|}"
    [[ $name =~ $only ]] || continue

    port=$(bench_free_port)
    bench_start_mosquitto "$port" "$logs/$name-mosquitto-$rep.log"
    bench_run "$out" "$name" mosquitto "$rep" "$logs/$name-mosquitto-$rep.log" "${args[@]}" --port "$port"
    bench_stop_broker

    port=$(bench_free_port)
    bench_start_starling "$port" "$logs/$name-single-$rep.log"
    bench_run "$out" "$name" single "$rep" "$logs/$name-single-$rep.log" "${args[@]}" --port "$port"
    bench_stop_broker

    for mode in one-replica a-to-b three; do
      port_b=$(bench_free_port)
      start_replica b "$port_b" "$logs/$name-$mode-b-$rep.log"
      REPLICA_B_PID=$BROKER_PID
      if [ "$mode" = three ]; then
        port_c=$(bench_free_port)
        start_replica c "$port_c" "$logs/$name-$mode-c-$rep.log"
        REPLICA_C_PID=$BROKER_PID
      fi
      port=$(bench_free_port)
      start_replica a "$port" "$logs/$name-$mode-a-$rep.log"
      sub=()
      [ "$mode" = a-to-b ] && sub=(--subscriber-port "$port_b")
      [ "$mode" = three ] && sub=(--subscriber-port "$port,$port_b,$port_c")
      bench_run "$out" "$name" "$mode" "$rep" "$logs/$name-$mode-a-$rep.log" "${args[@]}" \
        --port "$port" "${sub[@]}"
      bench_stop_broker
      for p in $REPLICA_B_PID $REPLICA_C_PID; do
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
      done
      REPLICA_B_PID="" REPLICA_C_PID=""
    done
  done
done

echo
echo "starling-broker $("$STARLING_BROKER" --version 2>&1 | awk '{print $NF}') (release);" \
  "$(nats-server --version 2>&1 | head -1); $(nproc) cores; raw results: $out"
python3 scripts/lib/bench_summary.py "$out" mosquitto,single,one-replica,a-to-b,three \
  one-replica/single a-to-b/single three/single a-to-b/one-replica single/mosquitto a-to-b/mosquitto
