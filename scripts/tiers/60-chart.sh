#!/usr/bin/env bash
# The Helm chart and the examples, checked offline:
# - the chart's copy of the CRD is the committed crds/broker.yaml;
# - helm lint --strict, with the default values and with every optional part switched on;
# - helm template renders, and kubernetes-validate --strict accepts every rendered object;
# - values.schema.json rejects bad values;
# - every pod of every render is non-root, read-only, without privilege escalation, with seccomp
#   RuntimeDefault and all capabilities dropped (scripts/lib/k8s/check_security.py, which is
#   itself shown to fail on a pod that breaks each rule);
# - NetworkPolicies (on by default, off with networkPolicy.enabled=false): the api's internal
#   listener only from broker pods and the monitoring namespace, PostgreSQL only from the api,
#   the operator's metrics only from monitoring; the `helm test` pod GETs the api's /readyz;
# - validate_cr.py accepts every example Broker and rejects the deliberately invalid one.
source "$(dirname "$0")/../lib/tier.sh"
source scripts/lib/k8s-tools.sh
k8s_tools_helm
k8s_tools_python

chart=charts/starling
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "--- the chart carries the committed CRD"
cmp crds/broker.yaml "$chart/files/broker-crd.yaml" || fail "charts/starling/files/broker-crd.yaml differs from crds/broker.yaml: copy it"

all_on=(--set operator.watchNamespaces='{iot,factory}' --set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true
  --set metrics.prometheusRule.enabled=true --set metrics.dashboard.namespace=grafana
  --set api.ingress.enabled=true --set postgresql.persistence.enabled=true
  --set operator.brokerHook.allowedHosts='{moderation.default.svc,10.0.0.7,fd00::7}'
  --set operator.brokerHook.allowHttp=true --set operator.brokerHook.allowPrivateAddresses=true
  --set operator.brokerHook.timeoutMs=2500 --set 'operator.tenancy.allow.iot={factory,fleet}'
  --set nats.install.enabled=true)
external_db=(--set postgresql.enabled=false --set api.database.url=postgres://starling:pw@db.example.com:5432/starling
  --set api.adminToken.existingSecret=admin --set api.keyEncryptionKey.existingSecret=kek)

echo "--- helm lint --strict"
helm lint --strict "$chart"
helm lint --strict "$chart" "${all_on[@]}"
helm lint --strict "$chart" "${external_db[@]}"

echo "--- values.schema.json rejects bad values"
for bad in operator.replicas=-1 operator.maxConcurrentReconciles=0 operator.maxConcurrentReconciles=65 api.service.port=70000 operator.watchNamespaces='{Not_A_Namespace}' api.service.type=Public \
  operator.brokerHook.allowedHosts='{http://moderation.default.svc}' operator.brokerHook.allowedHosts='{moderation.default.svc:8080}' \
  operator.brokerHook.allowedHosts='{10.0.0.7:8080}' operator.brokerHook.allowedHosts='{*.default.svc}' \
  operator.brokerHook.allowHttp=yes operator.brokerHook.timeoutMs=0 operator.brokerHook.timeoutMs=600001 \
  operator.brokerHook.allowAll=true operator.tenancy.allow.Iot='{x}' operator.tenancy.allow.iot='{a/b}' nats.urls='{http://nats:4222}' nats.url=nats://nats:4222 nats.install.replicas=2; do
  if helm lint --strict "$chart" --set "$bad" >"$work/lint.out" 2>&1; then
    fail "helm lint accepted --set $bad"
  fi
  grep -q "values don't meet the specifications" "$work/lint.out" || { cat "$work/lint.out"; fail "--set $bad failed for another reason"; }
done
if helm template t "$chart" --set postgresql.enabled=false >"$work/x.yaml" 2>"$work/err"; then
  fail "a release without any database rendered"
fi
grep -q "api.database.url" "$work/err" || { cat "$work/err"; fail "the missing-database message is unclear"; }

