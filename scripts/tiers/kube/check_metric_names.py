#!/usr/bin/env python3
"""Checks that every Starling metric the chart's alerts and dashboard name really exists.

    check_metric_names.py RENDERED_CHART.yaml SCRAPE.txt...

RENDERED_CHART.yaml is `helm template` output with the PrometheusRule and the dashboard
ConfigMap; each SCRAPE.txt is a real /metrics answer (broker, api, operator). A name counts as
existing when a sample of it appears there. A labelled family with no series yet (drops that
never happened, hook requests of a broker without a hook) is not in any answer at all: such a
name counts only when the family is registered under it in broker/src/metrics.rs (prefix
starling_), operator/src/metrics.rs (prefix starling_operator_) or api/src/metrics.rs, and the
output says which names were found only there. Prints what is missing and exits 1.
"""

import json
import re
import sys

import yaml

NAME = re.compile(r"\bstarling_[a-z0-9_]+\b")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def wanted(path):
    names = {}
    for doc in yaml.safe_load_all(open(path, encoding="utf-8")):
        if not doc:
            continue
        if doc["kind"] == "PrometheusRule":
            for group in doc["spec"]["groups"]:
                for rule in group["rules"]:
                    for n in NAME.findall(rule["expr"]):
                        names.setdefault(n, f"alert {rule['alert']}")
        elif doc["kind"] == "ConfigMap" and "starling.json" in doc.get("data", {}):
            dash = json.loads(doc["data"]["starling.json"])
            for panel in dash["panels"]:
                for t in panel.get("targets", []):
                    for n in NAME.findall(t["expr"]):
                        names.setdefault(n, f"panel {panel['title']!r}")
            for var in dash["templating"]["list"]:
                q = var.get("query")
                if isinstance(q, dict):
                    for n in NAME.findall(q.get("query", "")):
                        names.setdefault(n, f"variable {var['name']}")
    return names


def exposed(paths):
    samples, families = set(), set()
    for path in paths:
        for line in open(path, encoding="utf-8"):
            if line.startswith("# TYPE "):
                families.add(line.split()[2])
            elif line.strip() and not line.startswith("#"):
                samples.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return samples, families


REGISTERED = re.compile(r'register\(\s*"([a-z0-9_]+)"')
SOURCES = (("broker/src/metrics.rs", "starling_"), ("operator/src/metrics.rs", "starling_operator_"),
           ("api/src/metrics.rs", ""))


def registered():
    names = set()
    for path, prefix in SOURCES:
        names |= {prefix + n for n in REGISTERED.findall(open(path, encoding="utf-8").read())}
    return names


def main(args):
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    names = wanted(args[0])
    if not names:
        print(f"no PrometheusRule or dashboard in {args[0]}", file=sys.stderr)
        return 2
    samples, families = exposed(args[1:])
    in_source = registered()
    missing, source_only = [], []
    for name, where in sorted(names.items()):
        family = name
        for s in SUFFIXES:
            if name.endswith(s):
                family = name[: -len(s)]
                break
        if name in samples or family in families or name in families:
            continue
        if family in in_source or name in in_source:
            source_only.append(name)
        else:
            missing.append(f"{name} ({where}) is neither exposed by a scraped /metrics nor registered")
    for s in source_only:
        print(f"{s}: no series in the scrapes, registered in the source", file=sys.stderr)
    for m in missing:
        print(m)
    print(f"{len(names)} metric names checked, {len(missing)} missing", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
