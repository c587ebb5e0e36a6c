#!/usr/bin/env bash
# What the on-publish hook costs: fan-in throughput (starling-bench, 8 publishers, QoS 0 and QoS 1)
# of starling-broker with a hook that returns its input unchanged (broker/examples/echo_hook.rs),
# of the same broker without a hook, and of Mosquitto (Debian's, with bench/mosquitto.conf) as
# the reference, all in the same run.
#
#   scripts/bench-hook.sh [OUT.jsonl] [REPS] [DURATION]
#
# Within a repetition every case runs against Mosquitto, Starling without a hook and Starling with
# the echo hook, each on a fresh broker process on a free loopback port; the hook server runs for
# the whole script. Prints a Markdown table per case: median [min-max] per broker and the ratios
# starling/mosquitto, starling-hook/mosquitto and starling-hook/starling. Exits 1 when a run
# failed or a broker died.
#
# Not part of CI: it wants an otherwise idle machine. REPS defaults to 3, DURATION to 10 s.
# Environment: NICE (see scripts/lib/bench.sh).
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/lib/bench.sh"

bench_args starling-bench-hook 3 "$@"
duration=${3:-10}

bench_build --example echo_hook
echo_hook="$TARGET_DIR/release/examples/echo_hook"

work=$(mktemp -d)
hook_pid=""
cleanup() {
  bench_stop_broker
  if [ -n "$hook_pid" ]; then kill "$hook_pid" 2>/dev/null || true; wait "$hook_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

"$echo_hook" --write-key "$work/key.json"
hook_port=$(bench_free_port)
"$echo_hook" "127.0.0.1:$hook_port" >"$work/echo-hook.log" 2>&1 &
hook_pid=$!
bench_wait_port "$hook_port" "$hook_pid"
cat >"$work/hook.toml" <<TOML
[hook]
url = "http://127.0.0.1:$hook_port/"
key_file = "$work/key.json"
allow_http = true
allow_private_addresses = true
TOML

: >"$out"
for rep in $(seq 1 "$reps"); do
  for qos in 0 1; do
    name="fanin-q$qos"
    for broker in mosquitto starling starling-hook; do
      port=$(bench_free_port)
      log="$work/$name-$broker-$rep.log"
      case $broker in
        mosquitto) bench_start_mosquitto "$port" "$log" ;;
        starling) bench_start_starling "$port" "$log" ;;
        starling-hook) bench_start_starling "$port" "$log" --config "$work/hook.toml" ;;
      esac
      bench_run "$out" "$name" "$broker" "$rep" "$log" --scenario fanin --qos "$qos" --publishers 8 \
        --duration "$duration" --port "$port"
      bench_stop_broker
    done
  done
done

echo
echo "$(mosquitto -h 2>&1 | head -1); starling-broker $("$STARLING_BROKER" --version 2>&1 | awk '{print $NF}')" \
  "(release); $(nproc) cores; raw results: $out"
python3 scripts/lib/bench_summary.py "$out" mosquitto,starling,starling-hook \
  starling/mosquitto starling-hook/mosquitto starling-hook/starling
