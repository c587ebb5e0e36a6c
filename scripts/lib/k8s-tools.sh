# The Kubernetes test tools, shared by tiers 60-chart and 70-kube. Sourced.
#
# The tools live in shared/tools/k8s next to the repository (CI clones the repository beside a
# copy of shared/). K8S_TOOLS overrides the location.

K8S_TOOLS="${K8S_TOOLS:-$STARLING_ROOT/../shared/tools/k8s}"
if [ ! -f "$K8S_TOOLS/get-helm.sh" ]; then
  echo "missing the Kubernetes test tools: expected $K8S_TOOLS/get-helm.sh (shared/tools/k8s beside the repository; set K8S_TOOLS to override)" >&2
  exit 1
fi
K8S_TOOLS=$(cd "$K8S_TOOLS" && pwd)

# helm and kubectl (cached under ~/.cache/starling-tools); get-helm.sh unpacks with unzip.
k8s_tools_helm() {
  if ! command -v unzip >/dev/null 2>&1; then
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -q unzip
  fi
  bash "$K8S_TOOLS/get-helm.sh" >/dev/null
  export PATH="$HOME/.cache/starling-tools/bin:$PATH"
}

# kubernetes-validate, PyYAML and jsonschema, pinned in tests/python/requirements.txt.
k8s_tools_python() {
  if ! command -v kubernetes-validate >/dev/null 2>&1; then
    python3 -m pip install -q --disable-pip-version-check "$(grep '^kubernetes-validate==' "$STARLING_ROOT/tests/python/requirements.txt")"
  fi
}
