#!/usr/bin/env bash
# Puts HAProxy (Debian's haproxy, unpacked, not installed) into
# ${CARECONCILE_HAPROXY_CACHE:-~/.cache/careconcile/haproxy}: the load balancer in front of
# the apiservers of a sandbox with 2 or more control planes, as kubeadm's HA guide lays one
# out (docs/sandbox.md). Fetching and unpacking is hack/unpack-debian.sh's; nothing is
# done when the cache is usable already.
set -euo pipefail

cache="${CARECONCILE_HAPROXY_CACHE:-$HOME/.cache/careconcile/haproxy}"
exec "$(dirname "${BASH_SOURCE[0]}")/unpack-debian.sh" install-haproxy "$cache" haproxy -- usr/sbin/haproxy
