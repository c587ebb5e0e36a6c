#!/usr/bin/env bash
# Replicas of one broker joined through NATS: a 3-node `nats-server -js` cluster (Debian's
# package) and 3 starling-broker replicas on loopback, each replica told all three NATS
# servers (its own first), exercised with mosquitto_pub and mosquitto_sub:
#
# - messages published on one replica reach subscribers on the others, in order, at QoS 0, 1
#   and 2;
# - a retained message published on one replica is served by every replica (kept in a
#   replicated JetStream bucket);
# - a replica killed with -9 leaves the others serving, and once restarted serves every
#   retained message, those published while it was down too;
# - a NATS node killed and restarted: the replica connected to it moves to another node.
#
# Then the broker's Rust tests against a real nats-server (tests/cluster.rs: escaped topics
# and properties, session takeover with 0x8E, refusal and readiness while NATS is down,
# retained messages from JetStream after restarts, their deletion and expiry, a retained
# QoS 1 publication refused without JetStream, persistent sessions resumed on another replica
# with what they missed and their QoS 2 PUBRELs), and tests/python/test_cluster_failover.py
# (its own 3-node NATS cluster and 3 replicas, paho-mqtt numbered QoS 1/2 streams: a replica
# killed with -9 under load, then every replica restarted one by one with SIGTERM under load;
# every acknowledged message reaches every persistent subscriber, none twice at QoS 2; and a
# replica killed with -9 under clients with wills: the survivors publish each will once, after
# its delay, none of a client that came back within it, and end its sessions at their expiry).
source "$(dirname "$0")/../lib/tier.sh"

PATH="$PATH:/usr/sbin"
need nats-server mosquitto_pub mosquitto_sub curl

cargo build -q -p starling-broker --bin starling-broker
bin="$(target_dir)/debug/starling-broker"

