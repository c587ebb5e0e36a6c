#!/usr/bin/env python3
"""Summarizes scripts/bench-persistence.sh's results as Markdown tables: per case and broker the
median [min-max] over the repetitions, and each broker's ratio against the first (Mosquitto).

    bench_persistence_summary.py RESULTS.jsonl BROKER[,BROKER...]

Exits 1 when a run failed, a broker died or panicked, or a restarted broker lost the session.
"""

import json
import statistics
import sys
from collections import defaultdict

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


def fmt(value, how):
    if value is None:
        return "-"
    if how == "mib":
        return f"{value / 1024:.1f}"
    if how == "f2":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    brokers = argv[2].split(",")
    base = brokers[0]
    runs, cases = defaultdict(list), []
    for r in rows:
        runs[(r["case"], r["broker"])].append(r)
        if r["case"] not in cases:
            cases.append(r["case"])
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
        others = [b for b in present if b != base]
        head = [f"{b}" for b in present] + [f"{b}/{base}" for b in others if base in present]
        print("| figure | " + " | ".join(head) + " |")
        print("|---|" + "---|" * len(head))
        for key, label, how, ratio in FIGURES[kind]:
            medians, cells = {}, []
            for b in present:
                values = [r.get(key) for r in runs[(case, b)] if r.get(key) is not None]
                if not values:
                    medians[b] = None
                    cells.append("-")
                    continue
                medians[b] = statistics.median(values)
                cell = fmt(medians[b], how)
                if len(values) > 1:
                    cell += f" [{fmt(min(values), how)}-{fmt(max(values), how)}]"
                cells.append(cell)
            if base in present:
                for b in others:
                    a, v = medians.get(base), medians.get(b)
                    cells.append(f"{v / a:.2f}" if ratio and a and v is not None else "")
            print(f"| {label} | " + " | ".join(cells) + " |")
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
