# The preamble every tier script sources (scripts/tiers/*.sh): strict mode, the repository root
# as STARLING_ROOT and working directory (also when a tier is run on its own), and the helpers
# tiers share.
set -euo pipefail
STARLING_ROOT="${STARLING_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
export STARLING_ROOT
cd "$STARLING_ROOT"

# need TOOL...: fails naming the first tool that is not on PATH.
need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool (scripts/lib/setup.sh installs it)"; exit 1; }
  done
}

# target_dir: cargo's target directory (CARGO_TARGET_DIR or the workspace's target/).
target_dir() {
  cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'
}

# free_port: a free TCP port on loopback.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# node_modules DIR [npm ci flags...]: installs DIR's locked npm packages once.
node_modules() {
  local dir=$1
  shift
  [ -d "$dir/node_modules" ] || (cd "$dir" && npm ci --no-audit --no-fund --silent "$@")
}
