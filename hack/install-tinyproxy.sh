#!/usr/bin/env bash
# Puts tinyproxy (Debian's tinyproxy-bin, unpacked, not installed) into
# ${CARECONCILE_TINYPROXY_CACHE:-~/.cache/careconcile/tinyproxy}: a real HTTP proxy on
# 127.0.0.1 that the tests send careconcile's API traffic through (a kubeconfig's
# proxy-url, CONNECT tunnels; docs/proxies.md). Fetching and unpacking is
# hack/unpack-debian.sh's; nothing is done when the cache is usable already.
set -euo pipefail

cache="${CARECONCILE_TINYPROXY_CACHE:-$HOME/.cache/careconcile/tinyproxy}"
exec "$(dirname "${BASH_SOURCE[0]}")/unpack-debian.sh" install-tinyproxy "$cache" tinyproxy-bin -- usr/bin/tinyproxy
