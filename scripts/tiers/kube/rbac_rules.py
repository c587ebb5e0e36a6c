#!/usr/bin/env python3
"""Reads `kubectl get roles,clusterroles -o json` documents on stdin and prints one sorted line per
(kind, namespace/name, apiGroup, resource[names], verbs), the form of operator-rbac.txt."""
import json
import sys

decoder = json.JSONDecoder()
text = sys.stdin.read()
i = 0
lines = []
while i < len(text):
    if text[i].isspace():
        i += 1
        continue
    obj, i = decoder.raw_decode(text, i)
    for item in obj["items"]:
        where = item["metadata"].get("namespace", "cluster") + "/" + item["metadata"]["name"]
        for rule in item.get("rules") or []:
            names = "[" + ",".join(rule["resourceNames"]) + "]" if rule.get("resourceNames") else ""
            verbs = ",".join(sorted(rule["verbs"]))
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    lines.append(f"{item['kind']} {where}: {group or 'core'} {resource}{names} {verbs}")
print("\n".join(sorted(lines)))
