#!/usr/bin/env bash
# The chart and the operator against a real kube-apiserver (v1.20, etcd; no kubelet, no
# controller-manager), built from Debian's sources and cached under ~/.cache/starling-k8s:
# - helm install the chart (operator watching namespace iot);
# - the operator's RBAC rules equal scripts/tiers/kube/operator-rbac.txt, and `kubectl auth can-i`
#   shows it can do its work and cannot read Secrets outside its namespaces;
# - the operator runs out of cluster as its ServiceAccount (impersonated), against the real api
#   (`starling-dev`, on SQLite);
# - an example Broker gets its Deployment, Service, ConfigMap and Secrets with owner references
#   and the operator's field manager, a status with brokerId, endpoints and tls.notAfter, and
#   turns Ready when the test, playing the kubelet, marks the Deployment's replica ready and
#   rolled out; a spec change makes Ready drop (RollingOut) until the new template is rolled out;
# - adding spec.namespace is refused by the operator (this server has no CEL) and nothing is
#   registered elsewhere; a deleted credential Secret is recovered by rotating the broker secret
#   through the api (the pod below then runs with the rotated secret);
# - playing the kubelet further, the broker binary runs with exactly the pod template's arguments,
#   environment and mounted ConfigMap and Secrets (managed mode, token auth), and MQTT clients with
#   tokens from the api exchange a message over TLS, trusting the operator-issued CA;
# - replicas: -1 and a port of 70000 each get 422 from the server;
# - with the api down the Broker turns Degraded (ApiUnreachable) with a Warning event; when the
#   api has lost the broker it turns Degraded (DeletedInApi) and is not re-created;
# - a Broker without spec.storage keeps --data-dir in an emptyDir and reports Durable=False
#   (EphemeralStorage); one with storage gets a ReadWriteOnce claim it owns, mounted at the data
#   directory, with Recreate; the stand-in broker keeps its store and managed state there;
# - `kubectl scale broker` changes spec.replicas through the scale subresource (status.selector
#   shown); three replicas without a NATS cluster turn Degraded (ReplicasNeedCluster) and the
#   Deployment keeps one;
# - with the chart's NATS (nats.install.enabled, helm upgrade): its StatefulSet includes the
#   auth.conf the operator writes (no token); the operator creates its NATS keys once and writes
#   auth.conf, which nats-server accepts next to the chart's nats.conf; it gives a Broker with
#   replicas: 3 a Deployment of 3 with --cluster-nats, topology spread and anti-affinity, the
#   preStop drain, a NATS user of its own (trio-nats: nats.creds, whose permissions name only
#   its broker id; broker.toml names it and its inbox prefix) and a Server Reference, no seed in
#   any Deployment, ConfigMap, status or log; playing the kubelet for one pod, its broker joins
#   a local nats-server running that auth.conf (the operator publishes trio's account to it)
#   and turns ready, and with its credentials tampered with NATS refuses it; the installed NATS
#   serves TLS (nats.install.tls): the operator makes its CA once, issues the servers'
#   certificate (verified by openssl for the servers' names, server and client use, and loaded
#   by nats-server -t with the chart's nats.conf) and gives trio-nats the CA certificate alone;
#   with nats.install.tls.enabled=false and nats.tls.existingSecret that Secret's CA reaches
#   trio-nats, mounted and named by path in broker.toml;
#   on this v1.20 server no policy/v1 budget and DisruptionBudget=False, while
#   `starling-operator render` of the same Broker passes kubernetes-validate --strict for 1.33
#   with its policy/v1 budget; status.endpoints say a LoadBalancer waits for its address, then
#   follow it once set (the test plays the cloud's
#   controller), follow an Ingress to the wss port and a TLSRoute through its Gateway listener
#   (Gateway API CRDs from scripts/tiers/kube/fixtures); `kubectl scale broker trio --replicas=2`
#   reaches the Deployment;
# - deleting the Broker runs the finalizer: the api sees the DELETE, then the Broker is gone;
# - playing the kubelet's stop: the pod's preStop hook (`starling-broker drain`, /drain over
#   loopback on its http port) sends the broker's connected MQTT 5 client DISCONNECT 0x8B
#   (server shutting down) and exits once drained; the SIGTERM after it ends the broker, all
#   within the pod's
#   terminationGracePeriodSeconds;
# - NetworkPolicies: the operator gives each Broker's pods one (MQTT from anywhere, metrics from
#   the monitoring namespace) once its RBAC allows, and warns (NetworkPolicyForbidden) until then;
# - upgrade: the release is installed from the previous chart version (a packaged copy under
#   scripts/tiers/kube/fixtures) and, with the Broker serving, `helm upgrade`d to this one: the
#   Broker keeps its brokerId, Deployment (same generation, no rollout) and credential, and the
#   same clients still exchange messages; the new NetworkPolicies are accepted by the server and
#   select the chart's pods; `helm test` runs its pod (played by the test: busybox wget against
#   the api's /readyz) and passes;
# - a second replica waits while the first holds the Lease, is ready all the same (an operator
#   upgrade never deadlocks), and takes over when the first shuts down;
#   /metrics counts reconciles, errors by reason and durations, and has the per-Broker readiness
#   and certificate-expiry gauges; every metric the chart's PrometheusRule and Grafana dashboard
#   name is in the real /metrics of the broker, the api or the operator
#   (scripts/tiers/kube/check_metric_names.py); the broker reports when the api last confirmed
#   its state;
# - cert-manager: with the Certificate CRD from scripts/tiers/kube/fixtures, a Broker with
#   spec.tls.issuerRef gets an owned Certificate for its hosts and Secret, says it waits for
#   cert-manager until the Secret exists, then reports its notAfter and, 3 days from expiry,
#   CertificateExpiring/ExpiresSoon;
# - tenancy: a Broker in namespace iot naming the pub/sub namespace other turns Degraded
#   (NamespaceNotAllowed) with a Warning event, and nothing exists in the api or the namespace.
source "$(dirname "$0")/../lib/tier.sh"
source scripts/lib/k8s-tools.sh
k8s_tools_helm
k8s_tools_apiserver
k8s_tools_python
# The helm test pod's image is busybox: its wget, from Debian, runs the pod's command.
apt_install_missing busybox
cargo build -q --locked -p starling-operator -p starling-broker -p starling-dev
OPERATOR="${CARGO_TARGET_DIR:-$STARLING_ROOT/target}/debug/starling-operator"
BROKER="${CARGO_TARGET_DIR:-$STARLING_ROOT/target}/debug/starling-broker"
DEV="${CARGO_TARGET_DIR:-$STARLING_ROOT/target}/debug/starling-dev"

work=$(mktemp -d)
api_pid=""
op_pid=""
standby_pid=""
broker_pid=""
cleanup() {
  set +e
  if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null; wait "$broker_pid" 2>/dev/null; fi
  if [ -n "${nats_pid:-}" ]; then kill "$nats_pid" 2>/dev/null; wait "$nats_pid" 2>/dev/null; fi
  if [ -n "$op_pid" ]; then kill "$op_pid" 2>/dev/null; wait "$op_pid" 2>/dev/null; fi
  if [ -n "$standby_pid" ]; then kill "$standby_pid" 2>/dev/null; wait "$standby_pid" 2>/dev/null; fi
  if [ -n "${new_pid:-}" ]; then kill "$new_pid" 2>/dev/null; wait "$new_pid" 2>/dev/null; fi
  if [ -n "$api_pid" ]; then kill "$api_pid" 2>/dev/null; wait "$api_pid" 2>/dev/null; fi
  bash "$K8S_TOOLS/control-plane.sh" stop "$work/cp"
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

bash "$K8S_TOOLS/control-plane.sh" start "$K8S_BIN" "$work/cp"
export KUBECONFIG="$work/cp/kubeconfig"
SERVER=$(cat "$work/cp/server")
ADMIN_TOKEN=$(cat "$work/cp/admin-token")
SA=system:serviceaccount:starling-system:starling-operator

echo "--- helm install of the previous chart version (upgraded to this one below)"
# scripts/tiers/kube/fixtures/starling-0.1.0.tgz is the chart as released before this version,
# packaged with `helm package`, so a clone without history can test the upgrade.
previous_chart=scripts/tiers/kube/fixtures/starling-0.1.0.tgz
kubectl create namespace iot >/dev/null
kubectl create namespace other >/dev/null
helm install starling "$previous_chart" -n starling-system --create-namespace --wait=hookOnly \
  --set 'operator.watchNamespaces={iot}' >/dev/null
kubectl get crd brokers.starling.dev >/dev/null || fail "the CRD was not installed"
kubectl -n starling-system get deploy starling-operator starling-api starling-postgresql >/dev/null \
  || fail "the chart's Deployments are missing"

# The RBAC of this chart version equals the committed list (checked after the upgrade below).
check_rbac() {
  {
    kubectl get roles -A -l app.kubernetes.io/part-of=starling -o json
    kubectl get clusterroles -l app.kubernetes.io/part-of=starling -o json
  } | python3 scripts/tiers/kube/rbac_rules.py >"$work/rbac.txt"
  diff -u scripts/tiers/kube/operator-rbac.txt "$work/rbac.txt" || fail "the operator's RBAC differs from scripts/tiers/kube/operator-rbac.txt"
}

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

echo "--- the api (starling-dev) and the operator (as its ServiceAccount)"
api_port=$(free_port)
api_internal="127.0.0.1:$(free_port)"
api_ports=(--internal-addr "$api_internal" --mqtt "127.0.0.1:$(free_port)" --ws "127.0.0.1:$(free_port)"
  --mqtts "127.0.0.1:$(free_port)" --wss "127.0.0.1:$(free_port)" --broker-http "127.0.0.1:$(free_port)")
start_api() { # the same data directory every time: the database survives a restart
  "$DEV" --data-dir "$work/api-data" --api-addr "127.0.0.1:$api_port" "${api_ports[@]}" >>"$work/api.log" 2>&1 &
  api_pid=$!
  wait_for 60 curl -sf "http://127.0.0.1:$api_port/healthz" || { tail -20 "$work/api.log"; fail "the api did not start"; }
}
start_api
api_url="http://127.0.0.1:$api_port"
api_token=$(cat "$work/api-data/admin-token")
api() { # METHOD PATH [curl args...]: prints the body, then the status on the last line
  local method=$1 path=$2; shift 2
  curl -s -X "$method" -H "Authorization: Bearer $api_token" -w '\n%{http_code}' "$@" "$api_url$path"
}
sed -e "s|users: \[{name: admin, user: {token: \"\(.*\)\"}}\]|users: [{name: admin, user: {token: \"\1\", as: \"$SA\"}}]|" \
  "$KUBECONFIG" >"$work/operator-kubeconfig"
grep -q "as: \"$SA\"" "$work/operator-kubeconfig" || fail "could not write the impersonating kubeconfig"
op_http=$(free_port)
start_operator() { # NAME HTTP_PORT LOG
  KUBECONFIG="$work/operator-kubeconfig" RUST_LOG=info,kube=warn POD_NAME="$1" "$OPERATOR" run \
    --api-url "$api_url" --api-token-file "$work/api-data/admin-token" --control-plane-url "http://starling-api-internal.starling-system.svc:8081" \
    --watch-namespaces iot --lease-namespace starling-system --lease-name starling-operator --tenancy-allow iot=elsewhere \
    --broker-network-policies true --monitoring-namespace monitoring \
    --http "127.0.0.1:$2" --log-format pretty >"$3" 2>&1 &
}
start_operator operator-a "$op_http" "$work/operator.log"
op_pid=$!
wait_for 30 grep -q "starting the controller" "$work/operator.log" || fail "the operator did not start"
[ "$(kubectl -n starling-system get lease starling-operator -o jsonpath='{.spec.holderIdentity}')" = operator-a ] \
  || fail "the operator holds no leader Lease"
curl -sf "http://127.0.0.1:$op_http/readyz" >/dev/null || fail "the leading operator is not ready"

echo "--- a second replica waits for the Lease"
standby_http=$(free_port)
start_operator operator-b "$standby_http" "$work/standby.log"
standby_pid=$!
wait_for 30 grep -q "standing by" "$work/standby.log" || fail "the second replica did not find the Lease held"
grep -q "starting the controller" "$work/standby.log" && fail "two replicas lead at once"
curl -sf "http://127.0.0.1:$standby_http/healthz" >/dev/null || fail "the standby replica is not live"
# Ready is not leading: a rolling upgrade of the operator's Deployment (maxUnavailable 0) waits
# for the new pod to be ready while the old one still holds the Lease; were a standby unready,
# the upgrade would never finish and the old version would run forever.
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$standby_http/readyz")" = 200 ] \
  || fail "the standby replica is not ready, so an operator upgrade would deadlock"
