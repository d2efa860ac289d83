#!/usr/bin/env bash
# Builds k8s.io/sample-apiserver, a real aggregated API server (group wardle.example.com),
# for `careconcile sandbox up --extension-apiserver`.
#
#   hack/build-extension-apiserver.sh     build if missing, print the bin directory last
#   CARECONCILE_K8S_CACHE=DIR ...         cache root (default ~/.cache/careconcile/k8s)
#
# It is a script, module (hack/extension-apiserver) and stamp of its own, beside
# hack/build-binaries.sh: adding it changes none of the inputs of that script's stamp, so
# the six control-plane binaries are not rebuilt for it. The binary goes to
# <cache>/<version>/extension/bin, <version> being the Kubernetes release hack/k8s pins;
# hack/extension-apiserver/go.mod must require the matching k8s.io/sample-apiserver v0.Y.Z
# (checked below). Its packages are those kube-apiserver is built from, at the same
# versions, so with a warm Go build cache only sample-apiserver's own packages compile.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s_mod="$here/k8s"
ext_mod="$here/extension-apiserver"
# readonly: a go.sum that lacks an entry is an error, not a silent download.
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"

kube_version="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$k8s_mod/go.mod")"
[[ "$kube_version" =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)$ ]] || { echo "build-extension-apiserver: cannot read the Kubernetes version from $k8s_mod/go.mod" >&2; exit 1; }
kube_major="${BASH_REMATCH[1]}"
kube_minor="${BASH_REMATCH[2]}"
staging_version="v0.${kube_minor}.${BASH_REMATCH[3]}"
sample_version="$(awk '$1 == "k8s.io/sample-apiserver" { print $2 }' "$ext_mod/go.mod")"
if [[ "$sample_version" != "$staging_version" ]]; then
  echo "build-extension-apiserver: $ext_mod/go.mod requires k8s.io/sample-apiserver ${sample_version:-(none)}," \
       "but hack/k8s pins Kubernetes $kube_version: require $staging_version (go get -tool k8s.io/sample-apiserver@$staging_version)" >&2
  exit 1
fi

cache_root="${CARECONCILE_K8S_CACHE:-$HOME/.cache/careconcile/k8s}"
ext_dir="$cache_root/$kube_version/extension"
bin_dir="$ext_dir/bin"
binary=sample-apiserver

stamp="$(cat "$0" "$ext_mod"/go.mod "$ext_mod"/go.sum | sha256sum | cut -d' ' -f1)"

start_ns=$(date +%s%N)
elapsed() { local ns=$(( $(date +%s%N) - start_ns )); printf '%d.%01d' $((ns / 1000000000)) $((ns / 100000000 % 10)); }
if [[ -x "$bin_dir/$binary" && -f "$ext_dir/stamp" && "$(cat "$ext_dir/stamp")" == "$stamp" ]]; then
  echo "build-extension-apiserver: $binary $sample_version up to date in $bin_dir ($(elapsed)s)" >&2
  echo "$bin_dir"
  exit 0
fi

command -v go >/dev/null || { echo "build-extension-apiserver: the Go toolchain is needed (go not on PATH)" >&2; exit 1; }
echo "build-extension-apiserver: building $binary $sample_version into $bin_dir" >&2
mkdir -p "$ext_dir"
staging="$(mktemp -d "$ext_dir/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

# The version ldflags hack/build-binaries.sh sets, so --version names the release.
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$kube_major -X $pkg.gitMinor=$kube_minor"
  version_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done
(cd "$ext_mod" && go build -trimpath -ldflags "-s -w$version_ldflags" -o "$staging/$binary" k8s.io/sample-apiserver)

rm -rf "$bin_dir"
mv "$staging" "$bin_dir"
trap - EXIT
echo "$stamp" > "$ext_dir/stamp"
echo "build-extension-apiserver: built $binary in $(elapsed)s:" >&2
(cd "$bin_dir" && du -h "$binary") >&2
echo "$bin_dir"
