# Installs what the test tiers need when it is missing. Sourced by scripts/test.
# Every version is pinned here or in a lock file; nothing downloads binaries at run time.

APT_PACKAGES=(postgresql mosquitto mosquitto-clients chromium libnss3-tools curl jq)

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

install_prerequisites() {
  apt_install_missing "${APT_PACKAGES[@]}"
  # The broker's own mosquitto service is not wanted: tests start what they need on free ports.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
    systemctl stop mosquitto || true
  fi
  if [ -f tests/python/requirements.txt ]; then
    python3 -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
  fi
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