echo "--- helm template + kubernetes-validate --strict"
helm template starling "$chart" -n starling-system >"$work/default.yaml"
helm template starling "$chart" -n starling-system "${all_on[@]}" >"$work/all-on.yaml"
helm template starling "$chart" -n starling-system "${external_db[@]}" >"$work/external-db.yaml"
for f in "$work"/default.yaml "$work"/all-on.yaml "$work"/external-db.yaml; do
  # ServiceMonitor and PrometheusRule are Prometheus Operator CRDs: no schema to validate them.
  rc=0
  kubernetes-validate --strict --quiet -k 1.33.0 "$f" >"$work/kv.raw" 2>&1 || rc=$?
  grep -Ev "Couldn't find schema for kind (ServiceMonitor|PrometheusRule|PodMonitor)" "$work/kv.raw" >"$work/kv.out" || true
  if [ "$rc" -ne 0 ] || [ -s "$work/kv.out" ]; then
    cat "$work/kv.out"
    fail "kubernetes-validate found problems in $(basename "$f") (exit $rc)"
  fi
done
echo "--- the broker PodMonitor, when switched on"
python3 - "$work/default.yaml" "$work/all-on.yaml" operator/src/resources/mod.rs <<'PY'
import sys, yaml
load = lambda p: [d for d in yaml.safe_load_all(open(p)) if d]
assert not [d for d in load(sys.argv[1]) if d["kind"] == "PodMonitor"], "a PodMonitor by default"
[pm] = [d for d in load(sys.argv[2]) if d["kind"] == "PodMonitor"]
assert pm["spec"]["namespaceSelector"] == {"matchNames": ["iot", "factory"]}, pm["spec"]
assert pm["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}], pm["spec"]
src = open(sys.argv[3]).read()
for k, v in pm["spec"]["selector"]["matchLabels"].items():
    assert f'"{k}".to_owned(),\n        "{v}".to_owned()' in src, f"the operator puts no {k}={v} on broker pods"
print("broker PodMonitor ok")
PY

echo "--- chart secrets are never generated on render"
# The admin token, KEK and database password come from the operator (created once when missing)
# or from existingSecret: two renders are identical, with no secret value in either.
helm template starling "$chart" -n starling-system >"$work/default-again.yaml"
cmp "$work/default.yaml" "$work/default-again.yaml" || fail "two renders of the chart differ"
helm template starling "$chart" -n starling-system "${external_db[@]}" >"$work/external-db-again.yaml"
cmp "$work/external-db.yaml" "$work/external-db-again.yaml" || fail "two renders with existing Secrets differ"
python3 - "$work/default.yaml" "$work/external-db.yaml" <<'PY'
import json, sys, yaml
def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]
def generated(docs):
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator")]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    return json.loads(env["STARLING_OPERATOR_GENERATE_SECRETS"]), dep
default = load(sys.argv[1])
secrets = [d["metadata"]["name"] for d in default if d["kind"] == "Secret"]
assert secrets == [], f"the default render carries Secrets: {secrets}"
gen, dep = generated(default)
assert {g["name"]: sorted(g["data"]) for g in gen} == {
    "starling-admin-token": ["token"], "starling-kek": ["kek"],
    "starling-database": ["DATABASE_URL", "POSTGRES_PASSWORD"]}, gen
for g in gen:
    assert all("{random}" in t for t in g["data"].values()), g
vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
assert vols["admin-token"]["secret"]["optional"] is True, vols
external = load(sys.argv[2])
gen, dep = generated(external)
assert gen == [], f"existing Secrets are generated anyway: {gen}"
assert dep["spec"]["template"]["spec"]["volumes"][0]["secret"].get("optional") is False
print("chart secrets: identical renders, generated by the operator or existing")
PY

grep -q 'kind: CustomResourceDefinition' "$work/default.yaml" || fail "the CRD is not rendered"
grep -q 'helm.sh/resource-policy: keep' "$work/default.yaml" || fail "the CRD is not kept on uninstall"
helm template starling "$chart" --set crds.install=false | grep -q 'kind: CustomResourceDefinition' && fail "crds.install=false still renders the CRD"
echo "--- security context of every pod (check_security.py)"
for f in "$work"/default.yaml "$work"/all-on.yaml "$work"/external-db.yaml; do
  python3 "$K8S_TOOLS/check_security.py" "$f" || fail "a pod in $(basename "$f") breaks the security rules"
done
cat >"$work/insecure.yaml" <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: insecure}
spec:
  hostNetwork: true
  securityContext: {runAsUser: 0}
  volumes: [{name: host, hostPath: {path: /}}]
  containers:
    - name: c
      image: x
      securityContext: {privileged: true, capabilities: {add: [NET_ADMIN]}}
YAML
if python3 "$K8S_TOOLS/check_security.py" "$work/insecure.yaml" >"$work/insecure.out" 2>&1; then
  fail "check_security.py passed an insecure pod"
