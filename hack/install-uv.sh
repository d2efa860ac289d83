#!/usr/bin/env bash
# Puts uv, the Python package installer, into ${CARECONCILE_UV_CACHE:-~/.cache/careconcile/uv}/VERSION
# and prints the path of its binary, for hack/install-venv.sh (which says why uv). Taken from
# PyPI (or pip's configured index) with the machine's own pip, into a directory of its own;
# nothing is done when it is there already.
set -euo pipefail

version="0.13.8"
python="${PYTHON:-python3}"
cache="${CARECONCILE_UV_CACHE:-$HOME/.cache/careconcile/uv}"
dir="$cache/$version"
uv="$dir/bin/uv"
if [[ ! -x "$uv" ]] || ! "$uv" --version >/dev/null 2>&1; then
  mkdir -p "$cache"
  staging="$(mktemp -d "$cache/.install-XXXXXX")"
  trap 'rm -rf "$staging"' EXIT
  if ! PIP_ROOT_USER_ACTION=ignore PIP_REQUIRE_VIRTUALENV=false "$python" -m pip install --quiet \
      --disable-pip-version-check --no-compile --target "$staging" "uv==$version" >&2; then
    echo "install-uv: could not install uv $version with $python -m pip (is pip installed, and PyPI or" \
         "your index reachable?)" >&2
    exit 1
  fi
  rm -rf "$dir"
  mv "$staging" "$dir"
fi
echo "$uv"
