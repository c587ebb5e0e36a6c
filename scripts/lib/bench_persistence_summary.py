#!/usr/bin/env python3
"""Summarizes scripts/bench-persistence.sh's results as Markdown tables: per case and broker the
median [min-max] over the repetitions, and each broker's ratio against the first (Mosquitto).

    bench_persistence_summary.py RESULTS.jsonl BROKER[,BROKER...]

Exits 1 when a run failed, a broker died or panicked, or a restarted broker lost the session.
"""

import sys

from bench_summary import load, table

# (field, label, format, ratio?) per case kind.
FIGURES = {
    "fanin": [
        ("delivered_per_s", "delivered msg/s (end to end)", "rate", True),
        ("delivered_per_s_steady", "delivered msg/s (steady window)", "rate", True),
        ("sent_per_s", "published msg/s", "rate", True),
        ("lost", "lost messages", "int", False),
        ("broker_cpu_util", "broker CPU (cores)", "f2", True),
        ("broker_rss_kb_peak", "broker peak RSS (MiB)", "mib", True),
        ("other_cpu_util", "other CPU on the machine (cores)", "f2", False),
    ],
    "retained": [
        ("acked_per_s", "retained writes acknowledged/s", "rate", True),
        ("acked", "acknowledged", "int", False),
        ("broker_cpu_util", "broker CPU (cores)", "f2", True),
        ("other_cpu_util", "other CPU on the machine (cores)", "f2", False),
    ],
    "restart": [
        ("restart_ms", "start to ready and session resumed (ms)", "rate", True),
        ("fill_ms", "writing the state (ms)", "rate", True),
    ],
}


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    _, runs, cases = load(argv[1])
    brokers = argv[2].split(",")
    base = brokers[0]
    problems = []
    for case in cases:
        kind = "restart" if case == "restart" else ("retained" if "retained" in case else "fanin")
        present = [b for b in brokers if runs[(case, b)]]
        print(f"\n### {case}\n")
        example = runs[(case, present[0])][0]
        if "args" in example:
            print(f"`starling-bench {example['args']}`\n")
        else:
            print(f"{example.get('retained')} retained messages, {example.get('sessions')} "
                  "sessions, SIGTERM, start again on the same directory\n")
        ratios = [(b, base) for b in present if b != base] if base in present else []
        table(runs, case, present, ratios, FIGURES[kind])
        for b in present:
            for r in runs[(case, b)]:
                if r.get("exit") != 0 or r.get("error"):
                    problems.append(f"{case} {b} rep {r['rep']}: {r.get('error') or 'exit ' + str(r.get('exit'))}")
                if not r.get("broker_alive_at_end", True) or r.get("broker_panics"):
                    problems.append(f"{case} {b} rep {r['rep']}: the broker died or panicked")
                if case == "restart" and not r.get("session_present"):
                    # Mosquitto's own persistence is the reference, not under test: noted only.
                    line = f"restart {b} rep {r['rep']}: the session was not resumed"
                    if b.startswith("starling"):
                        problems.append(line)
                    else:
                        print(f"\n{line} (session_present=0 after its restart)")
                if case == "restart" and any(r.get("fill_exit", [])):
                    problems.append(f"restart {b} rep {r['rep']}: writing the state failed {r['fill_exit']}")
                if kind == "fanin" and r.get("lost"):
                    print(f"\n{b} rep {r['rep']}: {r['lost']} QoS 1 messages lost")
    if problems:
        print("\nproblems:\n" + "\n".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