grep -q '^starling_operator_leader 0' <(curl -s "http://127.0.0.1:$standby_http/metrics") \
  || fail "the standby replica claims to lead"

echo "--- an example Broker"
# Without onPublish for now: the pod's broker would send every message to hooks.example.com, which
# this machine cannot reach, and the message exchange below would be dropped. It is added after.
sed -e 's/namespace: default/namespace: iot/' -e '/^  onPublish:/,+1d' examples/broker-hook-and-limits.yaml | kubectl apply -f - >/dev/null
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
api GET /v1/namespaces/iot/brokers/orders >"$work/api-broker.json"
python3 - "$work/broker.json" "$work/api-broker.json" <<'PY' || fail "the Broker's status or its api record is wrong"
import json, sys
b = json.load(open(sys.argv[1])); s = b["status"]
assert b["metadata"]["finalizers"] == ["starling.dev/deregister"], b["metadata"]
assert s["observedGeneration"] == b["metadata"]["generation"], s
assert s["phase"] == "Pending" and s["readyReplicas"] == 0, s
conds = {c["type"]: c for c in s["conditions"]}
assert conds["Progressing"]["status"] == "True" and conds["Degraded"]["status"] == "False", conds
# No spec.storage: the state lives in an emptyDir, and the status says it is not durable.
assert conds["Durable"]["status"] == "False" and conds["Durable"]["reason"] == "EphemeralStorage", conds
assert "rescheduled" in conds["Durable"]["message"], conds["Durable"]
assert s["endpoints"]["mqtts"] == "mqtts://orders.iot.mqtt.example.com:8883", s["endpoints"]
assert s["tls"]["notAfter"], s
body, code = open(sys.argv[2]).read().rsplit("\n", 1)
assert code == "200", (code, body)
a = json.loads(body)
assert a["id"] == s["brokerId"], (a, s)
assert a["expiration"] == 86400, a
assert a["managedBy"] == {"kind": "Broker", "namespace": "iot", "name": "orders"}, a
assert a["limits"]["maxConnections"] == 5000, a
assert a["endpoint"] == s["endpoints"]["mqtts"], ("the api and the status advertise other endpoints", a, s["endpoints"])
if s["endpoints"].get("wss"):
    assert a["wsEndpoint"] == s["endpoints"]["wss"][0], ("the api and the status advertise other endpoints", a, s["endpoints"])
print("status and registration ok")
PY
args=$(kubectl -n iot get deploy orders -o jsonpath='{.spec.template.spec.containers[0].args}')
case "$args" in *'"--broker-id"'*'"--broker-secret-file"'*) ;; *) fail "the pod does not run in managed mode: $args" ;; esac
case "$args" in *'"--data-dir","/var/lib/starling"'*) ;; *) fail "the pod has no --data-dir /var/lib/starling: $args" ;; esac
data_volume=$(kubectl -n iot get deploy orders -o jsonpath='{.spec.template.spec.containers[0].volumeMounts[?(@.mountPath=="/var/lib/starling")].name}')
[ -n "$data_volume" ] || fail "nothing is mounted at the data directory"
kubectl -n iot get deploy orders -o jsonpath="{.spec.template.spec.volumes[?(@.name==\"$data_volume\")]}" | grep -q '"emptyDir"' \
  || fail "a Broker without storage does not keep its data directory in an emptyDir"
kubectl -n iot get configmap orders-config -o jsonpath='{.data.broker\.toml}' | grep -q 'max_connections = 5000' \
  || fail "broker.toml lacks the limits"

echo "--- playing the kubelet: the replica becomes ready"
# Playing the Deployment controller too: it has seen the current generation and rolled it out.
roll_out() {
  local gen
  gen=$(kubectl -n iot get deploy orders -o jsonpath='{.metadata.generation}')
  kubectl -n iot patch deployment orders --subresource=status --type=merge \
    -p "{\"status\":{\"observedGeneration\":$gen,\"replicas\":1,\"readyReplicas\":1,\"availableReplicas\":1,\"updatedReplicas\":1}}" >/dev/null
}
roll_out
is_ready() { [ "$(kubectl -n iot get broker orders -o jsonpath='{.status.phase}')" = Ready ]; }
wait_for 60 is_ready || fail "the Broker did not turn Ready"
kubectl -n iot get broker orders | grep -q 'True' || fail "kubectl get brokers does not show Ready"

echo "--- playing the kubelet: the broker serves with exactly the pod's arguments, environment and files"
# The pod template's broker container, run locally: every mounted ConfigMap and Secret is written
# under a scratch root at its mountPath, the arguments and environment are the template's, and
# only two things are rewritten (scripts/tiers/kube/pod_standin.py): listen addresses move to free
# loopback ports, and the --control-plane URL (the api's in-cluster Service name, which does not
# resolve outside a cluster) becomes the local api's internal listener. The binary is the one the
# image would hold. The broker is ready only once it has its state from the api; a client with a
# token from the api then exchanges a message over TLS, trusting the operator-issued CA.
pod="$work/pod"
mkdir -p "$pod"
kubectl -n iot get deploy orders -o json >"$work/pod-deploy.json"
kubectl -n iot get configmaps,secrets -o json >"$work/pod-objects.json"
python3 scripts/tiers/kube/pod_standin.py "$work/pod-deploy.json" "$work/pod-objects.json" "$pod" \
  "http://$api_internal" "$work" || fail "could not lay out the pod's files"
mapfile -t broker_args <"$work/args"
mapfile -t broker_env <"$work/env"
port_of() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/ports.json" "$1"; }
mqtts_port=$(port_of --mqtts)
broker_http=$(port_of --http)
arg_of() { awk -v f="$1" 'prev==f{print; exit} {prev=$0}' "$work/args"; }
# The pod runs as the broker the api knows, with the secret the operator stored for it.
broker_id=$(kubectl -n iot get broker orders -o jsonpath='{.status.brokerId}')
[ "$(arg_of --broker-id)" = "$broker_id" ] || fail "the pod's --broker-id $(arg_of --broker-id) is not the api's $broker_id"
secret_file=$(arg_of --broker-secret-file)
case "$secret_file" in "$pod/etc/starling/credentials/"*) ;; *) fail "the broker secret is not a file from the mounted credential Secret: $secret_file" ;; esac
[ -s "$secret_file" ] || fail "the mounted broker secret file is empty"
[ "$(cat "$pod/etc/starling/credentials/broker-id")" = "$broker_id" ] || fail "the credential Secret names another broker"
[ "$(arg_of --auth)" = token ] || fail "the pod does not use token auth"
kubectl -n iot get secret orders-ca -o jsonpath='{.data.ca\.crt}' | base64 -d >"$work/operator-ca.crt"
[ -s "$work/operator-ca.crt" ] || fail "the CA Secret has no ca.crt"
env -i PATH="$PATH" "${broker_env[@]}" "$BROKER" "${broker_args[@]}" >"$work/broker.log" 2>&1 &
broker_pid=$!
broker_ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$broker_http/readyz")" = 200 ]; }
wait_for 60 broker_ready || { tail -20 "$work/broker.log"; fail "the broker did not become ready with the pod's arguments: ${broker_args[*]}"; }
out=$(api GET "/v1/namespaces/iot/brokers/orders/credentials?number=2&type=TOKEN&topicAcl=%23&clientid=kubelet-pub&clientid=kubelet-sub")
[ "${out##*$'\n'}" = 200 ] || fail "the api issued no client tokens: $out"
token_of() { python3 -c 'import json, sys; print(json.loads(sys.argv[1].rsplit("\n", 1)[0])[sys.argv[2]])' "$out" "$1"; }
pub_token=$(token_of kubelet-pub)
sub_token=$(token_of kubelet-sub)
mqtt_opts=(-h localhost -p "$mqtts_port" --cafile "$work/operator-ca.crt" -V 5 -u orders)
if mosquitto_pub "${mqtt_opts[@]}" -i kubelet-pub -P "not-a-token" -t orders/test -m refused -q 1 >"$work/refused.out" 2>&1; then
  fail "the broker accepted a client without a valid token"
