#!/usr/bin/env bash
# Usage: hack/install-venv.sh VENV
# Creates the virtualenv VENV (anew) and installs careconcile into it, editable, with its test
# dependencies, by uv (hack/install-uv.sh fetches it once). pip took 45 s of a clean clone's
# test run, resolving one package after another and compiling every module on one core; uv
# about 12 s (docs/development.md). The virtualenv gets no pip of its own, which saves the 5 s
# ensurepip takes. --compile-bytecode: with PYTHONDONTWRITEBYTECODE set, every careconcile
# process would otherwise compile pydantic, cryptography and the rest anew.
set -euo pipefail

venv="${1:?usage: hack/install-venv.sh VENV}"
python="${PYTHON:-python3}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
uv="$(PYTHON="$python" hack/install-uv.sh)"
"$python" -m venv --clear --without-pip "$venv"
# uv reads no pip configuration: pip's index and find-links settings from the environment
# carry over, unless uv's own are set (a pip.conf does not).
[[ -n "${PIP_INDEX_URL:-}" && -z "${UV_INDEX_URL:-}" ]] && export UV_INDEX_URL="$PIP_INDEX_URL"
[[ -n "${PIP_EXTRA_INDEX_URL:-}" && -z "${UV_EXTRA_INDEX_URL:-}" ]] && export UV_EXTRA_INDEX_URL="$PIP_EXTRA_INDEX_URL"
# (pip separates find-links by spaces, uv by commas)
[[ -n "${PIP_FIND_LINKS:-}" && -z "${UV_FIND_LINKS:-}" ]] && export UV_FIND_LINKS="${PIP_FIND_LINKS// /,}"
[[ -n "${PIP_CERT:-}" && -z "${SSL_CERT_FILE:-}" ]] && export SSL_CERT_FILE="$PIP_CERT"
exec "$uv" pip install --quiet --python "$venv/bin/python" --compile-bytecode -e '.[test]'
