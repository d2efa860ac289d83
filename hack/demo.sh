#!/usr/bin/env bash
# `make demo`: start a sandbox cluster (1 control plane, 3 kwok workers) from the pinned
# binaries, show the CA its nodes trust, then rotate the cluster CA the way a user would:
# raise the rotation counter in the spec (drift reports it), plan, apply, plan again (no
# changes), pin the new CA in the spec, and check drift with metrics (in sync).
# DEMO_KEEP=1 leaves the sandbox running for you to explore.
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

show_trust() {
python - "$root" <<'PY'
import sys
from pathlib import Path
from reconciler.core import pki

for ca_file in sorted(Path(sys.argv[1], "nodes").glob("*/etc/kubernetes/pki/ca.crt")):
    cert = pki.load_certificates(ca_file.read_bytes(), source=str(ca_file))[0]
    print(f"  {ca_file.parts[-5]:<24} {cert.subject.rfc4514_string():<14} {pki.fingerprint(cert)[:23]}..."
          f"  expires {cert.not_valid_after_utc:%Y-%m-%d}")
PY
}

echo
echo "==> the cluster CA every node trusts (nodes/*/etc/kubernetes/pki/ca.crt)"
show_trust

echo
echo "==> the spec careconcile wrote for this sandbox ($root/spec.yaml)"
cat "$root/spec.yaml"

export CARECONCILE_WORKSPACE="$root/careconcile-workspace"
spec="$root/spec.yaml"
# only the cluster CA's counter (the line after clusterCA:)
sed -i '/clusterCA:/{n;s/rotation: 0/rotation: 1/}' "$spec"
echo
echo "==> raised clusterCA.rotation to 1; careconcile drift $spec (expect: rotation-requested, exit 2)"
set +e
careconcile drift "$spec"
status=$?
set -e
[[ $status == 2 ]] || { echo "expected drift (exit 2), got $status" >&2; exit 1; }

echo
echo "==> careconcile plan $spec --out $root/rotate.plan.json"
set +e
careconcile plan "$spec" --out "$root/rotate.plan.json" --detailed-exitcode
status=$?
set -e
[[ $status == 2 ]] || { echo "expected a plan with changes (exit 2), got $status" >&2; exit 1; }

echo
echo "==> careconcile apply $root/rotate.plan.json"
careconcile apply "$root/rotate.plan.json"

echo
echo "==> careconcile plan $spec --detailed-exitcode (expect: no changes, exit 0)"
careconcile plan "$spec" --detailed-exitcode | tail -1

echo
echo "==> the cluster CA every node trusts now"
show_trust

echo
echo "==> careconcile pin $spec (record the new CA's fingerprint in the spec)"
careconcile pin "$spec"

echo
echo "==> careconcile drift $spec --metrics-file $root/careconcile.prom (expect: in sync, exit 0)"
careconcile drift "$spec" --metrics-file "$root/careconcile.prom"
grep -E '^careconcile_(ca_not_after|cluster_in_sync|drift_last_success)' "$root/careconcile.prom"
echo
echo "The new admin kubeconfig: $CARECONCILE_WORKSPACE/$name/$name-kubeconfig"
echo "The apply log:            $(ls "$CARECONCILE_WORKSPACE/$name"/log/apply-*/apply.log)"
if [[ "${DEMO_KEEP:-0}" == 1 ]]; then
  echo "Left running (DEMO_KEEP=1). KUBECONFIG=$kubeconfig; stop it with: careconcile sandbox down --name $name"
fi