work=$(mktemp -d)
declare -A nats_pid broker_pid
bg_pids=()
cleanup() {
  for p in "${bg_pids[@]}" "${broker_pid[@]}" "${nats_pid[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${bg_pids[@]}" "${broker_pid[@]}" "${nats_pid[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# until_true SECONDS WHAT CMD...: runs CMD every 0.1 s until it succeeds; fails after SECONDS.
until_true() {
  local secs=$1 what=$2
  shift 2
  for _ in $(seq $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "FAILED: $what (after ${secs} s)"
  return 1
}

# --- NATS: three nodes with JetStream, routed to each other.
declare -A client_port cluster_port monitor_port
for n in 1 2 3; do
  client_port[$n]=$(free_port)
  cluster_port[$n]=$(free_port)
  monitor_port[$n]=$(free_port)
done
routes="nats-route://127.0.0.1:${cluster_port[1]}, nats-route://127.0.0.1:${cluster_port[2]}, nats-route://127.0.0.1:${cluster_port[3]}"
start_nats() {
  local n=$1
  mkdir -p "$work/js$n"
  cat >"$work/nats$n.conf" <<EOF
server_name: n$n
listen: 127.0.0.1:${client_port[$n]}
http: 127.0.0.1:${monitor_port[$n]}
jetstream { store_dir: "$work/js$n" }
cluster {
  name: starling-test
  listen: 127.0.0.1:${cluster_port[$n]}
  routes: [ $routes ]
}
EOF
  nats-server -c "$work/nats$n.conf" >"$work/nats$n.log" 2>&1 </dev/null &
  nats_pid[$n]=$!
}
routed() { # routed N: node N has routes to both others
  curl -fsS "http://127.0.0.1:${monitor_port[$1]}/routez" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["num_routes"] >= 2 else 1)'
}
for n in 1 2 3; do start_nats "$n"; done
for n in 1 2 3; do until_true 30 "NATS node $n routed to the others" routed "$n"; done
echo "NATS cluster: ${client_port[1]}, ${client_port[2]}, ${client_port[3]}"

# --- Three replicas, replica i told node i first.
declare -A mqtt_port http_port
start_replica() {
  local r=$1 urls=() n
  mqtt_port[$r]=$(free_port)
  http_port[$r]=$(free_port)
  urls+=(--cluster-nats "nats://127.0.0.1:${client_port[$r]}")
  for n in 1 2 3; do
    [ "$n" = "$r" ] || urls+=(--cluster-nats "nats://127.0.0.1:${client_port[$n]}")
  done
  STARLING_BROKER__CLUSTER__REPLICA_ID="replica-$r" "$bin" --auth none \
    --mqtt "127.0.0.1:${mqtt_port[$r]}" --http "127.0.0.1:${http_port[$r]}" "${urls[@]}" \
    >"$work/broker$r.log" 2>&1 </dev/null &
  broker_pid[$r]=$!
}
ready() { curl -fsS "http://127.0.0.1:${http_port[$1]}/readyz" >/dev/null; }
for r in 1 2 3; do start_replica "$r"; done
for r in 1 2 3; do until_true 30 "replica $r ready" ready "$r"; done

failures=0
check() { # check WHAT CMD...: counts a failure instead of stopping, so every check reports
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; failures=$((failures + 1)); fi
}

# sub_to FILE REPLICA TOPIC QOS: a subscriber writing "topic payload" lines to FILE.
sub_to() {
  mosquitto_sub -h 127.0.0.1 -p "${mqtt_port[$2]}" -V mqttv5 -q "$4" -v -t "$3" -t 'probe/#' >"$1" &
  bg_pids+=($!)
}
# linked REPLICA FILE: a probe published on REPLICA shows up in FILE.
linked() {
  mosquitto_pub -h 127.0.0.1 -p "${mqtt_port[$1]}" -t probe/x -m p
  grep -q '^probe/x p$' "$2"
}
# in_order FILE TOPIC N: FILE has exactly the payloads 1..N on TOPIC, in order.
in_order() {
  [ "$(grep -c "^$2 " "$1")" -eq "$3" ] || return 1
  diff <(grep "^$2 " "$1" | cut -d' ' -f2) <(seq 1 "$3") >/dev/null
}
has_count() { [ "$(grep -c "^$2 " "$1")" -ge "$3" ]; }

# 1. Publisher on replica 1; subscribers on replicas 2 and 3, and on 1 itself.
N=200
for r in 1 2 3; do sub_to "$work/sub$r" "$r" 'c/#' 2; done
for r in 1 2 3; do until_true 20 "replica 1 reaches the subscriber on replica $r" linked 1 "$work/sub$r"; done
for q in 0 1 2; do
  seq 1 "$N" | mosquitto_pub -h 127.0.0.1 -p "${mqtt_port[1]}" -V mqttv5 -q "$q" -t "c/q$q" -l
done
for r in 1 2 3; do
  for q in 0 1 2; do
    until_true 20 "replica $r got $N messages at QoS $q" has_count "$work/sub$r" "c/q$q" "$N" || true
    check "replica $r: $N QoS $q messages from replica 1, in order, once each" in_order "$work/sub$r" "c/q$q" "$N"
  done
done

# 2. A retained message published on replica 2 is served by every replica.
mosquitto_pub -h 127.0.0.1 -p "${mqtt_port[2]}" -V mqttv5 -q 1 -r -t retained/x -m kept
retained_on() { # retained_on REPLICA TOPIC PAYLOAD
  [ "$(mosquitto_sub -h 127.0.0.1 -p "${mqtt_port[$1]}" -t "$2" -C 1 -W 2 2>/dev/null)" = "$3" ]
}
for r in 1 2 3; do
  until_true 10 "replica $r serves the retained message" retained_on "$r" retained/x kept || true
  check "replica $r serves the retained message published on replica 2" retained_on "$r" retained/x kept
done

# 3. Replica 3 killed with -9: replicas 1 and 2 go on.
kill -KILL "${broker_pid[3]}"
wait "${broker_pid[3]}" 2>/dev/null || true
unset 'broker_pid[3]'
seq 1 "$N" | mosquitto_pub -h 127.0.0.1 -p "${mqtt_port[1]}" -q 1 -t c/after-kill -l
until_true 20 "replica 2 got the messages after replica 3 died" has_count "$work/sub2" c/after-kill "$N" || true
check "after replica 3 was killed, replica 2 gets replica 1's messages in order" in_order "$work/sub2" c/after-kill "$N"

# 3b. Replica 3 restarted: ready only once it has read the retained messages from JetStream,
# it serves them all, the one published while it was down too.
mosquitto_pub -h 127.0.0.1 -p "${mqtt_port[1]}" -V mqttv5 -q 1 -r -t retained/while-down -m later
start_replica 3
until_true 30 "replica 3 ready again" ready 3 || true
check "replica 3 restarted serves the retained message published before it died" retained_on 3 retained/x kept
check "replica 3 restarted serves the retained message published while it was down" retained_on 3 retained/while-down later

# 4. NATS node 2 (replica 2's first server) killed: replica 2 moves to another node.
kill -KILL "${nats_pid[2]}"
wait "${nats_pid[2]}" 2>/dev/null || true
until_true 30 "replica 2 ready again after its NATS node died" ready 2 || true
check "replica 2 is ready with NATS node 2 down" ready 2
until_true 20 "replica 1 reaches replica 2 again" linked 1 "$work/sub2" || true
seq 1 "$N" | mosquitto_pub -h 127.0.0.1 -p "${mqtt_port[1]}" -q 1 -t c/node-down -l
until_true 20 "replica 2 got the messages with a NATS node down" has_count "$work/sub2" c/node-down "$N" || true
check "with NATS node 2 down, replica 2 gets replica 1's messages in order" in_order "$work/sub2" c/node-down "$N"
start_nats 2
until_true 30 "NATS node 2 routed again" routed 2 || true
check "NATS node 2 rejoined the cluster" routed 2
seq 1 "$N" | mosquitto_pub -h 127.0.0.1 -p "${mqtt_port[2]}" -q 1 -t c/node-back -l
until_true 20 "replica 1 got replica 2's messages" has_count "$work/sub1" c/node-back "$N" || true
check "with NATS node 2 back, replica 1 gets replica 2's messages in order" in_order "$work/sub1" c/node-back "$N"

# 5. The metrics say what crossed.
metric() { curl -fsS "http://127.0.0.1:${http_port[$1]}/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }
positive() { [ "$(metric "$1" "$2" | cut -d. -f1)" -gt 0 ] 2>/dev/null; }
check "replica 1 counts messages sent to the others" positive 1 starling_cluster_sent_total
check "replica 2 counts messages received from the others" positive 2 starling_cluster_received_total
rtt_measured() { [ -n "$(metric "$1" starling_cluster_nats_rtt_seconds)" ] && [ "$(metric "$1" starling_cluster_nats_rtt_seconds)" != 0.0 ]; }
until_true 10 "replica 1 measured the NATS round trip" rtt_measured 1 || true
check "replica 1 measures the round trip to NATS" rtt_measured 1

for r in 1 2 3; do
  if ! kill -0 "${broker_pid[$r]}" 2>/dev/null; then
    echo "FAILED: replica $r died"; tail -30 "$work/broker$r.log"; failures=$((failures + 1))
  fi
  if grep -q panicked "$work/broker$r.log"; then
    echo "FAILED: replica $r panicked"; grep -A5 panicked "$work/broker$r.log"; failures=$((failures + 1))
  fi
done
if [ "$failures" -gt 0 ]; then
  for r in 1 2 3; do echo "--- replica $r log (last 20 lines)"; tail -20 "$work/broker$r.log"; done
fi

# 6. The broker's Rust tests against a real nats-server.
cargo nextest run -p starling-broker --test cluster || failures=$((failures + 1))

# 7. Replicas killed and restarted under load, persistent subscribers checked message by message.
STARLING_BROKER_BIN="$bin" timeout 900 python3 -m pytest -q -s -p no:cacheprovider \
  tests/python/test_cluster_failover.py || failures=$((failures + 1))

echo "cluster checks: $failures failed"
[ "$failures" -eq 0 ]
