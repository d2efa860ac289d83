#!/usr/bin/env bash
# Puts uv, the Python package installer, into ${CARECONCILE_UV_CACHE:-~/.cache/careconcile/uv}/VERSION
# and prints the path of its binary. `make install` fills the virtualenv with it: pip took
# 45 s of a clean clone's test run (resolving one package after another, then compiling
# every module on one core), uv about 12 s (docs/development.md). Taken from PyPI with the
# machine's own pip, into a directory of its own; nothing is done when it is there already.
set -euo pipefail

version="0.13.8"
python="${PYTHON:-python3}"
dir="${CARECONCILE_UV_CACHE:-$HOME/.cache/careconcile/uv}/$version"
uv="$dir/bin/uv"
if [[ ! -x "$uv" ]] || ! "$uv" --version >/dev/null 2>&1; then
  rm -rf "$dir.tmp"
  "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-compile --target "$dir.tmp" "uv==$version" >&2
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
fi
echo "$uv"
