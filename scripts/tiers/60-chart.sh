#!/usr/bin/env bash
# The Helm chart and the examples, checked offline:
# - the chart's copy of the CRD is the committed crds/broker.yaml;
# - helm lint --strict, with the default values and with every optional part switched on;
# - helm template renders, and kubernetes-validate --strict accepts every rendered object;
# - values.schema.json rejects bad values;
# - validate_cr.py accepts every example Broker and rejects the deliberately invalid one.
set -euo pipefail
cd "$STARLING_ROOT"
source scripts/lib/k8s-tools.sh
k8s_tools_helm
k8s_tools_python

chart=charts/starling
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "--- the chart carries the committed CRD"
cmp crds/broker.yaml "$chart/files/broker-crd.yaml" || fail "charts/starling/files/broker-crd.yaml differs from crds/broker.yaml: copy it"

all_on=(--set operator.watchNamespaces='{iot,factory}' --set metrics.serviceMonitor.enabled=true
  --set api.ingress.enabled=true --set postgresql.persistence.enabled=true)
external_db=(--set postgresql.enabled=false --set api.database.url=postgres://starling:pw@db.example.com:5432/starling
  --set api.adminToken.existingSecret=admin --set api.keyEncryptionKey.existingSecret=kek)

echo "--- helm lint --strict"
helm lint --strict "$chart"
helm lint --strict "$chart" "${all_on[@]}"
helm lint --strict "$chart" "${external_db[@]}"

echo "--- values.schema.json rejects bad values"
for bad in operator.replicas=-1 api.service.port=70000 operator.watchNamespaces='{Not_A_Namespace}' api.service.type=Public; do
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
  # ServiceMonitor is a Prometheus Operator CRD: no schema to validate it against.
  rc=0
  kubernetes-validate --strict --quiet -k 1.33.0 "$f" >"$work/kv.raw" 2>&1 || rc=$?
  grep -v "Couldn't find schema for kind ServiceMonitor" "$work/kv.raw" >"$work/kv.out" || true
  if [ "$rc" -ne 0 ] || [ -s "$work/kv.out" ]; then
    cat "$work/kv.out"
    fail "kubernetes-validate found problems in $(basename "$f") (exit $rc)"
  fi
done
grep -q 'kind: CustomResourceDefinition' "$work/default.yaml" || fail "the CRD is not rendered"
grep -q 'helm.sh/resource-policy: keep' "$work/default.yaml" || fail "the CRD is not kept on uninstall"
helm template starling "$chart" --set crds.install=false | grep -q 'kind: CustomResourceDefinition' && fail "crds.install=false still renders the CRD"
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