fi
# Retained, so the subscriber gets it whenever it subscribes: no race between the two clients.
mosquitto_pub "${mqtt_opts[@]}" -i kubelet-pub -P "$pub_token" -t orders/test -m "hello over tls" -r -q 1 \
  || { tail -20 "$work/broker.log"; fail "publishing over TLS with a token and the operator's CA failed"; }
mosquitto_sub "${mqtt_opts[@]}" -i kubelet-sub -P "$sub_token" -t orders/test -C 1 -W 20 >"$work/sub.out" 2>&1 \
  || { cat "$work/sub.out"; fail "the subscriber got nothing over TLS"; }
grep -qx "hello over tls" "$work/sub.out" || { cat "$work/sub.out"; fail "the subscriber got the wrong message"; }
echo "the pod's broker served a token client over TLS"
# The data directory holds the store and the managed state (keys, revocations) from the api.
[ -d "$pod/var/lib/starling/store" ] || fail "the broker keeps no store under its --data-dir"
ls "$pod/var/lib/starling"/state-*.json >/dev/null 2>&1 || fail "the broker saved no managed state under its --data-dir"
curl -sf "http://127.0.0.1:$broker_http/metrics" >"$work/metrics-broker.txt" || fail "the broker serves no /metrics"
curl -sf "http://$api_internal/metrics" >"$work/metrics-api.txt" || fail "the api's internal listener serves no /metrics"
python3 - "$work/metrics-broker.txt" "$broker_id" <<'PY' || fail "the broker does not report when the api last confirmed its state"
import re, sys, time
text = open(sys.argv[1]).read()
m = re.search(r'^starling_control_plane_synced_timestamp_seconds\{broker_id="%s"\} (\S+)$' % re.escape(sys.argv[2]), text, re.M)
assert m, text
assert abs(time.time() - float(m.group(1))) < 120, m.group(0)
PY

echo "--- helm upgrade to this chart version: the Broker keeps serving"
# The previous chart gave the operator no right to NetworkPolicies: a Warning, and it serves on.
forbidden() { kubectl -n iot get events.events.k8s.io -o jsonpath='{range .items[*]}{.type}/{.reason} {end}' | grep -q 'Warning/NetworkPolicyForbidden'; }
wait_for 30 forbidden || fail "no Warning event NetworkPolicyForbidden under the previous chart's RBAC"
before=$(kubectl -n iot get deploy orders -o jsonpath='{.metadata.uid}/{.metadata.generation}/{.spec.template.metadata.annotations}')
creds_before=$(kubectl -n iot get secret orders-credentials -o jsonpath='{.metadata.uid}{.data}')
chart_secrets() { kubectl -n starling-system get secret starling-admin-token starling-kek starling-database -o jsonpath='{range .items[*]}{.metadata.uid}{.data}{"\n"}{end}'; }
chart_secrets_before=$(chart_secrets) || fail "the previous chart version made no admin token, KEK or database Secret"
helm upgrade starling charts/starling -n starling-system --wait=hookOnly --set 'operator.watchNamespaces={iot}' >/dev/null \
  || fail "helm upgrade from the previous chart version failed"
[ "$(chart_secrets)" = "$chart_secrets_before" ] || fail "the upgrade replaced or changed the admin token, KEK or database Secret"
[ "$(helm -n starling-system history starling -o json | python3 -c 'import json,sys; print([r["chart"] for r in json.load(sys.stdin)])')" \
  = "['starling-0.1.0', 'starling-$(awk '/^version:/ {print $2}' charts/starling/Chart.yaml)']" ] || fail "the release history is not previous, then this version"
kubectl get crd brokers.starling.dev >/dev/null || fail "the upgrade lost the CRD"
kubectl -n iot annotate broker orders starling.dev/poke=upgrade --overwrite >/dev/null
reconciled_after_upgrade() {
  [ "$(kubectl -n iot get broker orders -o jsonpath='{.status.phase}')" = Ready ] &&
    kubectl -n iot get events.events.k8s.io -o jsonpath='{range .items[*]}{.reason} {end}' | grep -q . &&
    [ "$(kubectl -n iot get broker orders -o jsonpath='{.status.observedGeneration}')" = "$(kubectl -n iot get broker orders -o jsonpath='{.metadata.generation}')" ]
}
wait_for 60 reconciled_after_upgrade || fail "the Broker is not Ready after the upgrade"
[ "$(kubectl -n iot get broker orders -o jsonpath='{.status.brokerId}')" = "$broker_id" ] || fail "the upgrade changed the brokerId"
after=$(kubectl -n iot get deploy orders -o jsonpath='{.metadata.uid}/{.metadata.generation}/{.spec.template.metadata.annotations}')
[ "$before" = "$after" ] || fail "the upgrade rolled or replaced the Broker's pods: $before -> $after"
[ "$creds_before" = "$(kubectl -n iot get secret orders-credentials -o jsonpath='{.metadata.uid}{.data}')" ] \
  || fail "the upgrade replaced the broker's credential"
mosquitto_pub "${mqtt_opts[@]}" -i kubelet-pub -P "$pub_token" -t orders/test -m "after the upgrade" -r -q 1 \
  || { tail -20 "$work/broker.log"; fail "publishing after the upgrade failed"; }
mosquitto_sub "${mqtt_opts[@]}" -i kubelet-sub -P "$sub_token" -t orders/test -C 1 -W 20 >"$work/sub.out" 2>&1 \
  || { cat "$work/sub.out"; fail "the subscriber got nothing after the upgrade"; }
grep -qx "after the upgrade" "$work/sub.out" || { cat "$work/sub.out"; fail "the subscriber got the wrong message after the upgrade"; }
check_rbac
echo "upgraded; the Broker kept its pods, credential and clients"
has_netpol() { kubectl -n iot get networkpolicy orders >/dev/null 2>&1; }
kubectl -n iot annotate broker orders starling.dev/poke=netpol --overwrite >/dev/null
wait_for 60 has_netpol || fail "the upgraded RBAC did not let the operator apply the Broker's NetworkPolicy"
kubectl -n iot get deploy orders -o json >"$work/orders-deploy.json"
kubectl -n iot get networkpolicy orders -o json | python3 -c '
import json, sys
p = json.load(sys.stdin); s = p["spec"]
[c] = json.load(open(sys.argv[1]))["spec"]["template"]["spec"]["containers"]
mqtt_ports = [x["containerPort"] for x in c["ports"] if x["name"] in ("mqtts", "wss")]
assert [(r["kind"], r["name"]) for r in p["metadata"]["ownerReferences"]] == [("Broker", "orders")], p["metadata"]
assert s["podSelector"]["matchLabels"] == {"app.kubernetes.io/instance": "orders", "starling.dev/broker": "orders"}, s
assert s["policyTypes"] == ["Ingress"], s
mqtt, metrics = s["ingress"]
assert [x["port"] for x in mqtt["ports"]] == mqtt_ports and "from" not in mqtt, (mqtt, mqtt_ports)
assert [x["port"] for x in metrics["ports"]] == [9090], metrics
assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}], metrics
' "$work/orders-deploy.json" || fail "the Broker's NetworkPolicy is not MQTT from anywhere, metrics from monitoring"
# Its pod selector selects the Broker's pods.
[ "$(kubectl -n iot get deploy -l app.kubernetes.io/instance=orders,starling.dev/broker=orders -o name)" = deployment.apps/orders ] \
  || fail "the NetworkPolicy's selector does not select the Broker's Deployment"
curl -sf "http://127.0.0.1:$op_http/metrics" >"$work/metrics-operator-upgrade.txt" || fail "no operator /metrics"
grep -q '^starling_operator_broker_ready{namespace="iot",broker="orders"} 1$' "$work/metrics-operator-upgrade.txt" \
  || fail "the operator does not report the Ready Broker: $(grep broker_ready "$work/metrics-operator-upgrade.txt")"
grep -Eq '^starling_operator_certificate_not_after_timestamp_seconds\{namespace="iot",broker="orders"\} [0-9]{10}$' "$work/metrics-operator-upgrade.txt" \
  || fail "the operator does not report the Broker's certificate expiry"
helm upgrade starling charts/starling -n starling-system --wait=hookOnly --set 'operator.watchNamespaces={iot}' >/dev/null \
  || fail "a second helm upgrade failed"
[ "$(chart_secrets)" = "$chart_secrets_before" ] || fail "rendering the chart again changed its Secrets"

echo "--- a rollout of the operator: a new replica is ready beside the leader and generates missing Secrets once"
# What `helm upgrade` does to the operator's Deployment (two replicas, maxUnavailable 0): a new
# pod starts while the old ones run. It must become ready without the Lease, and it creates the
# chart's Secrets that do not exist yet (here a throwaway one) without touching existing ones.
kubectl -n starling-system delete secret starling-generated-check --ignore-not-found >/dev/null
generate='[{"name":"starling-generated-check","data":{"token":"stk_{random}"}},{"name":"starling-admin-token","data":{"token":"stk_{random}"}}]'
new_http=$(free_port)
STARLING_OPERATOR_GENERATE_SECRETS="$generate" start_operator operator-c "$new_http" "$work/operator-c.log"
new_pid=$!
new_ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$new_http/readyz")" = 200 ]; }
wait_for 30 new_ready || { tail -20 "$work/operator-c.log"; fail "the new operator replica is not ready while another leads"; }
grep -q "starting the controller" "$work/operator-c.log" && fail "the new replica leads beside the old one"
generated=$(kubectl -n starling-system get secret starling-generated-check -o jsonpath='{.data.token}' | base64 -d) \
  || fail "the operator did not generate the missing Secret"
