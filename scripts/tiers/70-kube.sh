#!/usr/bin/env bash
# The chart and the operator against a real kube-apiserver (v1.20, etcd; no kubelet, no
# controller-manager), built from Debian's sources and cached under ~/.cache/starling-k8s:
# - helm install the chart (operator watching namespace iot);
# - the operator's RBAC rules equal scripts/tiers/kube/operator-rbac.txt, and `kubectl auth can-i`
#   shows it can do its work and cannot read Secrets outside its namespaces;
# - the operator runs out of cluster as its ServiceAccount (impersonated), against a stand-in of
#   the api's four broker routes (scripts/tiers/kube/standin_api.py: the real api serves no HTTP
#   routes yet);
# - an example Broker gets its Deployment, Service, ConfigMap and Secrets with owner references
#   and the operator's field manager, a status with brokerId, endpoints and tls.notAfter, and
#   turns Ready when the test, playing the kubelet, marks the Deployment's replica ready;
# - replicas: -1 and a port of 70000 each get 422 from the server;
# - with the api down the Broker turns Degraded (ApiUnreachable) with a Warning event; when the
#   api has lost the broker it turns Degraded (DeletedInApi) and is not re-created;
# - deleting the Broker runs the finalizer: the api sees the DELETE, then the Broker is gone.
set -euo pipefail
cd "$STARLING_ROOT"
source scripts/lib/k8s-tools.sh
k8s_tools_helm

K8S_BIN="$HOME/.cache/starling-k8s/bin"
bash "$K8S_TOOLS/build-kube-apiserver.sh" >/tmp/starling-build-kube-apiserver.log 2>&1 \
  || { tail -30 /tmp/starling-build-kube-apiserver.log; echo "building kube-apiserver failed" >&2; exit 1; }
cargo build -q --locked -p starling-operator
OPERATOR="${CARGO_TARGET_DIR:-$STARLING_ROOT/target}/debug/starling-operator"

