"""Lays out a broker pod from its Deployment, the way the kubelet would, under a scratch root.

Usage: pod_standin.py DEPLOYMENT_JSON OBJECTS_JSON ROOT CONTROL_PLANE_URL OUT_DIR [NATS_URL]

DEPLOYMENT_JSON is `kubectl get deploy -o json`; OBJECTS_JSON is a `kubectl get configmaps,secrets
-o json` list of the namespace. Every volume the broker container mounts is written under ROOT at
its mountPath (ConfigMap data, Secret data base64-decoded with the volume's defaultMode, emptyDir
and a PersistentVolumeClaim, as a freshly bound claim, as an empty directory); a mount or volume kind this stand-in does not know fails loudly rather
than being skipped. The container's arguments are kept as they are, except:
- paths under a mountPath are prefixed with ROOT (the files are exactly the mounted ones);
- `0.0.0.0:PORT` listen addresses become free loopback ports (recorded in OUT_DIR/ports.json);
- the `--control-plane` URL becomes CONTROL_PLANE_URL: the in-cluster Service name of the api
  does not resolve outside a cluster, so the broker long-polls the local api's internal listener;
- with NATS_URL, the `--cluster-nats` URLs become one `--cluster-nats NATS_URL` (a local
  nats-server), for the same reason.
The arguments go to OUT_DIR/args and the container's environment to OUT_DIR/env, one per line;
an env entry's `valueFrom.secretKeyRef` is read from that Secret in OBJECTS_JSON, as the kubelet
would (a missing Secret or key fails unless optional); any other valueFrom fails loudly.
"""

import base64
import json
import os
import socket
import sys

deploy_path, objects_path, root, control_plane, out = sys.argv[1:6]
nats_url = sys.argv[6] if len(sys.argv) > 6 else None
deploy = json.load(open(deploy_path))
objects = json.load(open(objects_path))["items"]
pod = deploy["spec"]["template"]["spec"]
[container] = [c for c in pod["containers"] if c["name"] == "broker"]
volumes = {v["name"]: v for v in pod["volumes"]}


def find(kind, name):
    for o in objects:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    sys.exit(f"{kind} {name}, mounted by the pod, does not exist")


def write(directory, key, data, mode):
    if "/" in key or key.startswith("."):
        sys.exit(f"unexpected key {key!r} in a mounted volume")
    path = os.path.join(directory, key)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


mounts = []
for m in container.get("volumeMounts", []):
    if m.get("subPath"):
        sys.exit(f"subPath mounts are not laid out by this stand-in: {m}")
    v = volumes[m["name"]]
    target = root + m["mountPath"]
    os.makedirs(target, exist_ok=True)
    mounts.append(m["mountPath"])
    if "configMap" in v:
        cm = find("ConfigMap", v["configMap"]["name"])
        mode = v["configMap"].get("defaultMode", 0o644)
        for key, text in (cm.get("data") or {}).items():
            write(target, key, text.encode(), mode)
        for key, b64 in (cm.get("binaryData") or {}).items():
            write(target, key, base64.b64decode(b64), mode)
    elif "secret" in v:
        secret = find("Secret", v["secret"]["secretName"])
        mode = v["secret"].get("defaultMode", 0o644)
        for key, b64 in (secret.get("data") or {}).items():
            write(target, key, base64.b64decode(b64), mode)
    elif "emptyDir" in v or "persistentVolumeClaim" in v:
        pass
    else:
        sys.exit(f"volume kind not laid out by this stand-in: {v}")

# Longest mountPath first, so /etc/starling/tls/x is matched by /etc/starling/tls.
mounts.sort(key=len, reverse=True)


def free():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


args, ports = [], {}
raw = container.get("args", [])
prev = None
for value in raw:
    if prev == "--control-plane":
        value = control_plane
    elif prev == "--cluster-nats" and nats_url:
        if nats_url in args:
            # One local server for all of them: named once, so the broker counts one.
            args.pop()
            prev = None
            continue
        value = nats_url
    elif value.startswith("0.0.0.0:"):
        ports[prev] = free()
        value = f"127.0.0.1:{ports[prev]}"
    else:
        for mp in mounts:
            if value == mp or value.startswith(mp + "/"):
                value = root + value
                break
    args.append(value)
    prev = value if value.startswith("--") else None

env = []
for e in container.get("env", []):
    source = e.get("valueFrom")
    if source is None:
        env.append(f"{e['name']}={e.get('value', '')}")
        continue
    ref = source.get("secretKeyRef")
    if ref is None or len(source) != 1:
        sys.exit(f"env {e['name']} uses a valueFrom this stand-in does not resolve: {source}")
    data = next((o.get("data") or {} for o in objects
                 if o["kind"] == "Secret" and o["metadata"]["name"] == ref["name"]), None)
    if data is None or ref["key"] not in data:
        if ref.get("optional"):
            continue
        sys.exit(f"env {e['name']}: Secret {ref['name']} key {ref['key']} does not exist")
    value = base64.b64decode(data[ref["key"]]).decode()
    if "\n" in value:
        sys.exit(f"env {e['name']}: a multi-line value cannot go through OUT_DIR/env")
    env.append(f"{e['name']}={value}")

with open(os.path.join(out, "args"), "w") as f:
    f.write("".join(a + "\n" for a in args))
with open(os.path.join(out, "env"), "w") as f:
    f.write("".join(e + "\n" for e in env))
with open(os.path.join(out, "ports.json"), "w") as f:
    json.dump(ports, f)
