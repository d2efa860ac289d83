#!/usr/bin/env bash
# unpack-debian.sh NAME CACHE PACKAGE... -- PROGRAM...
#
# Puts Debian packages, unpacked (not installed), into CACHE for the sandbox and the tests:
# hack/install-sshd.sh (openssh-server) and hack/install-haproxy.sh (haproxy) call it.
#
# - Does nothing when CACHE is usable already: every PROGRAM (a path inside the unpacked
#   tree, e.g. usr/sbin/sshd) is there and every shared library it needs resolves.
# - Otherwise fetches the packages with `apt-get download` (no installing, no maintainer
#   scripts, no service started), plus any library package they depend on that is not
#   installed here, and unpacks them with `dpkg-deb -x` into a temporary directory that is
#   renamed into place only when complete. CACHE/versions lists the packages, and
#   CACHE/lib-path the library directories of the tree (for LD_LIBRARY_PATH).
set -euo pipefail

name="$1" cache="$2"
shift 2
packages=() programs=()
while [[ $# -gt 0 && $1 != -- ]]; do packages+=("$1"); shift; done
[[ $# -gt 0 ]] && shift
programs=("$@")

say() { echo "$name: $*" >&2; }
die() { say "error: $*"; exit 1; }

lib_path() {  # the unpacked tree's library directories, as LD_LIBRARY_PATH
  local root="$1" dirs=() rel
  while IFS= read -r rel; do dirs+=("$root/$rel"); done < "$root/../lib-path"
  (IFS=:; echo "${dirs[*]:-}")
}

usable() {  # usable DIR: every program is there, ldd reads each and finds every library
  local dir="$1" program paths=() out
  [[ -f "$dir/lib-path" ]] || return 1
  for program in "${programs[@]}"; do
    [[ -x "$dir/root/$program" ]] || return 1
    paths+=("$dir/root/$program")
  done
  out=$(LD_LIBRARY_PATH="$(lib_path "$dir/root")" ldd "${paths[@]}" 2>&1) || return 1
  ! grep -q "not found" <<<"$out"
}

started=$(date +%s%N)
if usable "$cache"; then
  say "already cached in $cache ($(cat "$cache/versions" 2>/dev/null | paste -sd' ')); nothing to do"
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
  for program in "${programs[@]}"; do
    LD_LIBRARY_PATH="$(lib_path "$tmp/root")" ldd "$tmp/root/$program" 2>&1 | grep "not found" >&2 || true
  done
  die "the unpacked ${programs[*]} miss files or libraries (above)"
}

# Atomic: readers see the old cache or the whole new one. An unusable old one is replaced.
rm -rf "$cache"
if ! mv -T "$tmp" "$cache" 2>/dev/null; then
  usable "$cache" || die "cannot move $tmp to $cache"
  rm -rf "$tmp"
  say "another run cached it at the same time; keeping its copy"
fi
trap - EXIT
elapsed_ms=$(( ($(date +%s%N) - started) / 1000000 ))
say "cached $(paste -sd' ' "$cache/versions") in $cache ($((elapsed_ms / 1000)).$(printf %03d $((elapsed_ms % 1000)))s)"