[ "${generated#stk_}" != "$generated" ] && [ "${#generated}" = 68 ] || fail "the generated token has the wrong form"
[ "$(chart_secrets)" = "$chart_secrets_before" ] || fail "the operator changed an existing chart Secret"
kill "$new_pid"; wait "$new_pid" 2>/dev/null || true
STARLING_OPERATOR_GENERATE_SECRETS="$generate" start_operator operator-c "$new_http" "$work/operator-c2.log"
new_pid=$!
wait_for 30 new_ready || fail "the restarted replica is not ready"
[ "$(kubectl -n starling-system get secret starling-generated-check -o jsonpath='{.data.token}' | base64 -d)" = "$generated" ] \
  || fail "a restart regenerated a Secret"
kill "$new_pid"; wait "$new_pid" 2>/dev/null || true; new_pid=""
kubectl -n starling-system delete secret starling-generated-check >/dev/null

echo "--- the NetworkPolicies are accepted and select the chart's pods"
[ "$(kubectl -n starling-system get networkpolicy -o name | sort | tr '\n' ' ')" = \
  "networkpolicy.networking.k8s.io/starling-api networkpolicy.networking.k8s.io/starling-operator networkpolicy.networking.k8s.io/starling-postgresql " ] \
  || fail "the chart's NetworkPolicies are not all on the server: $(kubectl -n starling-system get networkpolicy -o name)"
for p in api operator postgresql; do
  sel=$(kubectl -n starling-system get networkpolicy "starling-$p" -o jsonpath='{.spec.podSelector.matchLabels}' \
    | python3 -c 'import json,sys; print(",".join(f"{k}={v}" for k, v in json.load(sys.stdin).items()))')
  [ "$(kubectl -n starling-system get deploy -l "$sel" -o name)" = "deployment.apps/starling-$p" ] \
    || fail "the NetworkPolicy starling-$p does not select exactly the $p Deployment ($sel)"
done

echo "--- helm test: the api's /readyz (the test plays the kubelet for the test pod)"
helm test starling -n starling-system --timeout 90s >"$work/helm-test.out" 2>&1 &
helm_test_pid=$!
test_pod=starling-test-api-readyz
wait_for 30 kubectl -n starling-system get pod "$test_pod" || fail "helm test created no pod"
kubectl -n starling-system get pod "$test_pod" -o json >"$work/test-pod.json"
python3 scripts/lib/k8s/check_security.py "$work/test-pod.json" || fail "the test pod breaks the security rules"
# Its command, with the Service URL (which resolves only inside a cluster) pointing at the api.
mapfile -t test_cmd < <(python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))["spec"]["containers"][0]
for a in c["command"] + c["args"]:
    print(a.replace("http://starling-api.starling-system.svc:80", sys.argv[2]))
' "$work/test-pod.json" "$api_url")
[ "${test_cmd[0]}" = wget ] || fail "the test pod does not run wget: ${test_cmd[*]}"
if timeout 60 busybox "${test_cmd[@]}" >"$work/test-pod.out" 2>&1; then phase=Succeeded; else phase=Failed; fi
[ "$phase" = Failed ] || grep -qx ready "$work/test-pod.out" \
  || { cat "$work/test-pod.out"; fail "the test pod's request printed no /readyz answer"; }
kubectl -n starling-system patch pod "$test_pod" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"$phase\"}}" >/dev/null
wait "$helm_test_pid" || { cat "$work/helm-test.out"; fail "helm test failed (the pod's /readyz request: $phase)"; }
[ "$phase" = Succeeded ] || fail "helm test passed although /readyz failed"
grep -q "Phase: *Succeeded" "$work/helm-test.out" || { cat "$work/helm-test.out"; fail "helm test did not report the pod's success"; }

echo "--- playing the kubelet's stop: the preStop hook drains the pod's broker (DISCONNECT 0x8B), then SIGTERM, within the grace period"
grace=$(kubectl -n iot get deploy orders -o jsonpath='{.spec.template.spec.terminationGracePeriodSeconds}')
[ -n "$grace" ] && [ "$grace" -ge 25 ] || fail "the pod's terminationGracePeriodSeconds ($grace) leaves no time to drain"
hook=$(kubectl -n iot get deploy orders -o jsonpath='{.spec.template.spec.containers[0].lifecycle.preStop.exec.command}')
[ "$hook" = "[\"/usr/local/bin/starling-broker\",\"drain\",\"--http\",\"127.0.0.1:9090\",\"--timeout-secs\",\"$grace\"]" ] \
  || fail "the pod's preStop hook is not starling-broker drain over loopback at its http port (got: $hook)"
python3 scripts/tiers/kube/drain_client.py localhost "$mqtts_port" "$work/operator-ca.crt" orders kubelet-sub "$sub_token" \
  >"$work/drain.out" 2>&1 &
drain_pid=$!
wait_for 20 grep -qx connected "$work/drain.out" || { cat "$work/drain.out"; fail "the draining client did not connect"; }
# The kubelet's preStop exec, inside the container (here the stand-in's binary and http port),
# waited for (up to the grace period).
hook_started=$(date +%s)
hook_answer=$(timeout "$grace" "$BROKER" drain --http "127.0.0.1:$broker_http" --timeout-secs "$grace" 2>&1) \
  || fail "the preStop hook failed: $hook_answer"
[ "$hook_answer" = drained ] || fail "the preStop hook said: $hook_answer"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$broker_http/readyz")" = 503 ] || fail "a drained broker still says ready"
kill -TERM "$broker_pid"
exited=false
for _ in $(seq 1 $((grace * 2))); do
  if ! kill -0 "$broker_pid" 2>/dev/null; then exited=true; break; fi
  sleep 0.5
done
$exited || fail "the broker did not exit within the pod's ${grace} s grace period after SIGTERM (the kubelet would kill it)"
[ $(( $(date +%s) - hook_started )) -le "$grace" ] || fail "the hook and SIGTERM together took longer than the ${grace} s grace period"
wait "$broker_pid" 2>/dev/null || true; broker_pid=""
wait "$drain_pid" || { cat "$work/drain.out"; fail "the client saw no DISCONNECT before the broker stopped"; }
grep -qx "disconnect 139" "$work/drain.out" || { cat "$work/drain.out"; fail "the client was not told 0x8B (server shutting down)"; }
echo "the preStop hook drained the broker (the client got DISCONNECT 0x8B) and it exited within the grace period"

echo "--- a spec change: Ready drops until the pods are updated"
ready_status() { kubectl -n iot get broker orders -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Ready")].reason}'; }
gen_before=$(kubectl -n iot get deploy orders -o jsonpath='{.metadata.generation}')
kubectl -n iot patch broker orders --type=merge -p '{"spec":{"limits":{"maxConnections":4000},"pod":{
  "imagePullSecrets":["registry"],"nodeSelector":{"kubernetes.io/arch":"amd64"},
  "tolerations":[{"key":"dedicated","operator":"Equal","value":"mqtt","effect":"NoSchedule"}],
  "affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"zone","operator":"In","values":["a"]}]}]}}},
  "annotations":{"example.com/owner":"iot-team"},"labels":{"team":"iot"},"serviceAccountName":"mqtt-broker"}}}' >/dev/null
new_template() { [ "$(kubectl -n iot get deploy orders -o jsonpath='{.metadata.generation}')" -gt "$gen_before" ]; }
wait_for 60 new_template || fail "the spec change did not reach the Deployment"
# spec.pod, as the real API server accepted it into the Deployment.
kubectl -n iot get deploy orders -o json | python3 -c '
import json, sys
t = json.load(sys.stdin)["spec"]["template"]; p = t["spec"]
assert p["imagePullSecrets"] == [{"name": "registry"}], p
assert p["nodeSelector"] == {"kubernetes.io/arch": "amd64"}, p
assert p["tolerations"][0]["key"] == "dedicated", p
assert p["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"], p
assert p["serviceAccountName"] == "mqtt-broker" and p["automountServiceAccountToken"] is False, p
assert t["metadata"]["annotations"]["example.com/owner"] == "iot-team", t["metadata"]
assert t["metadata"]["labels"]["team"] == "iot" and t["metadata"]["labels"]["starling.dev/broker"] == "orders", t["metadata"]
' || fail "spec.pod did not reach the pod template"
[ "$(kubectl -n iot get svc orders -o jsonpath='{.spec.ports[?(@.name=="metrics")].port}')" = 9090 ] \
  || fail "the broker Service has no metrics port"
not_ready() { [ "$(ready_status)" = False/RollingOut ]; }
wait_for 60 not_ready || fail "Ready did not drop while the new template rolls out ($(ready_status))"
[ "$(kubectl -n iot get broker orders -o jsonpath='{.status.conditions[?(@.type=="Progressing")].status}')" = True ] \
  || fail "Progressing is not True during the rollout"
roll_out
wait_for 60 is_ready || fail "the Broker did not turn Ready once the pods were updated ($(ready_status))"

echo "--- spec.namespace cannot be added, even one the tenancy allows (no CEL on this API server: the operator refuses it)"
kubectl -n iot patch broker orders --type=merge -p '{"spec":{"namespace":"elsewhere"}}' >/dev/null
ns_refused() { [ "$(kubectl -n iot get broker orders -o jsonpath='{.status.conditions[?(@.type=="Degraded")].reason}')" = NamespaceImmutable ]; }
wait_for 60 ns_refused || fail "adding spec.namespace was not refused"
out=$(api GET /v1/namespaces/elsewhere/brokers/orders)
[ "${out##*$'\n'}" = 404 ] || fail "the operator registered the broker in the new namespace: $out"
kubectl -n iot patch broker orders --type=json -p '[{"op":"remove","path":"/spec/namespace"}]' >/dev/null
wait_for 60 is_ready || fail "removing the added spec.namespace did not bring the Broker back"

