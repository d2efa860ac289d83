#!/usr/bin/env bash
# Builds the pinned Kubernetes binaries, etcd and kwok into a cache outside the clone.
#
#   hack/build-binaries.sh            build if missing, print the bin directory last
#   CARECONCILE_K8S_CACHE=DIR ...     cache root (default ~/.cache/careconcile/k8s)
#
# The cache holds <version>/bin plus a stamp of the inputs; when the stamp matches and
# every binary is present the script does nothing. A build goes to a temporary
# directory first, so an interrupted build never leaves a half-filled bin directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s_mod="$here/k8s"
kwok_mod="$here/kwok"
# readonly: a go.sum that lacks an entry is an error, not a silent download.
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"

kube_version="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$k8s_mod/go.mod")"
[[ "$kube_version" =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || { echo "build-binaries: cannot read the Kubernetes version from $k8s_mod/go.mod" >&2; exit 1; }
kube_major="${BASH_REMATCH[1]}"
kube_minor="${BASH_REMATCH[2]}"

cache_root="${CARECONCILE_K8S_CACHE:-$HOME/.cache/careconcile/k8s}"
version_dir="$cache_root/$kube_version"
bin_dir="$version_dir/bin"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubeadm etcd kwok)
data_files=(kwok-stages.yaml)

stamp="$(cat "$0" "$k8s_mod"/go.mod "$k8s_mod"/go.sum "$k8s_mod"/cmd/etcd/main.go "$kwok_mod"/go.mod "$kwok_mod"/go.sum | sha256sum | cut -d' ' -f1)"

all_present() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin_dir/$b" ]] || return 1; done
  for f in "${data_files[@]}"; do [[ -f "$bin_dir/$f" ]] || return 1; done
}

start_ns=$(date +%s%N)
elapsed() { local ns=$(( $(date +%s%N) - start_ns )); printf '%d.%01d' $((ns / 1000000000)) $((ns / 100000000 % 10)); }
if all_present && [[ -f "$version_dir/stamp" && "$(cat "$version_dir/stamp")" == "$stamp" ]]; then
  echo "build-binaries: $kube_version binaries up to date in $bin_dir ($(elapsed)s)" >&2
  echo "$bin_dir"
  exit 0
fi

command -v go >/dev/null || { echo "build-binaries: the Go toolchain is needed (go not on PATH)" >&2; exit 1; }
echo "build-binaries: building Kubernetes $kube_version, etcd and kwok into $bin_dir (a cold build takes many minutes)" >&2
mkdir -p "$version_dir"
staging="$(mktemp -d "$version_dir/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$kube_major -X $pkg.gitMinor=$kube_minor"
  version_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

# -s -w drops symbol tables, as upstream release builds do: the binaries are half the size.
(cd "$k8s_mod" && go build -trimpath -ldflags "-s -w$version_ldflags" -o "$staging/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubeadm ./cmd/etcd)
(cd "$kwok_mod" && go build -trimpath -ldflags "-s -w" -o "$staging/" sigs.k8s.io/kwok/cmd/kwok)
# kwok v0.8 has no built-in stages: take its own "fast" set (kustomize/stage/fast) from the
# pinned module, so the stages always match the kwok binary.
kwok_src="$(cd "$kwok_mod" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
             pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
  echo "---"
  cat "$kwok_src/kustomize/stage/$stage.yaml"
done > "$staging/kwok-stages.yaml"

rm -rf "$bin_dir"
mv "$staging" "$bin_dir"
trap - EXIT
echo "$stamp" > "$version_dir/stamp"
echo "build-binaries: built $kube_version in $(elapsed)s:" >&2
(cd "$bin_dir" && du -h "${binaries[@]}") >&2
echo "$bin_dir"
