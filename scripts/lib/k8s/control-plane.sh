#!/usr/bin/env bash
# Starts and stops a Kubernetes control plane on loopback for the kube tier: etcd and a real
# kube-apiserver (from build-kube-apiserver.sh), like envtest. There is no controller-manager,
# scheduler or kubelet: no pods run, nothing is garbage-collected and no workload gets a status
# unless the test writes it.
#
#   scripts/lib/k8s/control-plane.sh start BIN_DIR WORK_DIR   ready in about 5 s
#   scripts/lib/k8s/control-plane.sh stop WORK_DIR
#
# start writes WORK_DIR/kubeconfig (an admin in system:masters, by bearer token; the server's
# certificate is self-signed, so the kubeconfig skips its verification), WORK_DIR/server (the
# URL) and WORK_DIR/admin-token, and leaves etcd's and the server's logs and pid files there. It
# listens on APISERVER_PORT and etcd on ETCD_PORT and ETCD_PEER_PORT; any left unset gets a free
# port. Authorization is RBAC, so `kubectl auth can-i --as=system:serviceaccount:NS:NAME` answers
# as the cluster would. stop ends the server, then etcd, each within 10 s (SIGKILL after), and
# waits until they are gone.
set -euo pipefail

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Ends the process in PID_FILE and waits up to 10 s for it, then kills it.
end() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

case "${1:-}" in
start)
  [ "$#" -eq 3 ] || { echo "usage: $0 start BIN_DIR WORK_DIR" >&2; exit 2; }
  bin=$(realpath "$2")
  work=$(realpath -m "$3")
  rm -rf "$work"
  mkdir -p "$work/etcd" "$work/certs"
  port=${APISERVER_PORT:-$(free_port)}
  etcd_port=${ETCD_PORT:-$(free_port)}
  etcd_peer_port=${ETCD_PEER_PORT:-$(free_port)}
  openssl genrsa -out "$work/certs/sa.key" 2048 2>/dev/null
  openssl rsa -in "$work/certs/sa.key" -pubout -out "$work/certs/sa.pub" 2>/dev/null
  token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  echo "$token,admin,admin,system:masters" >"$work/certs/tokens.csv"
  (umask 077 && echo "$token" >"$work/admin-token")

  "$bin/etcd" --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "default=http://127.0.0.1:$etcd_peer_port" --unsafe-no-fsync >"$work/etcd.log" 2>&1 &
  echo $! >"$work/etcd.pid"
  # The ServiceAccount admission plugin wants the token controller, which does not run here.
  "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 \
    --secure-port "$port" --cert-dir "$work/certs" --service-cluster-ip-range 10.0.0.0/24 \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$work/certs/sa.pub" \
    --service-account-signing-key-file "$work/certs/sa.key" --token-auth-file "$work/certs/tokens.csv" \
    --authorization-mode RBAC --disable-admission-plugins ServiceAccount >"$work/apiserver.log" 2>&1 &
  echo $! >"$work/apiserver.pid"

  server="https://127.0.0.1:$port"
  echo "$server" >"$work/server"
  cat >"$work/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$server", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: local, context: {cluster: local, user: admin, namespace: default}}]
current-context: local
KUBECONFIG
  chmod 600 "$work/kubeconfig"

  for _ in $(seq 1 120); do
    if curl -skf -H "Authorization: Bearer $token" "$server/readyz" >/dev/null 2>&1; then
      echo "kube-apiserver ready at $server; KUBECONFIG=$work/kubeconfig"
      exit 0
    fi
    for p in etcd apiserver; do
      if ! kill -0 "$(cat "$work/$p.pid")" 2>/dev/null; then
        tail -30 "$work/$p.log" >&2
        echo "$p exited during start-up (its log: $work/$p.log)" >&2
        end "$work/apiserver.pid"
        end "$work/etcd.pid"
        exit 1
      fi
    done
    sleep 0.5
  done
  tail -30 "$work/apiserver.log" >&2
  echo "kube-apiserver was not ready within 60 s" >&2
  end "$work/apiserver.pid"
  end "$work/etcd.pid"
  exit 1
  ;;
stop)
  [ "$#" -eq 2 ] || { echo "usage: $0 stop WORK_DIR" >&2; exit 2; }
  # The server first: it can hang on SIGTERM once etcd is gone.
  end "$2/apiserver.pid"
  end "$2/etcd.pid"
  ;;
*)
  echo "usage: $0 start BIN_DIR WORK_DIR | stop WORK_DIR" >&2
  exit 2
  ;;
esac
