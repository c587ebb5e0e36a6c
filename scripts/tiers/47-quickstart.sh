#!/usr/bin/env bash
# The README's quick start as a new user runs it: the first command, literally, in a fresh data
# directory; then the `mosquitto_sub` line it printed, and a message published with the printed
# `mosquitto_pub` lines must get through.
#
# The release build skips LTO and uses 16 codegen units here (environment only; the command is
# the README's), which keeps CI within its time.
source "$(dirname "$0")/../lib/tier.sh"
need mosquitto_pub mosquitto_sub curl

cmd=$(awk '/^```sh$/{f=1;next} /^```$/{if(f)exit} f' README.md | head -1 | sed 's/ *#.*$//')
if [ "$cmd" != "cargo run --release -p starling-dev" ]; then
  echo "the README's first command is not the quick start any more: '$cmd'"
  exit 1
fi
for port in 8000 8001 1883 8080 8883 8884 9090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is taken on this machine; the quick start needs its default ports free"
    exit 1
  fi
done

work=$(mktemp -d)
out="$work/dev.out"
export XDG_DATA_HOME="$work/data"
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
cargo build --release -q -p starling-dev
setsid bash -c "$cmd" >"$out" 2>&1 &
dev_pid=$!
sub_pid=
cleanup() {
  [ -n "$sub_pid" ] && kill "$sub_pid" 2>/dev/null || true
  kill -TERM -- "-$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

deadline=$((SECONDS + 120))
until grep -q '^More tokens:' "$out" 2>/dev/null; do
  if ! kill -0 "$dev_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
    echo "starling-dev did not start:"; cat "$out"; exit 1
  fi
  sleep 0.2
done
echo "--- what the quick start printed"
cat "$out"

sub_line=$(grep -m1 '^ *mosquitto_sub ' "$out" | sed 's/^ *//')
token_line=$(grep -m1 '^ *TOKEN=\$(curl ' "$out" | sed 's/^ *//')
pub_line=$(grep -m1 '^ *mosquitto_pub ' "$out" | sed 's/^ *//')
[ -n "$sub_line" ] && [ -n "$token_line" ] && [ -n "$pub_line" ] || { echo "the printed commands are missing"; exit 1; }

# The printed subscriber, stopping after one message.
bash -c "$sub_line -C 1 -W 60" >"$work/sub.out" 2>&1 &
sub_pid=$!
eval "$token_line"
[ -n "${TOKEN:-}" ] || { echo "no token from the printed curl line"; exit 1; }
# Publish until the subscriber (which may still be subscribing) has the message.
deadline=$((SECONDS + 60))
until grep -q 'demo/hello hello from mosquitto' "$work/sub.out"; do
  if [ $SECONDS -ge $deadline ]; then
    echo "no message through the quick start within 60 s:"; cat "$work/sub.out"; exit 1
  fi
  if ! kill -0 "$sub_pid" 2>/dev/null && ! grep -q 'demo/hello' "$work/sub.out"; then
    echo "the printed mosquitto_sub ended without the message:"; cat "$work/sub.out"; exit 1
  fi
  eval "$pub_line"
  sleep 0.2
done
echo "quick start: the printed mosquitto_sub received: $(cat "$work/sub.out")"
echo "quickstart: 1 passed, 0 failed"
