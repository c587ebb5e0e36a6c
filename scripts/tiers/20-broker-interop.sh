#!/usr/bin/env bash
# Interoperability of starling-broker with independent clients: Mosquitto's mosquitto_pub and
# mosquitto_sub (MQTT 3.1.1 and 5.0) and paho-mqtt in Python (tests/python/test_broker_*.py).
#
# Builds the broker (debug), starts it on free loopback ports, runs pytest with the address in
# STARLING_MQTT_HOST / STARLING_MQTT_PORT / STARLING_HTTP_PORT, and stops the broker on exit.
source "$(dirname "$0")/../lib/tier.sh"

need mosquitto_pub mosquitto_sub

cargo build -q -p starling-broker --bin starling-broker
target_dir=$(target_dir)
bin="$target_dir/debug/starling-broker"

work=$(mktemp -d)
broker_pid=
stop_broker() {
  if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
    kill -TERM "$broker_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap stop_broker EXIT

started=false
for attempt in 1 2 3; do
  mqtt_port=$(free_port)
  http_port=$(free_port)
  "$bin" --mqtt "127.0.0.1:$mqtt_port" --http "127.0.0.1:$http_port" --auth none \
    >"$work/broker.log" 2>&1 </dev/null &
  broker_pid=$!
  # Ready when /readyz answers 200 (listeners bound), within 10 s.
  for _ in $(seq 100); do
    if curl -fsS "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1; then started=true; break; fi
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
  done
  $started && break
  echo "broker did not start (attempt $attempt):"; tail -20 "$work/broker.log"
  kill -KILL "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
done
$started || exit 1
echo "starling-broker pid $broker_pid on mqtt 127.0.0.1:$mqtt_port, http 127.0.0.1:$http_port"

export STARLING_MQTT_HOST=127.0.0.1 STARLING_MQTT_PORT=$mqtt_port STARLING_HTTP_PORT=$http_port
status=0
timeout 600 python3 -m pytest -q -p no:cacheprovider tests/python/test_broker_*.py || status=$?

if ! kill -0 "$broker_pid" 2>/dev/null; then
  echo "the broker died during the tests:"; tail -50 "$work/broker.log"; exit 1
fi
if grep -q "panicked" "$work/broker.log"; then
  echo "the broker panicked:"; grep -A5 "panicked" "$work/broker.log"; exit 1
fi
[ "$status" -eq 0 ] || { echo "broker log (last 40 lines):"; tail -40 "$work/broker.log"; }
exit "$status"