fi
for rule in hostNetwork hostPath "user 0" runAsNonRoot seccompProfile allowPrivilegeEscalation readOnlyRootFilesystem privileged "drop lacks ALL" "adds capabilities"; do
  grep -q "$rule" "$work/insecure.out" || { cat "$work/insecure.out"; fail "check_security.py did not report $rule"; }
done

echo "--- NetworkPolicies and the helm test hook"
helm template starling "$chart" -n starling-system --set networkPolicy.enabled=false >"$work/no-netpol.yaml"
python3 - "$work/default.yaml" "$work/no-netpol.yaml" "$work/external-db.yaml" <<'PY'
import sys, yaml
load = lambda p: [d for d in yaml.safe_load_all(open(p)) if d]
default, off, external = (load(p) for p in sys.argv[1:4])
pols = {d["metadata"]["name"]: d["spec"] for d in default if d["kind"] == "NetworkPolicy"}
assert set(pols) == {"starling-api", "starling-postgresql", "starling-operator"}, set(pols)
assert not [d for d in off if d["kind"] == "NetworkPolicy"], "networkPolicy.enabled=false still renders policies"
assert {d["metadata"]["name"] for d in external if d["kind"] == "NetworkPolicy"} == {"starling-api", "starling-operator"}
monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
broker_pods = {"namespaceSelector": {}, "podSelector": {"matchLabels": {
    "app.kubernetes.io/name": "starling-broker", "app.kubernetes.io/managed-by": "starling-operator"}}}
by_port = lambda spec: {r["ports"][0]["port"]: r.get("from") for r in spec["ingress"]}
for spec in pols.values():
    assert spec["policyTypes"] == ["Ingress"], spec
api = by_port(pols["starling-api"])
assert api["internal"] == [broker_pods, monitoring], api["internal"]
assert api["http"] is None, "the public api is open to every client by default"
pg = by_port(pols["starling-postgresql"])
assert pg == {"postgresql": [{"podSelector": {"matchLabels": {
    "app.kubernetes.io/name": "starling-api", "app.kubernetes.io/instance": "starling"}}}]}, pg
assert by_port(pols["starling-operator"]) == {"http": [monitoring]}
# The policies select the pods they mean to.
deployments = {d["metadata"]["name"]: d for d in default if d["kind"] == "Deployment"}
for name, spec in pols.items():
    labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items(), (name, labels)
# The internal port the policy names is the one the api listens on.
[api_c] = deployments["starling-api"]["spec"]["template"]["spec"]["containers"]
assert {p["name"] for p in api_c["ports"]} == {"http", "internal"}
[test] = [d for d in default if d["kind"] == "Pod"]
assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
[c] = test["spec"]["containers"]
assert c["args"] == ["http://starling-api.starling-system.svc:80/readyz"], c["args"]
print("network policies and helm test ok")
PY

echo "--- the Grafana dashboard and the alerts"
python3 - "$work/default.yaml" "$work/all-on.yaml" "$chart/dashboards/starling.json" <<'PY'
import json, sys, yaml
load = lambda p: [d for d in yaml.safe_load_all(open(p)) if d]
default, all_on = load(sys.argv[1]), load(sys.argv[2])
[cm] = [d for d in default if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "starling-dashboard"]
assert cm["metadata"]["labels"]["grafana_dashboard"] == "1", cm["metadata"]
dash = json.loads(cm["data"]["starling.json"])
assert dash == json.load(open(sys.argv[3])), "the ConfigMap does not carry dashboards/starling.json as is"
titles = {p["title"] for p in dash["panels"]}
assert {"Brokers", "api", "operator"} <= titles, titles
ids = [p["id"] for p in dash["panels"]]
assert len(ids) == len(set(ids)), "panel ids repeat"
assert not [d for d in default if d["kind"] == "PrometheusRule"], "the PrometheusRule needs its CRD: off by default"
[cm] = [d for d in all_on if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "starling-dashboard"]
assert cm["metadata"]["namespace"] == "grafana", cm["metadata"]
[rule] = [d for d in all_on if d["kind"] == "PrometheusRule"]
alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
for a in ("StarlingBrokerNotReady", "StarlingCertificateExpiresSoon", "StarlingHookFailures",
          "StarlingMessagesDropped", "StarlingControlPlaneSyncLag"):
    assert a in alerts, (a, sorted(alerts))
assert "604800" in alerts["StarlingCertificateExpiresSoon"]["expr"], "7 days by default"
for r in alerts.values():
    assert r["expr"].count("(") == r["expr"].count(")"), r["expr"]
    assert "{{" not in r["expr"], r["expr"]
