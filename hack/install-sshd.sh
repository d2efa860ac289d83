#!/usr/bin/env bash
# Puts an OpenSSH server (Debian's openssh-server and openssh-sftp-server, unpacked, not
# installed) into ${CARECONCILE_SSHD_CACHE:-~/.cache/careconcile/sshd}, for the tests and
# `careconcile sandbox up --ssh`, which start it on 127.0.0.1 with a config of their own.
#
# - Does nothing when a usable sshd is cached already (its files are there and every
#   shared library it needs resolves).
# - Otherwise fetches the packages with `apt-get download` (no installing, no maintainer
#   scripts, no service started), plus any library package they depend on that is not
#   installed here (libwrap0 on a plain Debian 12), and unpacks them with `dpkg-deb -x`
#   into a temporary directory that is renamed into place only when complete.
# - Run as root, sshd needs its privilege-separation user `sshd` and the directory
#   /run/sshd (both compiled into Debian's sshd); the script creates them when they are
#   missing, and says so. Run as another user it touches nothing outside the cache: sshd
#   then runs as that user and can only log that user in, which needs neither.
set -euo pipefail

cache="${CARECONCILE_SSHD_CACHE:-$HOME/.cache/careconcile/sshd}"
packages=(openssh-server openssh-sftp-server)

say() { echo "install-sshd: $*" >&2; }
die() { say "error: $*"; exit 1; }

lib_path() {  # the unpacked tree's library directories, as LD_LIBRARY_PATH
  local root="$1" dirs=() rel
  while IFS= read -r rel; do dirs+=("$root/$rel"); done < "$root/../lib-path"
  (IFS=:; echo "${dirs[*]:-}")
}

usable() {  # usable DIR: sshd and sftp-server are there and ldd finds every library
  local dir="$1"
  [[ -x "$dir/root/usr/sbin/sshd" && -x "$dir/root/usr/lib/openssh/sftp-server" && -f "$dir/lib-path" ]] || return 1
  ! LD_LIBRARY_PATH="$(lib_path "$dir/root")" ldd "$dir/root/usr/sbin/sshd" "$dir/root/usr/lib/openssh/sftp-server" \
    2>&1 | grep -q "not found"
}

privsep() {  # as root, sshd refuses to start without these
  [[ $(id -u) -eq 0 ]] || return 0
  if ! getent passwd sshd >/dev/null; then
    useradd --system --no-create-home --home-dir /run/sshd --shell /usr/sbin/nologin sshd
    say "created the system user sshd (sshd's privilege-separation user; sshd runs as root here)"
  fi
  if [[ ! -d /run/sshd ]]; then
    install -d -m 0755 -o root -g root /run/sshd
    say "created /run/sshd (sshd's privilege-separation directory)"
  fi
}

started=$(date +%s%N)
if usable "$cache"; then
  privsep
  say "sshd already cached in $cache ($(cat "$cache/versions" 2>/dev/null | paste -sd' ')); nothing to do"
  exit 0
fi

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
  || die "needs apt-get and dpkg-deb (Debian or a derivative)"

mkdir -p "$(dirname "$cache")"
tmp=$(mktemp -d "$cache.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/debs" "$tmp/root"
# apt drops to its _apt user to download; let it write here (else it warns and goes on as root).
if [[ $(id -u) -eq 0 ]] && getent passwd _apt >/dev/null; then chown _apt "$tmp/debs"; fi

download() {  # download PACKAGE...: into $tmp/debs; refreshes the package lists once if needed (root only)
  if (cd "$tmp/debs" && apt-get download -q "$@" >"$tmp/apt.log" 2>&1); then return 0; fi
  if [[ $(id -u) -eq 0 && -z "${refreshed:-}" ]]; then
    refreshed=1
    say "apt-get download failed; running apt-get update once and trying again"
    apt-get update -q >"$tmp/apt-update.log" 2>&1 || { cat "$tmp/apt-update.log" >&2; die "apt-get update failed"; }
    (cd "$tmp/debs" && apt-get download -q "$@" >"$tmp/apt.log" 2>&1) && return 0
  fi
  cat "$tmp/apt.log" >&2
  die "apt-get download $* failed"
}

missing_libraries() {  # library packages the downloaded debs depend on that are not installed
  local deb dep name
  for deb in "$tmp"/debs/*.deb; do
    dpkg-deb -f "$deb" Depends | tr ',' '\n' | while IFS= read -r dep; do
      name=$(echo "$dep" | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' | tr -d ' ')
      [[ $name == lib* ]] || continue
      [[ $(dpkg-query -W -f='${db:Status-Status}' "$name" 2>/dev/null) == installed ]] && continue
      ls "$tmp"/debs/"${name}"_*.deb >/dev/null 2>&1 && continue
      echo "$name"
    done
  done | sort -u
}

download "${packages[@]}"
for _ in 1 2 3; do  # dependencies of dependencies, a few levels at most
  mapfile -t extra < <(missing_libraries)
  [[ ${#extra[@]} -eq 0 ]] && break
  say "also fetching library packages that are not installed: ${extra[*]}"
  download "${extra[@]}"
done

for deb in "$tmp"/debs/*.deb; do
  dpkg-deb -x "$deb" "$tmp/root"
  dpkg-deb -f "$deb" Package Version | paste -sd' ' | sed 's/Package: //; s/ Version: /=/' >>"$tmp/versions"
done
(cd "$tmp/root" && find . \( -name '*.so' -o -name '*.so.*' \) \( -type f -o -type l \) -printf '%h\n' | sed 's|^\./||' | sort -u) >"$tmp/lib-path"
rm -rf "$tmp/debs" "$tmp"/apt*.log
usable "$tmp" || {
  LD_LIBRARY_PATH="$(lib_path "$tmp/root")" ldd "$tmp/root/usr/sbin/sshd" | grep "not found" >&2 || true
  die "the unpacked sshd is missing libraries (above)"
}

# Atomic: readers see the old cache or the whole new one. An unusable old one is replaced.
rm -rf "$cache"
if ! mv -T "$tmp" "$cache" 2>/dev/null; then
  usable "$cache" || die "cannot move $tmp to $cache"
  rm -rf "$tmp"
  say "another run cached sshd at the same time; keeping its copy"
fi
trap - EXIT
privsep
elapsed_ms=$(( ($(date +%s%N) - started) / 1000000 ))
say "cached $(paste -sd' ' "$cache/versions") in $cache ($((elapsed_ms / 1000)).$(printf %03d $((elapsed_ms % 1000)))s)"
