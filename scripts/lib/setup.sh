# Installs what the test tiers need when it is missing. Sourced by scripts/test.
# Every version is pinned here or in a lock file; nothing downloads binaries at run time.

APT_PACKAGES=(postgresql mosquitto mosquitto-clients nats-server chromium libnss3-tools curl jq python3-venv)

apt_install_missing() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}"
}

# The test tiers' Python packages live in a virtual environment, STARLING_ROOT/.venv, made from
# the first python3 on PATH (Debian's python3 refuses `pip install` outside one, PEP 668). It is
# filled from tests/python/requirements.txt and filled again when that file changes; its bin/
# goes first on PATH, so every tier's python3 (and pytest, kubernetes-validate) is the venv's.
python_venv() {
  local venv="$STARLING_ROOT/.venv" req="$STARLING_ROOT/tests/python/requirements.txt" want
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ ! -x "$venv/bin/python3" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" || { echo "python3 -m venv failed: install python3-venv" >&2; return 1; }
  fi
  if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    echo "installing Python packages into $venv"
    "$venv/bin/python3" -m pip install -q --disable-pip-version-check -r "$req"
    echo "$want" >"$venv/.requirements.sha256"
  fi
  export VIRTUAL_ENV="$venv"
  case ":$PATH:" in *":$venv/bin:"*) ;; *) export PATH="$venv/bin:$PATH" ;; esac
}

install_prerequisites() {
  apt_install_missing "${APT_PACKAGES[@]}"
  # The broker's own mosquitto service is not wanted: tests start what they need on free ports.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
    systemctl stop mosquitto || true
  fi
  python_venv
  if [ -f tests/node/package-lock.json ]; then
    (cd tests/node && npm ci --no-audit --no-fund --silent)
  fi
  # Cloudflare's CLI, pinned; no install scripts (its commands used here need none, and so
  # nothing is fetched outside the npm registry).
  if [ -f tests/wrangler/package-lock.json ]; then
    (cd tests/wrangler && npm ci --ignore-scripts --no-audit --no-fund --silent)
  fi
  command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
}