print(f"dashboard with {len(dash['panels'])} panels, {len(alerts)} alerts")
PY

# An Ingress for the public api only.
python3 - "$work/all-on.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ingresses = [d for d in docs if d["kind"] == "Ingress"]
assert len(ingresses) == 1, ingresses
backends = {p["backend"]["service"]["name"] for r in ingresses[0]["spec"]["rules"] for p in r["http"]["paths"]}
assert backends == {"starling-api"}, backends
roles = {(d["kind"], d["metadata"].get("namespace")) for d in docs if d["kind"] in ("Role", "ClusterRole")}
assert ("ClusterRole", None) not in roles, "watchNamespaces must not create a ClusterRole"
assert {("Role", "iot"), ("Role", "factory"), ("Role", "starling-system")} <= roles, roles
for d in docs:
    for rule in d.get("rules", []) if d["kind"] in ("Role", "ClusterRole") else []:
        if "secrets" in rule["resources"]:
            assert not {"list", "watch"} & set(rule["verbs"]), "no list/watch on secrets"
print("ingress and RBAC shape ok")
PY

# An existing NATS cluster: its URLs reach the operator as they are.
helm template starling "$chart" -n starling-system --set 'nats.urls={nats://nats-0.nats.messaging.svc:4222,tls://nats-1.nats.messaging.svc:4222}' \
  | grep -A1 'name: STARLING_OPERATOR_BROKER_CLUSTER_NATS' | grep -q 'value: "nats://nats-0.nats.messaging.svc:4222,tls://nats-1.nats.messaging.svc:4222"' \
  || fail "nats.urls do not reach the operator"
# The chart's own NATS: three pods routed to each other, JetStream on a claim each, clients only
# from broker pods.
python3 - "$work/all-on.yaml" <<'PY' || fail "the chart's NATS cluster is rendered wrong"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
[sts] = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "starling-nats"]
assert sts["spec"]["replicas"] == 3, sts["spec"]
assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
[cm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "starling-nats"]
conf = cm["data"]["nats.conf"]
assert "jetstream" in conf and "store_dir: /data" in conf, conf
for i in range(3):
    assert f"nats://starling-nats-{i}.starling-nats-headless.starling-system.svc:6222" in conf, conf
# TLS for clients and routes (routes verify their peers), from the Secret the operator issues.
tls = "tls {\n  cert_file: /etc/nats-tls/tls.crt\n  key_file: /etc/nats-tls/tls.key\n  ca_file: /etc/nats-tls/ca.crt\n"
assert conf.count(tls) == 1 and conf.index(tls) < conf.index("jetstream {"), conf
route_tls = conf[conf.index("cluster {"):]
assert "tls {" in route_tls and "verify: true" in route_tls, route_tls
pod = sts["spec"]["template"]["spec"]
[vol] = [v for v in pod["volumes"] if v["name"] == "tls"]
assert vol["secret"]["secretName"] == "starling-nats-tls", vol
assert {"name": "tls", "mountPath": "/etc/nats-tls", "readOnly": True} in pod["containers"][0]["volumeMounts"], pod["containers"][0]
[np] = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "starling-nats"]
client = [r for r in np["spec"]["ingress"] if r["ports"][0]["port"] == "client"]
assert client[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "starling-broker", np
# and from the operator, which publishes the Brokers' accounts
assert client[0]["from"][1]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "starling-operator", np
print("nats cluster ok")
PY

# The NATS pods roll when their configuration changes, and only then.
nats_checksum() {
  helm template starling "$chart" -n starling-system --set nats.install.enabled=true "$@" \
    | grep 'checksum/config:' | sort -u
}
base_sum=$(nats_checksum)
[ -n "$base_sum" ] || fail "the chart's NATS pods carry no configuration checksum"
[ "$(nats_checksum --set nats.install.jetstream.maxFileStore=20G)" != "$base_sum" ] \
  || fail "a change to nats.conf does not change the NATS pods' checksum"
[ "$(nats_checksum --set nats.install.resources.limits.memory=3Gi)" = "$base_sum" ] \
  || fail "a change outside nats.conf changes the NATS pods' configuration checksum"

# NATS credentials: the installed NATS runs decentralized auth from the keys the operator keeps
# (a Secret it creates once) and the auth.conf it writes (a Secret the NATS pods include, and
# wait for); no shared token anywhere. An existing NATS's auth and TLS Secrets reach the operator
# by name, and the operator may get exactly those Secrets.
helm template starling "$chart" -n starling-system --set 'nats.urls={tls://nats.messaging.svc:4222}' \
  --set nats.auth.existingSecret=nats-broker-creds --set nats.tls.existingSecret=nats-client-tls >"$work/nats-existing.yaml"
python3 - "$work/all-on.yaml" "$work/nats-existing.yaml" "$work/default.yaml" <<'PY' || fail "the NATS credentials are rendered wrong"
import json, sys, yaml
def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]
def operator_env(docs):
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator")]
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
def secret_get_rules(docs):
    return [r for d in docs if d["kind"] == "Role" for r in d.get("rules", [])
            if r["resources"] == ["secrets"] and r["verbs"] == ["get"]]
