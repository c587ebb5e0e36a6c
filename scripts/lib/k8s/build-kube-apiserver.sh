#!/usr/bin/env bash
# Builds a real kube-apiserver and etcd for the kube tier from Debian bookworm's own packages:
# kube-apiserver v1.20.2 from the `kubernetes` source package, compiled with Debian's Go 1.19, and
# etcd 3.4 from the `etcd-server` binary package. Everything comes through apt from the signed
# Debian archive; nothing else is downloaded.
#
#   scripts/lib/k8s/build-kube-apiserver.sh [CACHE_DIR]   prints CACHE_DIR/bin (holds kube-apiserver, etcd)
#
# CACHE_DIR defaults to ~/.cache/starling-k8s ($XDG_CACHE_HOME is honoured). The first build takes
# about 4 minutes on 2 cores, 1.3 GB of memory and 3 GB of scratch space under CACHE_DIR, and keeps
# 150 MB; when CACHE_DIR/bin/VERSION names this build, the script returns at once. Two runs at once
# wait for each other (flock). apt runs with its own lists and cache under the scratch folder, so
# the machine's apt state is not touched and no root is needed; the .debs are unpacked with
# dpkg-deb, never installed. The build log is kept in CACHE_DIR/build.log.
#
# Environment: DEBIAN_MIRROR (default: the machine's Debian mirror, else deb.debian.org).
set -euo pipefail

version="kube-apiserver v1.20.2, etcd 3.4 (Debian bookworm), Go 1.19"
cache=$(realpath -m "${1:-${XDG_CACHE_HOME:-$HOME/.cache}/starling-k8s}")
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -x "$cache/bin/kube-apiserver" ] && [ -x "$cache/bin/etcd" ] && [ "$(cat "$cache/bin/VERSION" 2>/dev/null)" = "$version" ]; then
  echo "$cache/bin"
  exit 0
fi

scratch=$(mktemp -d "$cache/build.XXXXXX")
log="$cache/build.log"
finish() {
  local rc=$?
  rm -rf "$scratch"
  if [ "$rc" -ne 0 ]; then
    tail -30 "$log" >&4
    echo "building kube-apiserver failed (exit $rc); the whole log is $log" >&4
  fi
}
trap finish EXIT
echo "building $version into $cache/bin (about 4 minutes, once; log: $log)" >&2
# The build talks to the log; stdout (fd 3) gets only the bin folder, stderr (fd 4) the summary.
exec 3>&1 4>&2 >"$log" 2>&1

# The machine's Debian mirror: deb822 sources (bookworm's default), then the classic list.
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
  mirror=$(awk '$1 == "URIs:" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:.*\/debian\/?$/) { print $i; exit } }' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}

cd "$scratch"
mkdir -p apt/lists/partial apt/cache/archives/partial root home
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
printf 'deb [signed-by=%s] %s bookworm main\ndeb-src [signed-by=%s] %s bookworm main\n' \
  "$keyring" "$mirror" "$keyring" "$mirror" >apt/sources.list
apt_private=(-o Dir::Etc::SourceList="$scratch/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o Dir::State::Lists="$scratch/apt/lists" -o Dir::Cache="$scratch/apt/cache"
  -o APT::Sandbox::User="$(id -un)")
apt-get "${apt_private[@]}" update -q
apt-get "${apt_private[@]}" source --download-only kubernetes
apt-get "${apt_private[@]}" download golang-1.19-go golang-1.19-src golang-github-modern-go-reflect2-dev \
  rsync etcd-server
tar xzf kubernetes_*.orig.tar.gz
src=kubernetes-1.20.2
[ -d "$src" ] || { echo "the kubernetes source package no longer holds $src: $(ls)"; exit 1; }
for deb in ./*.deb; do dpkg-deb -x "$deb" root; done

# The vendored reflect2 1.0.1 crashes under Go 1.18 and later (on the first JSON map encoding);
# Debian's reflect2 1.0.2 is the fixed version of the same code.
reflect2="$src/vendor/github.com/modern-go/reflect2"
rm -f "$reflect2"/*.go "$reflect2"/*.s
cp root/usr/share/gocode/src/github.com/modern-go/reflect2/*.go root/usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$reflect2"/

# The Makefile runs the code generators, then builds cmd/kube-apiserver from the vendored modules.
GOROOT="$scratch/root/usr/lib/go-1.19" PATH="$scratch/root/usr/lib/go-1.19/bin:$scratch/root/usr/bin:$PATH" \
  GOCACHE="$scratch/gocache" GOPROXY=off CGO_ENABLED=0 HOME="$scratch/home" \
  KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean \
  make -C "$src" WHAT=cmd/kube-apiserver GOLDFLAGS="-s -w"

mkdir -p bin
cp "$src/_output/bin/kube-apiserver" root/usr/bin/etcd bin/
bin/kube-apiserver --version
bin/etcd --version
echo "$version" >bin/VERSION
rm -rf "${cache:?}/bin"
mv bin "$cache/bin"
exec >&3 2>&4 3>&- 4>&-
echo "built kube-apiserver and etcd in $SECONDS s" >&2
echo "$cache/bin"
