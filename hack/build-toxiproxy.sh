#!/usr/bin/env bash
# Builds Shopify's toxiproxy server (github.com/Shopify/toxiproxy/v2, the version
# hack/toxiproxy/go.mod pins), the fault-injection TCP proxy the latency benchmarks put in
# front of a sandbox's sshd and apiservers (reconciler/sandbox/toxiproxy.py).
#
#   hack/build-toxiproxy.sh     build if missing, print the bin directory last
#   CARECONCILE_K8S_CACHE=DIR   cache root (default ~/.cache/careconcile/k8s)
#
# A script, module and stamp of its own, as hack/build-extension-apiserver.sh: nothing else
# rebuilds for it, and it is not rebuilt while its stamp matches. The binary goes to
# <cache>/toxiproxy/<version>/bin/toxiproxy-server, built with the Go toolchain on PATH
# (GOTOOLCHAIN=local, as the other builds).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod="$here/toxiproxy"
# readonly: a go.sum that lacks an entry is an error, not a silent download.
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"

version="$(awk '$1 == "github.com/Shopify/toxiproxy/v2" { print $2 }' "$mod/go.mod")"
[[ "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "build-toxiproxy: cannot read the toxiproxy version from $mod/go.mod" >&2; exit 1; }

cache_root="${CARECONCILE_K8S_CACHE:-$HOME/.cache/careconcile/k8s}"
dir="$cache_root/toxiproxy/$version"
bin_dir="$dir/bin"
binary=toxiproxy-server

stamp="$(cat "$0" "$mod"/go.mod "$mod"/go.sum | sha256sum | cut -d' ' -f1)"

start_ns=$(date +%s%N)
elapsed() { local ns=$(( $(date +%s%N) - start_ns )); printf '%d.%01d' $((ns / 1000000000)) $((ns / 100000000 % 10)); }
if [[ -x "$bin_dir/$binary" && -f "$dir/stamp" && "$(cat "$dir/stamp")" == "$stamp" ]]; then
  echo "build-toxiproxy: $binary $version up to date in $bin_dir ($(elapsed)s)" >&2
  echo "$bin_dir"
  exit 0
fi

command -v go >/dev/null || { echo "build-toxiproxy: the Go toolchain is needed (go not on PATH)" >&2; exit 1; }
echo "build-toxiproxy: building $binary $version into $bin_dir" >&2
mkdir -p "$dir"
staging="$(mktemp -d "$dir/.build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

(cd "$mod" && go build -trimpath -ldflags "-s -w -X github.com/Shopify/toxiproxy/v2.Version=$version" \
   -o "$staging/$binary" github.com/Shopify/toxiproxy/v2/cmd/server)

rm -rf "$bin_dir"
mv "$staging" "$bin_dir"
trap - EXIT
echo "$stamp" > "$dir/stamp"
echo "build-toxiproxy: built $binary in $(elapsed)s:" >&2
(cd "$bin_dir" && du -h "$binary") >&2
echo "$bin_dir"