work=$(mktemp -d)
api_pid=""
op_pid=""
cleanup() {
  set +e
  if [ -n "$op_pid" ]; then kill "$op_pid" 2>/dev/null; wait "$op_pid" 2>/dev/null; fi
  if [ -n "$api_pid" ]; then kill "$api_pid" 2>/dev/null; wait "$api_pid" 2>/dev/null; fi
  local pids
  pids=$(cat "$work"/cp/*.pid 2>/dev/null)
  bash "$K8S_TOOLS/control-plane.sh" stop "$work/cp"
  # kube-apiserver can hang on SIGTERM once etcd is gone: give both 10 s, then end them.
  for _ in $(seq 1 20); do
    # shellcheck disable=SC2086
    kill -0 $pids 2>/dev/null || break
    sleep 0.5
  done
  for p in $pids; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  [ -f "$work/operator.log" ] && { echo "--- operator log (tail)"; tail -40 "$work/operator.log"; } >&2
  exit 1
}
# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local secs=$1; shift
  for _ in $(seq 1 $((secs * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}

APISERVER_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ETCD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export APISERVER_PORT ETCD_PORT
bash "$K8S_TOOLS/control-plane.sh" start "$K8S_BIN" "$work/cp"
export KUBECONFIG="$work/cp/kubeconfig"
SERVER="https://127.0.0.1:$APISERVER_PORT"
ADMIN_TOKEN=$(awk -F, '{print $1}' "$work/cp/certs/tokens.csv")
SA=system:serviceaccount:starling-system:starling-operator

echo "--- helm install"
kubectl create namespace iot >/dev/null
kubectl create namespace other >/dev/null
helm install starling charts/starling -n starling-system --create-namespace --wait=hookOnly \
  --set 'operator.watchNamespaces={iot}' >/dev/null
kubectl get crd brokers.starling.dev >/dev/null || fail "the CRD was not installed"
kubectl -n starling-system get deploy starling-operator starling-api starling-postgresql >/dev/null \
  || fail "the chart's Deployments are missing"

echo "--- RBAC equals the committed list"
{
  kubectl get roles -A -l app.kubernetes.io/part-of=starling -o json
  kubectl get clusterroles -l app.kubernetes.io/part-of=starling -o json
} | python3 scripts/tiers/kube/rbac_rules.py >"$work/rbac.txt"
diff -u scripts/tiers/kube/operator-rbac.txt "$work/rbac.txt" || fail "the operator's RBAC differs from scripts/tiers/kube/operator-rbac.txt"

echo "--- kubectl auth can-i as the operator"
can() { [ "$(kubectl auth can-i "$@" --as="$SA")" = yes ]; }
for check in "create deployments.apps -n iot" "patch brokers.starling.dev/status -n iot" "update brokers.starling.dev/finalizers -n iot" \
  "watch brokers.starling.dev -n iot" "get secrets -n iot" "create secrets -n iot" "create events.events.k8s.io -n iot" \
  "update leases.coordination.k8s.io/starling-operator -n starling-system"; do
  # shellcheck disable=SC2086
  can $check || fail "the operator cannot: $check"
done
for check in "get secrets -n other" "get secrets -n default" "list secrets -n iot" "watch secrets -n iot" \
  "get secrets -n starling-system" "delete deployments.apps -n iot" "create deployments.apps -n other" \
  "update leases.coordination.k8s.io/someone-else -n starling-system" "get brokers.starling.dev -n other"; do
  # shellcheck disable=SC2086
  can $check && fail "the operator can, but must not: $check"
done

echo "--- the api stand-in and the operator (as its ServiceAccount)"
api_token="stk_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$api_token" >"$work/api-token"
api_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start_api() {
  rm -f "$work/api.port"
  python3 scripts/tiers/kube/standin_api.py "$api_token" "$work/api.port" "$work/api.log" "$api_port" &
  api_pid=$!
  wait_for 10 test -s "$work/api.port" || fail "the api stand-in did not start"
}
start_api
api_url="http://127.0.0.1:$api_port"
sed -e "s|users: \[{name: admin, user: {token: \"\(.*\)\"}}\]|users: [{name: admin, user: {token: \"\1\", as: \"$SA\"}}]|" \
  "$KUBECONFIG" >"$work/operator-kubeconfig"
grep -q "as: \"$SA\"" "$work/operator-kubeconfig" || fail "could not write the impersonating kubeconfig"
KUBECONFIG="$work/operator-kubeconfig" RUST_LOG=info,kube=warn "$OPERATOR" run \
  --api-url "$api_url" --api-token-file "$work/api-token" --control-plane-url "http://starling-api-internal.starling-system.svc:8081" \
  --watch-namespaces iot --lease-namespace starling-system --lease-name starling-operator \
  --http 127.0.0.1:0 --log-format pretty >"$work/operator.log" 2>&1 &
op_pid=$!
wait_for 30 grep -q "starting the controller" "$work/operator.log" || fail "the operator did not start"
kubectl -n starling-system get lease starling-operator -o jsonpath='{.spec.holderIdentity}' | grep -q . \
  || fail "the operator holds no leader Lease"

echo "--- an example Broker"
sed 's/namespace: default/namespace: iot/' examples/broker-hook-and-limits.yaml | kubectl apply -f - >/dev/null
has_id() { [ -n "$(kubectl -n iot get broker orders -o jsonpath='{.status.brokerId}')" ]; }
wait_for 60 has_id || fail "the Broker got no status.brokerId"
uid=$(kubectl -n iot get broker orders -o jsonpath='{.metadata.uid}')
for obj in deployment/orders service/orders configmap/orders-config secret/orders-tls secret/orders-ca secret/orders-credentials; do
  json=$(kubectl -n iot get "$obj" -o json --show-managed-fields) || fail "$obj was not created"
  python3 -c '
import json, sys
o = json.loads(sys.argv[1]); uid = sys.argv[2]; what = sys.argv[3]
refs = o["metadata"].get("ownerReferences", [])
assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in refs] == [("Broker", "orders", uid, True)], (what, refs)
managers = {(m["manager"], m["operation"]) for m in o["metadata"].get("managedFields", [])}
assert ("starling-operator", "Apply") in managers, (what, managers)
' "$json" "$uid" "$obj" || fail "$obj lacks the owner reference or the field manager"
done
kubectl -n iot get broker orders -o json >"$work/broker.json"
python3 - "$work/broker.json" "$work/api.log" <<'PY' || fail "the Broker's status or the api calls are wrong"
import json, sys
b = json.load(open(sys.argv[1])); s = b["status"]
assert b["metadata"]["finalizers"] == ["starling.dev/deregister"], b["metadata"]
assert s["observedGeneration"] == b["metadata"]["generation"], s
assert s["phase"] == "Pending" and s["readyReplicas"] == 0, s
conds = {c["type"]: c for c in s["conditions"]}
assert conds["Progressing"]["status"] == "True" and conds["Degraded"]["status"] == "False", conds
assert s["endpoints"]["mqtts"] == "mqtts://orders.iot.mqtt.example.com:8883", s["endpoints"]
assert s["tls"]["notAfter"], s
calls = [json.loads(l) for l in open(sys.argv[2])]
assert all(c["authorized"] for c in calls), calls
create = [c for c in calls if c["method"] == "POST" and c["path"] == "/v1/namespaces/iot/brokers"]
assert len(create) == 1, calls
body = create[0]["body"]
assert body["name"] == "orders" and body["expiration"] == 86400, body
assert body["on_publish"] == {"url": "https://hooks.example.com/starling/orders"}, body
assert body["managedBy"] == {"kind": "Broker", "namespace": "iot", "name": "orders"}, body
print("status and registration ok")
PY
args=$(kubectl -n iot get deploy orders -o jsonpath='{.spec.template.spec.containers[0].args}')
case "$args" in *'"--broker-id"'*'"--broker-secret-file"'*) ;; *) fail "the pod does not run in managed mode: $args" ;; esac
kubectl -n iot get configmap orders-config -o jsonpath='{.data.broker\.toml}' | grep -q 'max_connections = 5000' \
  || fail "broker.toml lacks the limits"

echo "--- playing the kubelet: the replica becomes ready"
kubectl -n iot patch deployment orders --subresource=status --type=merge \
  -p '{"status":{"replicas":1,"readyReplicas":1,"availableReplicas":1,"updatedReplicas":1}}' >/dev/null
is_ready() { [ "$(kubectl -n iot get broker orders -o jsonpath='{.status.phase}')" = Ready ]; }
wait_for 60 is_ready || fail "the Broker did not turn Ready"
kubectl -n iot get broker orders | grep -q 'True' || fail "kubectl get brokers does not show Ready"

echo "--- an unreachable api: Degraded, a Warning event, the pods left alone"
condition_reason() {
  kubectl -n iot get broker orders -o jsonpath='{.status.conditions[?(@.type=="Degraded")].reason}'
}
kill "$api_pid"; wait "$api_pid" 2>/dev/null || true; api_pid=""
kubectl -n iot annotate broker orders starling.dev/poke=1 --overwrite >/dev/null
api_down() { [ "$(condition_reason)" = ApiUnreachable ]; }
wait_for 60 api_down || fail "the Broker did not turn Degraded/ApiUnreachable (reason: $(condition_reason))"
[ "$(kubectl -n iot get broker orders -o jsonpath='{.status.phase}')" = Degraded ] || fail "phase is not Degraded"
warned() { kubectl -n iot get events.events.k8s.io -o jsonpath='{range .items[*]}{.type}/{.reason} {end}' | grep -q 'Warning/ApiUnreachable'; }
wait_for 30 warned || fail "no Warning event ApiUnreachable"
kubectl -n iot get events.events.k8s.io -o jsonpath='{range .items[*]}{.type}/{.reason} {end}' | grep -q 'Normal/Registered' \
  || fail "no Normal event Registered"
kubectl -n iot get deploy orders >/dev/null || fail "the Deployment went away while the api was down"

echo "--- a broker deleted in the api: Degraded, not re-created"
start_api   # a fresh stand-in: it has forgotten every broker
deleted_in_api() { [ "$(condition_reason)" = DeletedInApi ]; }
wait_for 90 deleted_in_api || fail "the Broker did not turn Degraded/DeletedInApi (reason: $(condition_reason))"
python3 - "$work/api.log" <<'PY' || fail "the operator re-created a broker the api had lost"
import json, sys
creates = [c for c in map(json.loads, open(sys.argv[1])) if c["method"] == "POST" and c["path"].endswith("/brokers")]
assert len(creates) == 1, creates
PY

echo "--- invalid objects get 422"
post_status() {
  curl -sk -o "$work/post.out" -w '%{http_code}' -X POST -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'Content-Type: application/json' --data "$1" "$SERVER/apis/starling.dev/v1alpha1/namespaces/iot/brokers"
}
code=$(post_status '{"apiVersion":"starling.dev/v1alpha1","kind":"Broker","metadata":{"name":"neg"},"spec":{"replicas":-1}}')
[ "$code" = 422 ] || fail "replicas: -1 got $code, not 422: $(cat "$work/post.out")"
code=$(post_status '{"apiVersion":"starling.dev/v1alpha1","kind":"Broker","metadata":{"name":"port"},"spec":{"listeners":{"mqtts":{"port":70000}}}}')
[ "$code" = 422 ] || fail "port 70000 got $code, not 422: $(cat "$work/post.out")"
if kubectl apply -f examples/invalid/broker-invalid.yaml >"$work/invalid.out" 2>&1; then
  fail "the invalid example was accepted"
fi

echo "--- deletion runs the finalizer"
kubectl -n iot delete broker orders --wait=false >/dev/null
gone() { ! kubectl -n iot get broker orders >/dev/null 2>&1; }
wait_for 60 gone || fail "the Broker was not released"
python3 - "$work/api.log" <<'PY' || fail "the api saw no DELETE from the operator"
import json, sys
calls = [json.loads(l) for l in open(sys.argv[1])]
deletes = [c for c in calls if c["method"] == "DELETE"]  # answered 404: the api had lost it
assert len(deletes) == 1 and deletes[0]["path"] == "/v1/namespaces/iot/brokers/orders", deletes
assert deletes[0]["managedBy"] == "Broker/iot/orders", deletes
print("deregistered through the finalizer")
PY

echo "--- helm uninstall keeps the CRD"
kill "$op_pid"
wait "$op_pid" 2>/dev/null || true
op_pid=""
holder=$(kubectl -n starling-system get lease starling-operator -o jsonpath='{.spec.holderIdentity}')
[ -z "$holder" ] || fail "the operator did not release its Lease on shutdown (holder $holder)"
helm uninstall starling -n starling-system >/dev/null
kubectl get crd brokers.starling.dev >/dev/null || fail "helm uninstall deleted the CRD"
echo "kube tier ok"