echo "--- a deleted credential Secret is recovered by rotating the broker secret"
old_secret=$(kubectl -n iot get secret orders-credentials -o jsonpath='{.data.broker-secret}')
kubectl -n iot delete secret orders-credentials >/dev/null
kubectl -n iot annotate broker orders starling.dev/poke=0 --overwrite >/dev/null
recovered_secret() {
  local s
  s=$(kubectl -n iot get secret orders-credentials -o jsonpath='{.data.broker-secret}') && [ -n "$s" ] && [ "$s" != "$old_secret" ]
}
wait_for 60 recovered_secret || fail "the credential Secret was not recovered"
events_seen() { kubectl -n iot get events.events.k8s.io -o jsonpath='{range .items[*]}{.type}/{.reason} {end}'; }
wait_for 30 bash -c "kubectl -n iot get events.events.k8s.io -o jsonpath='{range .items[*]}{.reason} {end}' | grep -q CredentialsRecovered" \
  || fail "no CredentialsRecovered event: $(events_seen)"
roll_out
wait_for 60 is_ready || fail "the Broker is not Ready after the recovery ($(ready_status))"

echo "--- spec.onPublish reaches the api"
hook_url=$(awk '/^  onPublish:/ { getline; print $2 }' examples/broker-hook-and-limits.yaml)
case "$hook_url" in https://*) ;; *) fail "no onPublish.url in the example: '$hook_url'" ;; esac
kubectl -n iot patch broker orders --type=merge -p "{\"spec\":{\"onPublish\":{\"url\":\"$hook_url\"}}}" >/dev/null
has_hook() { api GET /v1/namespaces/iot/brokers/orders | grep -qF "\"on_publish\":{\"url\":\"$hook_url\"}"; }
wait_for 60 has_hook || fail "spec.onPublish.url did not reach the api: $(api GET /v1/namespaces/iot/brokers/orders)"

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

echo "--- the api back: Ready again"
start_api
recovered() { [ "$(condition_reason)" = AsExpected ]; }
wait_for 120 recovered || fail "the Broker did not recover (reason: $(condition_reason))"

echo "--- a broker deleted in the api: Degraded, not re-created"
out=$(api DELETE /v1/namespaces/iot/brokers/orders -H 'X-Starling-Managed-By: Broker/iot/orders')
[ "${out##*$'\n'}" = 204 ] || [ "${out##*$'\n'}" = 200 ] || fail "deleting the broker in the api failed: $out"
kubectl -n iot annotate broker orders starling.dev/poke=2 --overwrite >/dev/null
deleted_in_api() { [ "$(condition_reason)" = DeletedInApi ]; }
wait_for 90 deleted_in_api || fail "the Broker did not turn Degraded/DeletedInApi (reason: $(condition_reason))"
out=$(api GET /v1/namespaces/iot/brokers/orders)
[ "${out##*$'\n'}" = 404 ] || fail "the operator re-created a broker the api had lost: $out"

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
gone() { ! kubectl -n iot get broker "$1" >/dev/null 2>&1; }
wait_for 60 gone orders || fail "the Broker the api had lost was not released"
# The second Broker asks for storage: a claim owned by it, mounted at the data directory, and pods
# replaced with Recreate so the ReadWriteOnce claim is never wanted by two pods.
sed 's/namespace: default/namespace: iot/' examples/broker-minimal.yaml | kubectl apply -f - >/dev/null
kubectl -n iot patch broker sensors --type=merge -p '{"spec":{"storage":{"size":"2Gi","storageClassName":"standard"}}}' >/dev/null
registered() { [ -n "$(kubectl -n iot get broker sensors -o jsonpath='{.status.brokerId}')" ]; }
wait_for 60 registered || fail "the second Broker was not registered"
durable() {
  [ "$(kubectl -n iot get broker sensors -o jsonpath='{.status.conditions[?(@.type=="Durable")].status}/{.status.conditions[?(@.type=="Durable")].reason}')" = True/PersistentVolumeClaim ] &&
    [ "$(kubectl -n iot get deploy sensors -o jsonpath='{.spec.template.spec.volumes[?(@.name=="data")].persistentVolumeClaim.claimName}')" = sensors-data ]
}
wait_for 60 durable || fail "the Broker with storage is not Durable/PersistentVolumeClaim with its claim mounted"
kubectl -n iot get pvc sensors-data -o json >"$work/pvc.json" || fail "the Broker with storage has no claim"
kubectl -n iot get deploy sensors -o json >"$work/sensors-deploy.json"
python3 - "$work/pvc.json" "$work/sensors-deploy.json" "$(kubectl -n iot get broker sensors -o jsonpath='{.metadata.uid}')" <<'PY' || fail "the claim or the Deployment of the Broker with storage is wrong"
import json, sys
pvc = json.load(open(sys.argv[1])); d = json.load(open(sys.argv[2])); uid = sys.argv[3]
refs = [(r["kind"], r["name"], r["uid"]) for r in pvc["metadata"]["ownerReferences"]]
assert refs == [("Broker", "sensors", uid)], refs
spec = pvc["spec"]
assert spec["accessModes"] == ["ReadWriteOnce"], spec
assert spec["storageClassName"] == "standard", spec
assert spec["resources"]["requests"]["storage"] == "2Gi", spec
assert d["spec"]["strategy"]["type"] == "Recreate", d["spec"]["strategy"]
pod = d["spec"]["template"]["spec"]
[c] = pod["containers"]
[m] = [m for m in c["volumeMounts"] if m["mountPath"] == "/var/lib/starling"]
assert not m.get("readOnly"), m
[v] = [v for v in pod["volumes"] if v["name"] == m["name"]]
assert v == {"name": m["name"], "persistentVolumeClaim": {"claimName": "sensors-data"}}, v
i = c["args"].index("--data-dir")
assert c["args"][i + 1] == "/var/lib/starling", c["args"]
print("claim and pod template ok")
PY
out=$(api GET /v1/namespaces/iot/brokers/sensors)
[ "${out##*$'\n'}" = 200 ] || fail "the api does not know the second broker: $out"
kubectl -n iot delete broker sensors --wait=false >/dev/null
wait_for 60 gone sensors || fail "the second Broker was not released"
out=$(api GET /v1/namespaces/iot/brokers/sensors)
[ "${out##*$'\n'}" = 404 ] || fail "the finalizer did not deregister the broker: $out"
echo "deregistered through the finalizer"

echo "--- kubectl scale goes through the scale subresource; more than one replica needs a NATS cluster"
# This operator gives its brokers no NATS cluster (--broker-cluster-nats): three replicas are
# refused with a Degraded condition and the Deployment keeps its one replica.
cat <<'YAML' | kubectl -n iot apply -f - >/dev/null
apiVersion: starling.dev/v1alpha1
kind: Broker
metadata: {name: scaled}
spec: {}
YAML
scaled_registered() { [ -n "$(kubectl -n iot get broker scaled -o jsonpath='{.status.brokerId}')" ] && kubectl -n iot get deploy scaled >/dev/null 2>&1; }
wait_for 60 scaled_registered || fail "the Broker scaled was not registered"
kubectl -n iot scale broker scaled --replicas=3 >/dev/null || fail "kubectl scale broker failed"
[ "$(kubectl -n iot get broker scaled -o jsonpath='{.spec.replicas}')" = 3 ] || fail "kubectl scale did not change spec.replicas"
kubectl get --raw /apis/starling.dev/v1alpha1/namespaces/iot/brokers/scaled/scale >"$work/scale.json" || fail "the Broker has no scale subresource"
python3 - "$work/scale.json" <<'PY' || fail "the scale subresource is wrong"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["kind"] == "Scale", s
assert s["spec"]["replicas"] == 3, s
assert s["status"]["selector"] == "app.kubernetes.io/instance=scaled,starling.dev/broker=scaled", s
PY
needs_cluster() { [ "$(kubectl -n iot get broker scaled -o jsonpath='{.status.conditions[?(@.type=="Degraded")].reason}')" = ReplicasNeedCluster ]; }
wait_for 60 needs_cluster || fail "three replicas without NATS did not turn Degraded/ReplicasNeedCluster"
[ "$(kubectl -n iot get deploy scaled -o jsonpath='{.spec.replicas}')" = 1 ] || fail "the refused Broker's Deployment was scaled"
kubectl -n iot scale broker scaled --replicas=1 >/dev/null || fail "kubectl scale back to one failed"
not_degraded() { [ "$(kubectl -n iot get broker scaled -o jsonpath='{.status.conditions[?(@.type=="Degraded")].status}')" = False ]; }
wait_for 60 not_degraded || fail "back at one replica the Broker stayed Degraded"
kubectl -n iot delete broker scaled --wait=false >/dev/null
wait_for 60 gone scaled || fail "the Broker scaled was not released"
echo "kubectl scale changed spec.replicas through the scale subresource; three replicas without NATS refused"

echo "--- tenancy: a Broker in iot may not use the pub/sub namespace other"
cat <<'YAML' | kubectl -n iot apply -f - >/dev/null
apiVersion: starling.dev/v1alpha1
kind: Broker
metadata: {name: squatter}
spec: {namespace: other}
YAML
squat_reason() { kubectl -n iot get broker squatter -o jsonpath='{.status.conditions[?(@.type=="Degraded")].reason}'; }
refused() { [ "$(squat_reason)" = NamespaceNotAllowed ]; }
wait_for 60 refused || fail "the squatting Broker did not turn Degraded/NamespaceNotAllowed (reason: $(squat_reason))"
kubectl -n iot get broker squatter -o jsonpath='{.status.conditions[?(@.type=="Degraded")].message}' | grep -q 'allowed: iot' \
  || fail "the refusal does not say which pub/sub namespaces are allowed"
squat_warned() { kubectl -n iot get events.events.k8s.io \
  -o jsonpath='{range .items[?(@.regarding.name=="squatter")]}{.type}/{.reason} {end}' | grep -q 'Warning/NamespaceNotAllowed'; }
