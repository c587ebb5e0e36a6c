#!/usr/bin/env python3
"""Summarizes benchmark results (starling-bench JSON lines, as bench_run in scripts/lib/bench.sh
records them) as Markdown tables: per case and broker the median [min-max] over the repetitions
of the figures that matter for the case, and ratios between brokers.

    bench_summary.py RESULTS.jsonl BROKER[,BROKER...] [B/A ...]

A ratio B/A is the ratio of the medians; with more than one repetition, the brackets hold the
lowest and highest ratio of the runs paired by repetition (the brokers alternate, so the runs of
one repetition ran next to each other in time). Without ratios given, every broker is compared
with the first. Exits 1 when a run failed or a broker died or panicked; QoS 1 losses are noted
(Mosquitto drops what is beyond a subscriber's max_queued_messages).
"""

import json
import re
import statistics
import sys
from collections import defaultdict

# (field, label, format): format "rate" for counts per second, "f2" for two decimals, "mib" for kB
# shown in MiB, "int" for counts.
FIGURES = {
    "flow": [
        ("delivered_per_s", "delivered msg/s (end to end)", "rate"),
        ("delivered_per_s_steady", "delivered msg/s (steady window)", "rate"),
        ("sent_per_s", "published msg/s", "rate"),
        ("lost", "lost messages", "int"),
        ("broker_cpu_util", "broker CPU (cores)", "f2"),
        ("broker_rss_kb_peak", "broker peak RSS (MiB)", "mib"),
        ("loadgen_cpu_util", "generator CPU (cores)", "f2"),
        ("other_cpu_util", "other CPU on the machine (cores)", "f2"),
    ],
    "latency": [
        ("latency_us.p50", "latency p50 (µs)", "f2"),
        ("latency_us.p99", "latency p99 (µs)", "f2"),
        ("latency_us.p999", "latency p99.9 (µs)", "f2"),
        ("latency_us.max", "latency max (µs)", "f2"),
        ("lost", "lost messages", "int"),
        ("broker_cpu_util", "broker CPU (cores)", "f2"),
        ("other_cpu_util", "other CPU on the machine (cores)", "f2"),
    ],
    "conns": [
        ("connected", "connected", "int"),
        ("failed", "failed", "int"),
        ("connects_per_s", "connects/s", "rate"),
        ("rss_bytes_per_conn", "broker RSS per connection (bytes)", "rate"),
        ("rss_kb_open", "broker RSS with all open (MiB)", "mib"),
        ("other_cpu_util", "other CPU on the machine (cores)", "f2"),
    ],
}
# Figures that describe the machine, not a broker: no ratio.
NO_RATIO = {"other_cpu_util", "loadgen_cpu_util", "connected", "failed", "lost"}


def get(record, path):
    for key in path.split("."):
        if not isinstance(record, dict) or record.get(key) is None:
            return None
        record = record[key]
    return record


def load(path):
    """The result lines of `path`, their runs by (case, broker), and the cases in order."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    runs, cases = defaultdict(list), []
    for r in rows:
        runs[(r["case"], r["broker"])].append(r)
        if r["case"] not in cases:
            cases.append(r["case"])
    return rows, runs, cases


def fmt(value, how):
    if value is None:
        return "-"
    if how == "mib":
        return f"{value / 1024:.1f}"
    if how == "f2":
        return f"{value:.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def spread(values, how):
    """The median of `values` (those not None) and its cell: median [min-max]."""
    values = [v for v in values if v is not None]
    if not values:
        return None, "-"
    median = statistics.median(values)
    if len(values) == 1:
        return median, fmt(median, how)
    return median, f"{fmt(median, how)} [{fmt(min(values), how)}-{fmt(max(values), how)}]"


def ratio_cell(runs_b, runs_a, key, median_b, median_a):
    """The ratio of the medians, and with more than one repetition the lowest and highest ratio
    of the runs paired by repetition."""
    if median_a in (None, 0) or median_b is None:
        return "-"
    cell = f"{median_b / median_a:.2f}"
    a_by_rep = {r["rep"]: get(r, key) for r in runs_a}
    paired = [get(r, key) / a_by_rep[r["rep"]] for r in runs_b
              if get(r, key) is not None and a_by_rep.get(r["rep"])]
    if len(paired) > 1:
        cell += f" [{min(paired):.2f}-{max(paired):.2f}]"
    return cell


def table(runs, case, brokers, ratios, figures):
    """Prints the Markdown table of `case`: a row per figure `(key, label, format, ratio?)`, a
    column per broker (median [min-max]) and per ratio `(b, a)`."""
    head = [f"{b} median [min-max]" for b in brokers] + [f"{b}/{a}" for b, a in ratios]
    print("| figure | " + " | ".join(head) + " |")
    print("|---|" + "---|" * len(head))
    for key, label, how, with_ratio in figures:
        medians, cells = {}, []
        for b in brokers:
            medians[b], cell = spread([get(r, key) for r in runs[(case, b)]], how)
            cells.append(cell)
        for b, a in ratios:
            cells.append(ratio_cell(runs[(case, b)], runs[(case, a)], key, medians[b], medians[a])
                         if with_ratio else "")
        print(f"| {label} | " + " | ".join(cells) + " |")


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    rows, runs, cases = load(argv[1])
    brokers = argv[2].split(",")
    ratios = [tuple(r.split("/")) for r in argv[3:]] or [(b, brokers[0]) for b in brokers[1:]]
    problems = []
    for case in cases:
        of_case = [r for r in rows if r["case"] == case]
        example = next((r for r in of_case if "scenario" in r), of_case[0])
        scenario = example.get("scenario") or example["args"].split("--scenario ")[-1].split()[0]
        kind = {"conns": "conns", "latency": "latency"}.get(scenario, "flow")
        print(f"\n### {case}\n")
        args = re.sub(r" ?--port \d+", "", example.get("args", ""))
        print(f"`starling-bench {args}` (each run on its own port)\n")
        figures = [(key, label, how, key not in NO_RATIO) for key, label, how in FIGURES[kind]]
        table(runs, case, brokers, ratios, figures)
        notes = []
        for b in brokers:
            mine = runs[(case, b)]
            failed = [r for r in mine if r.get("exit") != 0 or r.get("error")]
            died = [r["rep"] for r in mine if not r.get("broker_alive_at_end", True) or r.get("broker_panics")]
            lost = [r["rep"] for r in mine if r.get("qos") == 1 and r.get("lost")]
            note = f"{b}: {len(mine)} runs"
            if failed:
                why = failed[0].get("error") or f"exit {failed[0].get('exit')}"
                note += f", failed in repetitions {[r['rep'] for r in failed]} ({why})"
            if died:
                note += f", broker died or panicked in repetitions {died}"
            if lost:
                note += f", QoS 1 messages lost in repetitions {lost}"
            if failed or died:
                problems.append(f"{case}: {note}")
            notes.append(note)
        print("\n" + "; ".join(notes))
    if problems:
        print("\nproblems:\n" + "\n".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
