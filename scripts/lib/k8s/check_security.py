#!/usr/bin/env python3
"""Checks the security context of every pod in Kubernetes manifests.

    check_security.py FILE...

FILE is YAML (one or more documents, as `helm template` prints) or JSON (an object or a `List`,
as `kubectl get -o json` prints). Every pod template (Deployment, StatefulSet, DaemonSet,
ReplicaSet, Job, CronJob) and every Pod must:
- run as non-root (runAsNonRoot: true on the pod or on every container, and no runAsUser: 0);
- use the RuntimeDefault (or a Localhost) seccomp profile, on the pod or on every container;
- give every container (init containers too) allowPrivilegeEscalation: false,
  readOnlyRootFilesystem: true, capabilities.drop containing ALL and no capabilities.add,
  and never privileged: true;
- mount no hostPath volume and use neither the host's network, PID nor IPC namespace.
Prints one line per violation and exits 1 when there is any, 0 otherwise (2 when a file holds
no pod at all, so a typo in a path never passes).
"""

import json
import sys

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def documents(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        docs = [json.loads(text)]
    except json.JSONDecodeError:
        docs = list(yaml.safe_load_all(text))
    for d in docs:
        if not d:
            continue
        if d.get("kind", "").endswith("List"):
            yield from (i for i in d.get("items", []) if i)
        else:
            yield d


def pod_specs(doc):
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        yield spec
    elif kind in WORKLOADS:
        yield (spec.get("template") or {}).get("spec") or {}
    elif kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        yield (job.get("template") or {}).get("spec") or {}


def check_pod(where, pod):
    problems = []
    psc = pod.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            problems.append(f"{where}: {host} is true")
    for v in pod.get("volumes") or []:
        if "hostPath" in v:
            problems.append(f"{where}: volume {v.get('name')} is a hostPath")
    if psc.get("runAsUser") == 0:
        problems.append(f"{where}: the pod runs as user 0")
    containers = [("container", c) for c in pod.get("containers") or []]
    containers += [("initContainer", c) for c in pod.get("initContainers") or []]
    if not containers:
        problems.append(f"{where}: no containers")
    for kind, c in containers:
        cw = f"{where} {kind} {c.get('name')}"
        sc = c.get("securityContext") or {}
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{cw}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            problems.append(f"{cw}: runs as user 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{cw}: seccompProfile is {seccomp!r}, not RuntimeDefault")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cw}: readOnlyRootFilesystem is not true")
        if sc.get("privileged"):
            problems.append(f"{cw}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{cw}: capabilities.drop lacks ALL")
        if caps.get("add"):
            problems.append(f"{cw}: adds capabilities {caps['add']}")
    return problems


def main(paths):
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    problems = []
    pods = 0
    for path in paths:
        for doc in documents(path):
            meta = doc.get("metadata") or {}
            where = f"{path}: {doc.get('kind')}/{meta.get('namespace', '')}/{meta.get('name')}"
            for pod in pod_specs(doc):
                pods += 1
                problems += check_pod(where, pod)
    for p in problems:
        print(p)
    if pods == 0:
        print(f"no pod templates in {' '.join(paths)}", file=sys.stderr)
        return 2
    print(f"{pods} pod templates checked, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