wait_for 30 squat_warned || fail "no Warning event NamespaceNotAllowed for the squatting Broker"
out=$(api GET /v1/namespaces/other/brokers/squatter)
[ "${out##*$'\n'}" = 404 ] || fail "the api has a broker the tenancy refused: $out"
kubectl -n iot get deploy,secret,configmap -o name | grep -q squatter && fail "the refused Broker got Kubernetes objects"
kubectl -n iot delete broker squatter --wait=false >/dev/null
wait_for 60 gone squatter || fail "the refused Broker was not released"
out=$(api GET /v1/namespaces/other/brokers/squatter)
[ "${out##*$'\n'}" = 404 ] || fail "deleting the refused Broker made a broker in the api: $out"
echo "refused without touching the api"

echo "--- cert-manager: a Broker with tls.issuerRef gets a Certificate; the Secret cert-manager writes is served"
kubectl apply -f scripts/tiers/kube/fixtures/cert-manager-certificate-crd.yaml >/dev/null
crd_ready() { [ "$(kubectl get crd certificates.cert-manager.io -o jsonpath='{.status.conditions[?(@.type=="Established")].status}')" = True ]; }
wait_for 30 crd_ready || fail "the Certificate CRD fixture was not established"
cat <<'YAML' | kubectl -n iot apply -f - >/dev/null
apiVersion: starling.dev/v1alpha1
kind: Broker
metadata: {name: certs}
spec:
  hostname: certs.example.com
  tls:
    issuerRef: {name: letsencrypt, kind: ClusterIssuer}
YAML
has_cert() { kubectl -n iot get certificates.cert-manager.io certs >/dev/null 2>&1; }
wait_for 60 has_cert || fail "the operator created no cert-manager Certificate (operator log above)"
kubectl -n iot get certificates.cert-manager.io certs -o json | python3 -c '
import json, sys
c = json.load(sys.stdin); s = c["spec"]
assert [(r["kind"], r["name"], r.get("controller")) for r in c["metadata"]["ownerReferences"]] == [("Broker", "certs", True)], c["metadata"]
assert s["secretName"] == "certs-tls", s
assert s["issuerRef"] == {"name": "letsencrypt", "kind": "ClusterIssuer", "group": "cert-manager.io"}, s
assert s["dnsNames"][0] == "certs.example.com" and "certs.iot.svc" in s["dnsNames"], s
' || fail "the Certificate does not carry the Broker's hosts, Secret and issuer"
cert_reason() { kubectl -n iot get broker certs -o jsonpath='{.status.conditions[?(@.type=="Degraded")].message}'; }
waiting() { cert_reason | grep -q "waiting for cert-manager"; }
wait_for 60 waiting || fail "before issuance the Broker does not say it waits for cert-manager: $(cert_reason)"
# Playing cert-manager: the Secret it would write, valid for 3 days (inside the 7-day warning).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3 -subj /CN=certs.example.com \
  -addext subjectAltName=DNS:certs.example.com -keyout "$work/certs.key" -out "$work/certs.crt" 2>/dev/null
