#!/usr/bin/env bash
# Puts an OpenSSH server (Debian's openssh-server and openssh-sftp-server, unpacked, not
# installed) into ${CARECONCILE_SSHD_CACHE:-~/.cache/careconcile/sshd}, for the tests and
# `careconcile sandbox up --ssh`, which start it on 127.0.0.1 with a config of their own.
# The fetching and unpacking is hack/unpack-debian.sh's (it does nothing when the cache is
# usable already, and adds library packages that are not installed here, such as libwrap0
# on a plain Debian 12).
#
# Run as root, sshd needs its privilege-separation user `sshd` and the directory
# /run/sshd (both compiled into Debian's sshd); the script creates them when they are
# missing, and says so. Run as another user it touches nothing outside the cache: sshd
# then runs as that user and can only log that user in, which needs neither.
set -euo pipefail

cache="${CARECONCILE_SSHD_CACHE:-$HOME/.cache/careconcile/sshd}"
say() { echo "install-sshd: $*" >&2; }

"$(dirname "${BASH_SOURCE[0]}")/unpack-debian.sh" install-sshd "$cache" openssh-server openssh-sftp-server \
  -- usr/sbin/sshd usr/lib/openssh/sftp-server

# As root, sshd refuses to start without these.
[[ $(id -u) -eq 0 ]] || exit 0
if ! getent passwd sshd >/dev/null; then
  useradd --system --no-create-home --home-dir /run/sshd --shell /usr/sbin/nologin sshd
  say "created the system user sshd (sshd's privilege-separation user; sshd runs as root here)"
fi
if [[ ! -d /run/sshd ]]; then
  install -d -m 0755 -o root -g root /run/sshd
  say "created /run/sshd (sshd's privilege-separation directory)"
fi
