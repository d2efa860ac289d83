#!/usr/bin/env bash
# `make demo`: start a sandbox cluster (1 control plane, 3 kwok workers) from the pinned
# binaries, show its health, its kubeadm-style node directories and the spec careconcile
# wrote for it, then stop it. DEMO_KEEP=1 leaves it running for you to explore.
set -euo pipefail
name="${DEMO_NAME:-demo}"

if careconcile sandbox status --name "$name" >/dev/null 2>&1; then
  echo "A sandbox named '$name' is already running; stop it with: careconcile sandbox down --name $name" >&2
  exit 1
fi
cleanup() { [[ "${DEMO_KEEP:-0}" == 1 ]] || careconcile sandbox down --name "$name" || true; }
trap cleanup EXIT

echo "==> careconcile sandbox up --name $name --workers 3"
careconcile sandbox up --name "$name" --workers 3
info="$(careconcile sandbox status --name "$name" --output json)"
kubeconfig="$(python -c 'import json,sys; print(json.load(sys.stdin)["sandboxes"][0]["kubeconfig"])' <<<"$info")"
root="$(dirname "$kubeconfig")"

echo
echo "==> careconcile sandbox status --name $name"
careconcile sandbox status --name "$name"

echo
echo "==> the cluster CA every node trusts (nodes/*/etc/kubernetes/pki/ca.crt)"
python - "$root" <<'PY'
import sys
from pathlib import Path
from reconciler.core import pki

for ca_file in sorted(Path(sys.argv[1], "nodes").glob("*/etc/kubernetes/pki/ca.crt")):
    cert = pki.load_certificates(ca_file.read_bytes(), source=str(ca_file))[0]
    print(f"  {ca_file.parts[-5]:<24} {cert.subject.rfc4514_string():<14} {pki.fingerprint(cert)[:23]}..."
          f"  expires {cert.not_valid_after_utc:%Y-%m-%d}")
PY

echo
echo "==> the spec careconcile wrote for this sandbox ($root/spec.yaml)"
cat "$root/spec.yaml"
echo
if [[ "${DEMO_KEEP:-0}" == 1 ]]; then
  echo "Left running (DEMO_KEEP=1). KUBECONFIG=$kubeconfig; stop it with: careconcile sandbox down --name $name"
fi
