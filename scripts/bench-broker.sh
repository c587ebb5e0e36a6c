#!/usr/bin/env bash
# Throughput, latency, memory per idle connection and connection rate of starling-broker next to
# Mosquitto (Debian's, with bench/mosquitto.conf) in the same run, measured with starling-bench
# (bench/).
#
#   scripts/bench-broker.sh [OUT.jsonl] [REPS] [CASE-REGEX]
#
# Builds the release broker and generator, then runs every case REPS times (default 3): within a
# repetition each case runs against Mosquitto, then Starling, each time on a fresh broker process
# on a free loopback port. One JSON line per run goes to OUT; at the end a Markdown table per case
# shows median [min-max] per broker and the ratio starling/mosquitto (of the medians; with several
# repetitions, the bracket holds the lowest and highest ratio of the paired runs). Exits 1 when a
# run failed or a broker died.
#
# Not part of CI: about 2.5 minutes per repetition, and it wants an otherwise idle machine (the
# `other CPU` row tells how idle it was).
# Environment: CASES_FILE (one `name|starling-bench arguments` per line instead of the cases
# below), STARLING_ARGS (more starling-broker flags), NICE (see scripts/lib/bench.sh).
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/lib/bench.sh"

bench_args starling-bench 3 "$@"

cases=(
  "fanin-q0|--scenario fanin --qos 0 --publishers 8 --duration 10"
  "fanin-q1|--scenario fanin --qos 1 --publishers 8 --duration 10"
  "fanin-q0-v311|--scenario fanin --qos 0 --publishers 8 --duration 10 --mqtt-version 3"
  "fanout-q0|--scenario fanout --qos 0 --subscribers 100 --duration 10"
  "latency-q0|--scenario latency --qos 0 --rate 5000 --duration 10 --warmup 1"
  "latency-q1|--scenario latency --qos 1 --rate 5000 --duration 10 --warmup 1"
  "conns|--scenario conns --conns 10000 --duration 5"
)
if [ -n "${CASES_FILE:-}" ]; then
  mapfile -t cases < <(grep -v '^[[:space:]]*\(#\|$\)' "$CASES_FILE")
fi

# shellcheck disable=SC2119 # no further cargo arguments
bench_build
logs=$(mktemp -d)
trap 'bench_stop_broker; rm -rf "$logs"' EXIT
read -ra starling_args <<<"${STARLING_ARGS:-}"
: >"$out"
for rep in $(seq 1 "$reps"); do
  for c in "${cases[@]}"; do
    name=${c%%|*}
    read -ra args <<<"${c#*|}"
    [[ $name =~ $only ]] || continue
    for broker in mosquitto starling; do
      port=$(bench_free_port)
      log="$logs/$name-$broker-$rep.log"
      if [ "$broker" = mosquitto ]; then
        bench_start_mosquitto "$port" "$log"
      else
        bench_start_starling "$port" "$log" "${starling_args[@]}"
      fi
      bench_run "$out" "$name" "$broker" "$rep" "$log" "${args[@]}" --port "$port"
      bench_stop_broker
    done
  done
done

echo
echo "$(mosquitto -h 2>&1 | head -1); starling-broker $("$STARLING_BROKER" --version 2>&1 | awk '{print $NF}')" \
  "(release); $(nproc) cores; raw results: $out"
python3 scripts/lib/bench_summary.py "$out" mosquitto,starling