kubectl -n iot create secret tls certs-tls --cert="$work/certs.crt" --key="$work/certs.key" >/dev/null
not_after=$(python3 -c '
import datetime, subprocess, sys
out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", sys.argv[1]], capture_output=True, text=True, check=True).stdout
t = datetime.datetime.strptime(out.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z")
print(t.strftime("%Y-%m-%dT%H:%M:%S"))
' "$work/certs.crt")
kubectl -n iot annotate broker certs starling.dev/poke=issued --overwrite >/dev/null
issued() { kubectl -n iot get broker certs -o jsonpath='{.status.tls.notAfter}' | grep -q "^$not_after"; }
wait_for 60 issued || fail "status.tls.notAfter ($(kubectl -n iot get broker certs -o jsonpath='{.status.tls.notAfter}')) is not the issued certificate's ($not_after)"
expiring() { [ "$(kubectl -n iot get broker certs -o jsonpath='{.status.conditions[?(@.type=="CertificateExpiring")].reason}')" = ExpiresSoon ]; }
wait_for 30 expiring || fail "a certificate 3 days from expiry did not set CertificateExpiring/ExpiresSoon"
kubectl -n iot get deploy certs -o jsonpath='{.spec.template.spec.volumes[?(@.name=="tls")].secret.secretName}' | grep -qx certs-tls \
  || fail "the pods do not mount cert-manager's Secret"
kubectl -n iot delete broker certs --wait=false >/dev/null
wait_for 60 gone certs || fail "the cert-manager Broker was not released"
echo "Certificate created, cert-manager's Secret served, CertificateExpiring set"

echo "--- metrics"
curl -sf "http://127.0.0.1:$op_http/metrics" >"$work/metrics.txt" || fail "no /metrics"
grep -Eq '^starling_operator_reconciles_total [1-9]' "$work/metrics.txt" || fail "no reconciles counted"
grep -q 'starling_operator_reconcile_errors_total{reason="ApiUnreachable"}' "$work/metrics.txt" || fail "no ApiUnreachable errors counted"
grep -q 'starling_operator_reconcile_duration_seconds_count' "$work/metrics.txt" || fail "no reconcile durations"
grep -q '^starling_operator_leader 1' "$work/metrics.txt" || fail "the leader does not say so"

echo "--- every metric the chart's alerts and dashboard name is exposed"
helm template starling charts/starling -n starling-system --set metrics.prometheusRule.enabled=true >"$work/monitoring.yaml"
python3 scripts/tiers/kube/check_metric_names.py "$work/monitoring.yaml" \
  "$work/metrics-broker.txt" "$work/metrics-api.txt" "$work/metrics.txt" "$work/metrics-operator-upgrade.txt" || fail "the alerts or the dashboard name metrics that do not exist"

echo "--- on shutdown the leader releases the Lease and the standby takes over"
kill "$op_pid"
wait "$op_pid" 2>/dev/null || true
op_pid=""
takes_over() { [ "$(kubectl -n starling-system get lease starling-operator -o jsonpath='{.spec.holderIdentity}')" = operator-b ]; }
wait_for 15 takes_over || fail "the standby did not take the released Lease"
wait_for 15 grep -q "starting the controller" "$work/standby.log" || fail "the standby did not start reconciling"
kill "$standby_pid"
wait "$standby_pid" 2>/dev/null || true
standby_pid=""
holder=$(kubectl -n starling-system get lease starling-operator -o jsonpath='{.spec.holderIdentity}')
[ -z "$holder" ] || fail "the operator did not release its Lease on shutdown (holder $holder)"

echo "--- replicas: 3 on the chart's NATS: workload, spread, NATS settings and a NATS user of its own the server accepts"
helm upgrade starling charts/starling -n starling-system --wait=hookOnly --set 'operator.watchNamespaces={iot}' \
  --set nats.install.enabled=true >/dev/null || fail "helm upgrade with nats.install.enabled failed"
kubectl -n starling-system get statefulset starling-nats >/dev/null || fail "the chart's NATS StatefulSet was not accepted"
[ "$(kubectl -n starling-system get statefulset starling-nats -o jsonpath='{.spec.template.spec.volumes[?(@.name=="config")].projected.sources[1].secret.name}')" = starling-nats-auth-config ] \
  || fail "the NATS pods do not include the auth configuration of the Secret starling-nats-auth-config"
[ -z "$(kubectl -n starling-system get statefulset starling-nats -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="STARLING_NATS_TOKEN")].name}')" ] \
  || fail "the NATS pods still take a shared token"
# What the chart gives its operator, which runs here out of cluster as its ServiceAccount.
op_env() { kubectl -n starling-system get deploy starling-operator -o jsonpath="{.spec.template.spec.containers[0].env[?(@.name==\"$1\")].value}"; }
nats_urls=$(op_env STARLING_OPERATOR_BROKER_CLUSTER_NATS)
nats_keys=$(op_env STARLING_OPERATOR_BROKER_CLUSTER_NATS_KEYS)
nats_config=$(op_env STARLING_OPERATOR_BROKER_CLUSTER_NATS_CONFIG)
[ -n "$nats_urls" ] && [ "$nats_keys" = starling-nats-keys ] && [ "$nats_config" = starling-nats-auth-config ] \
  && [ -z "$(op_env STARLING_OPERATOR_BROKER_CLUSTER_SECRET)" ] \
  || fail "the operator is not given the chart's NATS ($nats_urls, $nats_keys, $nats_config)"
# Gateway API's resources (reduced, scripts/tiers/kube/fixtures), served before the operator
# starts so that it watches routes.
kubectl apply -f scripts/tiers/kube/fixtures/gateway-api-crds.yaml >/dev/null || fail "the Gateway API CRDs were not accepted"
wait_for 30 kubectl get --raw /apis/gateway.networking.k8s.io/v1alpha2 || fail "the Gateway API CRDs are not served"
# A local nats-server stands in for the chart's NATS (its in-cluster names do not resolve here):
# the operator publishes the Brokers' accounts to it.
need nats-server
nats_port=$(free_port)
start_nats_operator() { # LOG [more flags...]: the operator with the chart's NATS settings
  local log=$1; shift
  KUBECONFIG="$work/operator-kubeconfig" RUST_LOG=info,kube=warn POD_NAME=operator-nats "$OPERATOR" run \
    --api-url "$api_url" --api-token-file "$work/api-data/admin-token" --control-plane-url "http://starling-api-internal.starling-system.svc:8081" \
    --watch-namespaces iot --lease-namespace starling-system --lease-name starling-operator \
    --broker-network-policies true --monitoring-namespace monitoring \
    --broker-cluster-nats "$nats_urls" --broker-cluster-nats-keys "$nats_keys" --broker-cluster-nats-config "$nats_config" \
    --nats-accounts-url "nats://127.0.0.1:$nats_port" --generate-secrets "$(op_env STARLING_OPERATOR_GENERATE_SECRETS)" \
    --broker-cluster-tls-secret "$(op_env STARLING_OPERATOR_BROKER_CLUSTER_TLS_SECRET)" \
    --broker-cluster-nats-tls-ca "$(op_env STARLING_OPERATOR_BROKER_CLUSTER_NATS_TLS_CA)" \
    --broker-cluster-nats-tls-server "$(op_env STARLING_OPERATOR_BROKER_CLUSTER_NATS_TLS_SERVER)" \
    --http "127.0.0.1:$(free_port)" --log-format pretty "$@" >"$log" 2>&1 &
  op_pid=$!
  wait_for 30 grep -q "starting the controller" "$log" || { tail -20 "$log"; fail "the operator with NATS did not start"; }
}
start_nats_operator "$work/operator-nats.log"
# The keys, made once, and the servers' auth.conf written from them: nats-server takes it next
# to the chart's own nats.conf, and the stand-in server runs it.
secret_value() { kubectl -n "$1" get secret "$2" -o json | python3 -c 'import base64, json, sys; print(base64.b64decode(json.load(sys.stdin)["data"][sys.argv[1]]).decode(), end="")' "$3"; }
operator_seed=$(secret_value starling-system "$nats_keys" operator.nk)
system_seed=$(secret_value starling-system "$nats_keys" system.nk)
[ "${operator_seed:0:2}" = SO ] && [ "${system_seed:0:2}" = SA ] || fail "the operator did not make the NATS operator and system account keys"
mkdir -p "$work/nats-chart/tls" "$work/nats-local"
# The servers' TLS: a CA made once (read by the operator only), the servers' certificate issued
# from it for their in-cluster names (server and client use: routes verify each other), and
# the CA certificate alone for the brokers.
[ "$(op_env STARLING_OPERATOR_BROKER_CLUSTER_NATS_TLS_SERVER)" = starling-nats-tls ] || fail "the chart does not have the operator issue the NATS servers' certificate"
for key in ca.crt tls.crt tls.key; do secret_value starling-system starling-nats-tls "$key" >"$work/nats-chart/tls/$key"; done
secret_value starling-system starling-nats-ca ca.crt | cmp - "$work/nats-chart/tls/ca.crt" || fail "the NATS servers' certificate is not of the CA in starling-nats-ca"
[ "$(kubectl -n starling-system get secret starling-nats-client-tls -o jsonpath='{.data}' | python3 -c 'import json, sys; print(",".join(sorted(json.load(sys.stdin))))')" = ca.crt ] \
  || fail "starling-nats-client-tls holds more than the CA certificate"
secret_value starling-system starling-nats-client-tls ca.crt | cmp - "$work/nats-chart/tls/ca.crt" || fail "the brokers are given another CA"
for name in starling-nats-0.starling-nats-headless.starling-system.svc starling-nats-2.starling-nats-headless.starling-system.svc \
  starling-nats-4.starling-nats-headless.starling-system.svc; do
  for purpose in sslserver sslclient; do
    openssl verify -CAfile "$work/nats-chart/tls/ca.crt" -purpose "$purpose" -verify_hostname "$name" "$work/nats-chart/tls/tls.crt" >/dev/null \
      || fail "the NATS servers' certificate does not verify as $purpose for $name"
  done
done
openssl verify -CAfile "$work/nats-chart/tls/ca.crt" -verify_hostname starling-api.starling-system.svc "$work/nats-chart/tls/tls.crt" >/dev/null 2>&1 \
  && fail "the NATS servers' certificate names hosts beyond the NATS servers"
grep -q "PRIVATE KEY" "$work/operator-nats.log" && fail "a private key is in the operator's log"
kubectl -n starling-system get configmap starling-nats -o jsonpath='{.data.nats\.conf}' | sed "s|/etc/nats-tls/|$work/nats-chart/tls/|" >"$work/nats-chart/nats.conf"
secret_value starling-system "$nats_config" auth.conf >"$work/nats-chart/auth.conf"
grep -qF "$system_seed" "$work/nats-chart/auth.conf" && fail "the NATS servers' auth.conf holds a seed"
POD_NAME=starling-nats-0 nats-server -t -c "$work/nats-chart/nats.conf" >"$work/nats-chart/check.log" 2>&1 \
  || { cat "$work/nats-chart/check.log"; fail "nats-server refuses the chart's nats.conf with the operator's auth.conf and TLS files"; }
sed "s|\"/data/jwt\"|\"$work/nats-jwt\"|" "$work/nats-chart/auth.conf" >"$work/nats-local/auth.conf"
printf 'include ./auth.conf\n' >"$work/nats-local/nats.conf"
nats-server -c "$work/nats-local/nats.conf" -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats-store" >"$work/nats.log" 2>&1 </dev/null &
nats_pid=$!
wait_for 20 grep -q "Server is ready" "$work/nats.log" || { cat "$work/nats.log"; fail "nats-server did not start"; }
kubectl apply -f - >/dev/null <<'YAML'
apiVersion: starling.dev/v1alpha1
kind: Broker
metadata: {name: trio, namespace: iot}
spec:
  replicas: 3
  hostname: trio.example.com
  service: {type: LoadBalancer}
YAML
trio_applied() { [ "$(kubectl -n iot get deploy trio -o jsonpath='{.spec.replicas}' 2>/dev/null)" = 3 ]; }
wait_for 60 trio_applied || { tail -20 "$work/operator-nats.log"; kubectl -n iot get broker trio -o yaml; fail "replicas: 3 with NATS got no Deployment of 3"; }
kubectl -n iot get deploy trio -o json >"$work/trio.json"
kubectl -n iot get configmap trio-config -o json >"$work/trio-config.json"
kubectl -n iot get broker trio -o json >"$work/trio-broker.json"
secret_value iot trio-nats nats.creds >"$work/trio.creds"
trio_seed=$(grep -A1 "BEGIN USER NKEY SEED" "$work/trio.creds" | tail -1)
[ "${trio_seed:0:2}" = SU ] || fail "trio-nats holds no NATS user credentials"
python3 - "$work/trio.json" "$work/trio-config.json" "$work/trio-broker.json" "$nats_urls" "$work/trio.creds" "$operator_seed" "$system_seed" "$trio_seed" <<'PY' || fail "the three-replica Broker is rendered wrong"
import base64, json, sys
dep, cm, broker = (json.load(open(p)) for p in sys.argv[1:4])
urls = sys.argv[4].split(",")
creds = open(sys.argv[5]).read()
seeds = sys.argv[6:9]
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
args = c["args"]
assert [args[i + 1] for i, a in enumerate(args) if a == "--cluster-nats"] == urls, args
keys = [t["topologyKey"] for t in pod["topologySpreadConstraints"]]
assert keys == ["topology.kubernetes.io/zone"], keys
anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
assert anti["topologyKey"] == "kubernetes.io/hostname", anti
env = {e["name"]: e for e in c.get("env", [])}
assert not [n for n in env if n.startswith("STARLING_BROKER__CLUSTER__")], env
assert c["lifecycle"]["preStop"]["exec"]["command"][:4] == ["/usr/local/bin/starling-broker", "drain", "--http", "127.0.0.1:9090"], c.get("lifecycle")
assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] in (0, "0"), dep["spec"]["strategy"]
text = cm["data"]["broker.toml"]
assert 'server_reference = "mqtts://trio.example.com:8883"' in text, text
broker_id = broker["status"]["brokerId"]
assert 'creds = "/etc/starling/nats/nats.creds"' in text, text
assert 'tls_ca = "/etc/starling/nats/ca.crt"' in text and "tls_key" not in text, text
assert f'inbox_prefix = "_INBOX_starling.{broker_id}"' in text, text
# The user's permissions name trio's broker id and nothing wider.
jwt = creds.split("-----BEGIN NATS USER JWT-----")[1].split()[0]
body = jwt.split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
assert claims["nats"]["sub"]["allow"] == [f"_INBOX_starling.{broker_id}.>", f"starling.{broker_id}.>"], claims
assert all(broker_id in s or s == "$JS.API.INFO" for s in claims["nats"]["pub"]["allow"]), claims
for doc in (dep, cm, broker):
    for seed in seeds:
        assert seed not in json.dumps(doc), "a NATS seed is in a Deployment, ConfigMap or status"
print("trio ok")
PY
[ "$(kubectl -n iot get secret trio-nats -o jsonpath='{.metadata.ownerReferences[0].name}')" = trio ] || fail "trio-nats is not owned by its Broker"
for seed in "$operator_seed" "$system_seed" "$trio_seed"; do
  grep -qF "$seed" "$work/operator-nats.log" && fail "a NATS seed is in the operator's log"
done
if kubectl api-resources --api-group=policy -o name | grep -qx poddisruptionbudgets.policy \
  && kubectl get --raw /apis/policy/v1 >/dev/null 2>&1; then
  wait_for 30 kubectl -n iot get pdb trio || fail "no PodDisruptionBudget for three replicas where policy/v1 is served"
else
  # v1.20 serves policy/v1beta1 only: no budget, and the status says so.
  no_budget() { [ "$(kubectl -n iot get broker trio -o jsonpath='{.status.conditions[?(@.type=="DisruptionBudget")].reason}')" = PolicyV1Unavailable ]; }
  wait_for 30 no_budget || fail "without policy/v1 the three-replica Broker does not report DisruptionBudget=False (PolicyV1Unavailable)"
fi

echo "--- playing the kubelet for one of trio's pods: its broker joins NATS as its own user"
run_trio_pod() { # OUT_DIR [CREDS_FILE]: lays out trio's pod and starts its broker; sets trio_pid, trio_http
  local dir=$1
  mkdir -p "$dir"
  kubectl -n iot get configmaps,secrets -o json >"$dir/objects.json"
  python3 scripts/tiers/kube/pod_standin.py "$work/trio.json" "$dir/objects.json" "$dir/root" \
    "http://$api_internal" "$dir" "nats://127.0.0.1:$nats_port" || fail "could not lay out trio's pod"
  mapfile -t trio_args <"$dir/args"
  mapfile -t trio_env <"$dir/env"
  # broker.toml names the mounted file by its path in the pod; here it is under the stand-in's root.
  trio_env+=("STARLING_BROKER__CLUSTER__CREDS=${2:-$dir/root/etc/starling/nats/nats.creds}")
  trio_env+=("STARLING_BROKER__CLUSTER__TLS_CA=$dir/root/etc/starling/nats/ca.crt")
  trio_http=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["--http"])' "$dir/ports.json")
  env -i PATH="$PATH" HOSTNAME=trio-0 "${trio_env[@]}" "$BROKER" "${trio_args[@]}" >"$dir/broker.log" 2>&1 &
  trio_pid=$!
}
run_trio_pod "$work/trio-pod"
broker_pid=$trio_pid
cmp "$work/trio-pod/root/etc/starling/nats/nats.creds" "$work/trio.creds" || fail "the pod does not see trio-nats's credentials"
cmp "$work/trio-pod/root/etc/starling/nats/ca.crt" "$work/nats-chart/tls/ca.crt" || fail "the pod does not see the NATS servers' CA"
[ -e "$work/trio-pod/root/etc/starling/nats/tls.key" ] && fail "a broker pod holds a private key of NATS"
trio_ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$trio_http/readyz")" = 200 ]; }
wait_for 60 trio_ready || { tail -20 "$work/trio-pod/broker.log"; tail -20 "$work/nats.log"; fail "trio's broker did not join NATS as its own user and turn ready"; }
grep -qF "$trio_seed" "$work/trio-pod/broker.log" && fail "the NATS seed is in the broker's log"
grep -q "Violation" "$work/nats.log" && { grep Violation "$work/nats.log" | head -5; fail "NATS refused something trio's broker needs"; }
kill "$trio_pid"; wait "$trio_pid" 2>/dev/null || true; broker_pid=""
# The same pod with its user's JWT tampered with: NATS refuses it, and the broker is not ready.
python3 - "$work/trio.creds" "$work/trio-tampered.creds" <<'PY'
import sys
lines = open(sys.argv[1]).read().split("\n")
i = lines.index("-----BEGIN NATS USER JWT-----") + 1
head, body, sig = lines[i].split(".")
lines[i] = ".".join([head, body, ("A" if sig[0] != "A" else "B") + sig[1:]])
open(sys.argv[2], "w").write("\n".join(lines))
PY
run_trio_pod "$work/trio-pod-wrong" "$work/trio-tampered.creds"
broker_pid=$trio_pid
wait_for 30 grep -q "authorization violation" "$work/trio-pod-wrong/broker.log" || { tail -20 "$work/trio-pod-wrong/broker.log"; fail "tampered credentials were not refused by NATS"; }
trio_ready && fail "a broker NATS refused says ready"
kill "$trio_pid"; wait "$trio_pid" 2>/dev/null || true; broker_pid=""