installed, existing, default = (load(p) for p in sys.argv[1:4])
env = operator_env(installed)
assert "STARLING_OPERATOR_BROKER_CLUSTER_SECRET" not in env, env
assert env["STARLING_OPERATOR_BROKER_CLUSTER_NATS_KEYS"] == "starling-nats-keys", env
assert env["STARLING_OPERATOR_BROKER_CLUSTER_NATS_CONFIG"] == "starling-nats-auth-config", env
# The installed NATS's TLS: the operator keeps the CA, the servers' certificate and the CA
# alone for the brokers, which it copies to each Broker; the brokers connect with tls:// URLs.
assert env["STARLING_OPERATOR_BROKER_CLUSTER_TLS_SECRET"] == "starling-nats-client-tls", env
assert env["STARLING_OPERATOR_BROKER_CLUSTER_NATS_TLS_CA"] == "starling-nats-ca", env
assert env["STARLING_OPERATOR_BROKER_CLUSTER_NATS_TLS_SERVER"] == "starling-nats-tls", env
assert env["STARLING_OPERATOR_BROKER_CLUSTER_NATS"] == ",".join(
    f"tls://starling-nats-{i}.starling-nats-headless.starling-system.svc:4222" for i in range(3)), env
assert "nats" not in env["STARLING_OPERATOR_GENERATE_SECRETS"], env
[cm] = [d for d in installed if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "starling-nats"]
conf = cm["data"]["nats.conf"]
assert "include ./auth.conf" in conf and "token" not in conf, conf
[sts] = [d for d in installed if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "starling-nats"]
pod = sts["spec"]["template"]["spec"]
assert not [e for e in pod["containers"][0]["env"] if "TOKEN" in e["name"]], pod["containers"][0]["env"]
[config] = [v for v in pod["volumes"] if v["name"] == "config"]
sources = config["projected"]["sources"]
assert sources[0]["configMap"]["name"] == "starling-nats", sources
assert sources[1]["secret"] == {"name": "starling-nats-auth-config", "items": [{"key": "auth.conf", "path": "auth.conf"}]}, sources
assert secret_get_rules(installed) == [], secret_get_rules(installed)
keys = [r for d in installed if d["kind"] == "Role" for r in d.get("rules", []) if r.get("resourceNames") == ["starling-nats-keys", "starling-nats-auth-config"]]
assert keys and keys[0]["verbs"] == ["get", "patch"], keys
tls = [r for d in installed if d["kind"] == "Role" for r in d.get("rules", []) if r.get("resourceNames") == ["starling-nats-ca", "starling-nats-tls", "starling-nats-client-tls"]]
assert tls and tls[0]["verbs"] == ["get", "patch"], tls
env = operator_env(existing)
assert env["STARLING_OPERATOR_BROKER_CLUSTER_SECRET"] == "nats-broker-creds", env
assert env["STARLING_OPERATOR_BROKER_CLUSTER_TLS_SECRET"] == "nats-client-tls", env
assert "nats-auth" not in env["STARLING_OPERATOR_GENERATE_SECRETS"], env
assert [r["resourceNames"] for r in secret_get_rules(existing)] == [["nats-broker-creds", "nats-client-tls"]]
assert "STARLING_OPERATOR_BROKER_CLUSTER_NATS_KEYS" not in env, env
env = operator_env(default)
assert not any(k.startswith("STARLING_OPERATOR_BROKER_CLUSTER") for k in env), env
assert secret_get_rules(default) == [], "no NATS, no Secret to read"
print("nats credentials ok")
PY

