#!/usr/bin/env bash
# Throughput of starling-broker with an on-publish hook that returns its input unchanged, next
# to the same broker without a hook, in the same run (mqttbench fan-in, QoS 0 and QoS 1).
#
#   scripts/bench-hook.sh [OUT.jsonl] [REPS] [DURATION]
#
# Not part of CI: it wants an otherwise idle machine.
# Environment: MQTTBENCH_DIR (default ../shared/tools/mqttbench).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-/tmp/starling-bench-hook-$(date +%Y%m%d-%H%M%S).jsonl}
reps=${2:-3}
duration=${3:-10}
bench_dir=${MQTTBENCH_DIR:-$root/../shared/tools/mqttbench}

cargo build --release -q -p starling-broker --bin starling-broker --example echo_hook
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
broker="$target_dir/release/starling-broker"
echo_hook="$target_dir/release/examples/echo_hook"
MQTTBENCH=$("$bench_dir/build.sh")

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}

"$echo_hook" --write-key "$work/key.json"
hook_port=$(free_port)
"$echo_hook" "127.0.0.1:$hook_port" >/dev/null &
pids+=($!)
wait_port "$hook_port"
cat >"$work/hook.toml" <<TOML
[hook]
url = "http://127.0.0.1:$hook_port/"
key_file = "$work/key.json"
allow_http = true
allow_private_addresses = true
TOML
echo "" >"$work/none.toml"

: >"$out"
for rep in $(seq "$reps"); do
  for qos in 0 1; do
    for mode in none hook; do
      port=$(free_port)
      RUST_LOG=warn "$broker" --config "$work/$mode.toml" --mqtt "127.0.0.1:$port" \
        --http 127.0.0.1:0 --auth none >/dev/null 2>"$work/broker.log" &
      bpid=$!
      wait_port "$port"
      "$MQTTBENCH" --port "$port" --scenario fanin --qos "$qos" --duration "$duration" \
        --broker-pid "$bpid" --label "$mode" >>"$out"
      kill "$bpid"
      wait "$bpid" 2>/dev/null || true
      echo "rep $rep qos $qos $mode: $(tail -n1 "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["delivered_per_s"]), "msg/s, lost", r["lost"])')"
    done
  done
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| QoS | no hook (msg/s) | echo hook (msg/s) | hook / no hook | lost with hook |")
print("|---|---|---|---|---|")
for qos in (0, 1):
    med = {}
    lost = 0
    for mode in ("none", "hook"):
        v = [r["delivered_per_s"] for r in rows if r["label"] == mode and r["qos"] == qos]
        med[mode] = statistics.median(v)
        if mode == "hook":
            lost = sum(r["lost"] for r in rows if r["label"] == mode and r["qos"] == qos)
    print(f"| {qos} | {med['none']:,.0f} | {med['hook']:,.0f} | {med['hook']/med['none']:.2f} | {lost} |")
PY
echo "raw results: $out"