# What this v1.20 server cannot show: the same Broker's objects, rendered by the operator
# offline, against the schemas of a current Kubernetes (policy/v1 budget included).
kubectl -n iot get broker trio -o yaml >"$work/trio-broker.yaml"
"$OPERATOR" render --broker "$work/trio-broker.yaml" --broker-cluster-nats "$nats_urls" --monitoring-namespace monitoring \
  >"$work/trio-rendered.yaml" || fail "starling-operator render failed"
grep -q "^apiVersion: policy/v1$" "$work/trio-rendered.yaml" || fail "no policy/v1 PodDisruptionBudget rendered for three replicas"
kubernetes-validate --strict --quiet -k 1.33.0 "$work/trio-rendered.yaml" || fail "the operator's objects for three replicas are not valid Kubernetes 1.33 objects"
python3 scripts/lib/k8s/check_security.py "$work/trio-rendered.yaml" || fail "the rendered broker pod breaks the security rules"

echo "--- status.endpoints follow the LoadBalancer's address and an Ingress"
waits_for_lb() { kubectl -n iot get broker trio -o jsonpath='{.status.endpoints.note}' | grep -q "waiting for the load balancer"; }
wait_for 30 waits_for_lb || fail "a LoadBalancer without an address is not said to be pending"
# Playing the cloud's load-balancer controller.
kubectl -n iot patch service trio --subresource=status --type=merge -p '{"status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.10"}]}}}' >/dev/null \
  || fail "could not set the Service's load balancer address"
follows_lb() { kubectl -n iot get broker trio -o jsonpath='{.status.endpoints.note}' | grep -q "LoadBalancer Service at 203.0.113.10"; }
wait_for 30 follows_lb || fail "status.endpoints did not take the load balancer's address"
[ "$(kubectl -n iot get broker trio -o jsonpath='{.status.endpoints.mqtts}')" = "mqtts://trio.example.com:8883" ] \
  || fail "with spec.hostname the mqtts endpoint keeps the host name its certificate names"
kubectl apply -f - >/dev/null <<'YAML'
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: trio-wss, namespace: iot}
spec:
  tls: [{hosts: [ws.example.com], secretName: ws-example-com}]
  rules:
    - host: ws.example.com
      http:
        paths:
          - {path: /mqtt, pathType: Exact, backend: {service: {name: trio, port: {name: wss-443}}}}
YAML
follows_ingress() { [ "$(kubectl -n iot get broker trio -o jsonpath='{.status.endpoints.wss[0]}')" = "wss://ws.example.com:443/mqtt" ]; }
wait_for 30 follows_ingress || fail "status.endpoints.wss did not follow the Ingress"
api_follows_ingress() { api GET /v1/namespaces/iot/brokers/trio | grep -qF '"wsEndpoint":"wss://ws.example.com:443/mqtt"'; }
wait_for 30 api_follows_ingress || fail "the api does not show the Ingress's wss endpoint: $(api GET /v1/namespaces/iot/brokers/trio)"

kubectl apply -f - >/dev/null <<'YAML'
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: iot}
spec:
  gatewayClassName: example
  listeners:
    - {name: mqtts, protocol: TLS, port: 8883, hostname: gw.example.com, tls: {mode: Passthrough}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: trio-mqtts, namespace: iot}
spec:
  parentRefs: [{name: edge, sectionName: mqtts}]
  rules:
    - backendRefs: [{name: trio, port: 8883}]
YAML
follows_route() { [ "$(kubectl -n iot get broker trio -o jsonpath='{.status.endpoints.mqtts}')" = "mqtts://gw.example.com:8883" ]; }
wait_for 30 follows_route || { kubectl -n iot get broker trio -o jsonpath='{.status.endpoints}'; fail "status.endpoints.mqtts did not follow the TLSRoute through its Gateway listener"; }
kubectl -n iot delete tlsroute trio-mqtts >/dev/null
kubectl -n iot delete gateway edge >/dev/null

echo "--- NATS TLS from a Secret (nats.tls.existingSecret): each Broker's copy, named by path in its config"
kubectl -n starling-system create secret generic nats-client-tls --from-file=ca.crt="$work/operator-ca.crt" >/dev/null
helm upgrade starling charts/starling -n starling-system --wait=hookOnly --set 'operator.watchNamespaces={iot}' \
  --set nats.install.enabled=true --set nats.install.tls.enabled=false --set nats.tls.existingSecret=nats-client-tls >/dev/null \
  || fail "helm upgrade with nats.tls.existingSecret failed"
tls_secret=$(op_env STARLING_OPERATOR_BROKER_CLUSTER_TLS_SECRET)
[ "$tls_secret" = nats-client-tls ] || fail "the chart does not give the operator nats.tls.existingSecret ($tls_secret)"
kill "$op_pid"; wait "$op_pid" 2>/dev/null || true
start_nats_operator "$work/operator-nats-tls.log"
# trio-nats held the installed NATS's own CA until now.
has_ca() { kubectl -n iot get secret trio-nats -o jsonpath='{.data.ca\.crt}' | base64 -d | cmp -s - "$work/operator-ca.crt"; }
wait_for 30 has_ca || fail "trio-nats did not get the CA of nats.tls.existingSecret"
# Reconciled again, by another operator process: trio keeps its NATS user (its pods do not roll).
cmp <(secret_value iot trio-nats nats.creds) "$work/trio.creds" || fail "a later reconcile minted trio a new NATS user"
kubectl -n iot get configmap trio-config -o jsonpath='{.data.broker\.toml}' | grep -qx 'tls_ca = "/etc/starling/nats/ca.crt"' \
  || fail "trio's broker.toml does not name the mounted CA"
[ "$(kubectl -n iot get deploy trio -o jsonpath='{.spec.template.spec.containers[0].volumeMounts[?(@.name=="nats")].mountPath}')" = /etc/starling/nats ] \
  || fail "trio's pods do not mount trio-nats"

# NATS goes away: the operator cannot publish trio's account again, which holds back nothing.
kill "$nats_pid"; wait "$nats_pid" 2>/dev/null || true; nats_pid=""

echo "--- kubectl scale broker trio --replicas=2: the operator follows, NATS away"
kubectl -n iot scale broker trio --replicas=2 >/dev/null || fail "kubectl scale broker trio failed"
trio_two() { [ "$(kubectl -n iot get deploy trio -o jsonpath='{.spec.replicas}')" = 2 ]; }
wait_for 60 trio_two || fail "the Deployment did not follow kubectl scale to 2"
grep -q "its pods keep their NATS user" "$work/operator-nats-tls.log" || fail "the operator did not say it could not publish trio's account again"
kubectl -n iot delete ingress trio-wss >/dev/null
kubectl -n iot delete broker trio --wait=false >/dev/null
wait_for 60 gone trio || fail "the Broker trio was not released"
kill "$op_pid"
wait "$op_pid" 2>/dev/null || true
op_pid=""
echo "replicas: 3 on the chart's NATS accepted; endpoints follow the LoadBalancer, the Ingress and a Gateway route; kubectl scale followed"

echo "--- helm uninstall keeps the CRD"
helm uninstall starling -n starling-system >/dev/null
kubectl get crd brokers.starling.dev >/dev/null || fail "helm uninstall deleted the CRD"
echo "kube tier ok"