# The installed NATS without TLS: plain URLs, no certificate asked of the operator or mounted.
helm template starling "$chart" -n starling-system --set nats.install.enabled=true --set nats.install.tls.enabled=false \
  >"$work/nats-plain.yaml"
python3 - "$work/nats-plain.yaml" <<'PY' || fail "the installed NATS without TLS is rendered wrong"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
[dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator")]
env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
assert env["STARLING_OPERATOR_BROKER_CLUSTER_NATS"].startswith("nats://starling-nats-0."), env
assert not [k for k in env if "TLS" in k], env
[cm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "starling-nats"]
assert "tls {" not in cm["data"]["nats.conf"], cm["data"]["nats.conf"]
[sts] = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "starling-nats"]
assert not [v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"], sts
assert not [r for d in docs if d["kind"] == "Role" for r in d.get("rules", []) if "starling-nats-ca" in r.get("resourceNames", [])]
print("nats without tls ok")
PY

# The operator's broker-hook rules: its env only when set, with names the operator reads; a
# values file's numbers (floats to Helm) render as integers.
printf 'operator:\n  brokerHook:\n    timeoutMs: 600000\n' >"$work/hook-values.yaml"
helm template starling "$chart" -n starling-system -f "$work/hook-values.yaml" >"$work/hook-file.yaml"
python3 - "$work/default.yaml" "$work/all-on.yaml" "$work/hook-file.yaml" operator/src/main.rs <<'PY'
import sys, yaml
def operator_env(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator")]
    [c] = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in c["env"]}
default, all_on, from_file = (operator_env(p) for p in sys.argv[1:4])
hook = lambda env: {k: v for k, v in env.items() if k.startswith("STARLING_OPERATOR_BROKER_HOOK_")}
assert "STARLING_OPERATOR_TENANCY_ALLOW" not in default, default
assert "STARLING_OPERATOR_BROKER_CLUSTER_NATS" not in default, default
assert all_on["STARLING_OPERATOR_BROKER_CLUSTER_NATS"] == ",".join(
    f"tls://starling-nats-{i}.starling-nats-headless.starling-system.svc:4222" for i in range(3)), all_on
assert all_on["STARLING_OPERATOR_TENANCY_ALLOW"] == "iot=factory,iot=fleet", all_on
assert hook(default) == {}, hook(default)
assert hook(all_on) == {
    "STARLING_OPERATOR_BROKER_HOOK_ALLOWED_HOSTS": "moderation.default.svc,10.0.0.7,fd00::7",
    "STARLING_OPERATOR_BROKER_HOOK_ALLOW_HTTP": "true",
    "STARLING_OPERATOR_BROKER_HOOK_ALLOW_PRIVATE_ADDRESSES": "true",
    "STARLING_OPERATOR_BROKER_HOOK_TIMEOUT_MS": "2500",
}, hook(all_on)
assert hook(from_file) == {"STARLING_OPERATOR_BROKER_HOOK_TIMEOUT_MS": "600000"}, hook(from_file)
assert default["STARLING_OPERATOR_MAX_CONCURRENT_RECONCILES"] == "4", default
main_rs = open(sys.argv[4]).read()
for name in all_on:
    if name.startswith("STARLING_OPERATOR_"):
        assert f'env = "{name}"' in main_rs, f"the operator reads no {name}"
print("operator broker-hook env ok")
PY

echo "--- exposure examples"
kubernetes-validate --strict --quiet -k 1.33.0 examples/exposure/ingress-nginx-wss.yaml || fail "the Ingress example is not valid"
# Both examples reach ports the operator gives every Broker's Service (wss-443, 8883, 443).
grep -q 'name: wss-443' examples/exposure/ingress-nginx-wss.yaml || fail "the Ingress example names no wss-443 port"
grep -q '"wss-443".to_owned(), 443' operator/src/resources/service.rs || fail "the operator's Service no longer has wss-443"

echo "--- examples against the CRD"
python3 "$K8S_TOOLS/validate_cr.py" crds/broker.yaml examples/*.yaml
if python3 "$K8S_TOOLS/validate_cr.py" crds/broker.yaml examples/invalid/*.yaml >"$work/invalid.out"; then
  cat "$work/invalid.out"
  fail "the invalid example passed validation"
fi
cat "$work/invalid.out"
for expected in "spec.replicas" "spec.listeners.mqtts.port" "spec.service.type" "'replica' was unexpected"; do
  grep -q "$expected" "$work/invalid.out" || fail "the invalid example was not rejected for $expected"
done
