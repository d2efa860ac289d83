"""`careconcile drift` against real sandboxes: every departure a spec or a hand can make,
read back from `--format json` and from the metrics file with Prometheus' own parser.

The shared sandbox (``cluster``) is changed only through spec copies, or by replacing a
node file and putting it back; the departures that need a rotation or a second apiserver
share one sandbox of this module (``ha``), where a rotation held at phase 2 is also read by
drift as the ServiceAccount of the CronJob recipe, which must not read any CA key.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

from reconciler import sandbox
from reconciler._files import atomic_write
from reconciler.core import kubeadm, kubeconfig, pki
from reconciler.core.drift import DRIFT_KINDS
from reconciler.core.metrics import LAST_SUCCESS, METRICS
from reconciler.errors import APIForbiddenError, APINotFoundError
from reconciler.sandbox._paths import SandboxPaths
from reconciler.shell import probes
from reconciler.shell.kube import InClusterClient, KubeconfigClient

from . import drift_account
from .helpers import client_cert, cluster_ca, node_file, wait_until
from .rotation import careconcile, record_ca

pytestmark = pytest.mark.integration

ECDSA = pki.KeySpec("ECDSA", 256)
SECRET = "/api/v1/namespaces/kube-system/secrets/careconcile-state"
KEYS_SECRET = "/api/v1/namespaces/kube-system/secrets/careconcile-keys"
LEASE = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/careconcile-lock"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
APISERVER = f"{kubeadm.PKI_DIR}/apiserver"
SUPER_ADMIN = f"{kubeadm.KUBERNETES_DIR}/super-admin.conf"


# --- running drift and reading what it wrote -------------------------------------------


def drift(*specs: Path, tmp_path: Path, metrics: Path | None = None, expect: int) -> dict:
    """`careconcile drift SPEC... --format json`, its exit code checked; the report."""
    metrics = metrics or tmp_path / "drift.prom"
    result = careconcile("drift", *map(str, specs), "--format", "json", "--metrics-file", str(metrics),
                         workspace=tmp_path / "ws", timeout=120)
    assert result.returncode == expect, result.stdout[-4000:] + result.stderr
    report = json.loads(result.stdout)
    assert report["format_version"] == 1
    return report


def findings(report: dict, cluster: int = 0) -> list[tuple[str, str]]:
    return sorted((f["kind"], f["subject"]) for f in report["clusters"][cluster]["findings"])


def kinds(report: dict, cluster: int = 0) -> set[str]:
    return {kind for kind, _ in findings(report, cluster)}


def read_metrics(path: Path) -> dict[str, dict[tuple, float]]:
    """name -> {sorted labels: value}; every family must carry HELP and TYPE gauge."""
    text = path.read_text()
    parsed: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.name in METRICS and family.name not in parsed, family.name
        assert family.documentation == METRICS[family.name][0] and family.type == "gauge", family.name
        assert f"# HELP {family.name} " in text and f"# TYPE {family.name} gauge" in text
        parsed[family.name] = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
    return parsed


def who(report: dict, cluster: int = 0) -> dict[str, str]:
    entry = report["clusters"][cluster]
    return {"spec": entry["spec_name"], "cluster": entry["cluster"]}


def labels(**values: str) -> tuple:
    return tuple(sorted(values.items()))


def check_findings_metric(metrics: dict, report: dict, cluster: int = 0) -> None:
    """Every kind is listed for a reachable cluster, with the report's counts."""
    counts = {kind: 0 for kind in DRIFT_KINDS}
    for kind, _ in findings(report, cluster):
        counts[kind] += 1
    for kind, count in counts.items():
        assert metrics["careconcile_drift_findings"][labels(**who(report, cluster), kind=kind)] == count, kind
    in_sync = report["clusters"][cluster]["status"] == "in-sync"
    assert metrics["careconcile_cluster_in_sync"][labels(**who(report, cluster))] == int(in_sync)
    assert metrics["careconcile_cluster_reachable"][labels(**who(report, cluster))] == 1


# --- spec copies and node files ----------------------------------------------------------


def spec_copy(info, directory: Path, name: str, *, kubeconfig_path: Path | None = None, cluster: str | None = None,
              **ca_settings) -> Path:
    """The sandbox's spec with clusterCA settings changed, as a file of its own."""
    yaml = YAML()
    document = yaml.load(Path(info.spec).read_text())
    entry = document["spec"]["clusters"][0]
    entry["authorities"]["clusterCA"].update(ca_settings)
    if kubeconfig_path is not None:
        entry["kubeconfig"] = str(kubeconfig_path)
    if cluster is not None:
        entry["name"] = cluster
        document["metadata"]["name"] = f"sandbox-{cluster}"
    path = directory / f"{name}.yaml"
    with path.open("w") as handle:
        yaml.dump(document, handle)
    return path


def node_index(info, role: str, nth: int = 0) -> int:
    return [i for i, node in enumerate(info.nodes) if node.role == role][nth]


@contextlib.contextmanager
def replaced(*changes: tuple[Path, bytes]) -> Iterator[None]:
    """Files replaced for the duration (mode kept), then put back byte for byte."""
    saved = [(path, path.read_bytes(), path.stat().st_mode & 0o777) for path, _ in changes]
    try:
        for (path, content), (_, _, mode) in zip(changes, saved):
            atomic_write(path, content, mode)
        yield
    finally:
        for path, content, mode in saved:
            atomic_write(path, content, mode)


def foreign_ca() -> pki.KeyPair:
    return pki.new_ca("kubernetes", now=dt.datetime.now(dt.timezone.utc), key=ECDSA)


def node_id(info, index: int, path: str) -> str:
    return f"{info.nodes[index].name}:{path}"


def tree_mtimes(info) -> dict[str, int]:
    """Modification times of every file and directory careconcile manages on the nodes (a
    directory's changes too when a file is written beside it and renamed); etcd's data and
    the logs change on their own."""
    mtimes = {}
    for node in info.nodes:
        for part in ("etc/kubernetes", "var/lib/kubelet"):
            top = Path(node.root) / part
            for path in [top, *top.rglob("*")]:
                mtimes[str(path)] = path.lstat().st_mtime_ns
    return mtimes


def api_object(info, path: str) -> dict | None:
    with KubeconfigClient(Path(info.kubeconfig)) as client:
        try:
            return client.get(path)
        except APINotFoundError:
            return None


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the shared sandbox: specs that depart from it -----------------------------------------


def test_clean_sandbox_is_in_sync(cluster, tmp_path):
    report = drift(Path(cluster.spec), tmp_path=tmp_path, expect=0)
    entry = report["clusters"][0]
    assert entry["status"] == "in-sync" and entry["findings"] == [] and entry["error"] is None
    assert report["totals"] == {"clusters": 1, "in_sync": 1, "drifted": 0, "errors": 0, "findings": 0, "by_kind": {}}
    live = cluster_ca(cluster).cert
    assert entry["authorities"][0]["fingerprint"] == pki.fingerprint(live)

    metrics = read_metrics(tmp_path / "drift.prom")
    check_findings_metric(metrics, report)
    ca_labels = labels(**who(report), authority="clusterCA")
    assert metrics["careconcile_ca_not_after_timestamp_seconds"][ca_labels] == live.not_valid_after_utc.timestamp()
    assert metrics["careconcile_ca_info"][labels(**who(report), authority="clusterCA",
                                                 fingerprint=pki.fingerprint(live), key="RSA-2048")] == 1
    kubelet = pki.load_certificates(node_file(cluster, node_index(cluster, "worker"),
                                              kubeadm.KUBELET_CLIENT_CERT).read_bytes(), source="kubelet")[0]
    earliest = metrics["careconcile_leaf_earliest_not_after_timestamp_seconds"][ca_labels]
    assert earliest <= kubelet.not_valid_after_utc.timestamp() < live.not_valid_after_utc.timestamp()
    now = time.time()
    assert now - 120 < metrics[LAST_SUCCESS][labels(**who(report))] <= now + 1
    assert now - 120 < metrics["careconcile_drift_run_timestamp_seconds"][()] <= now + 1

    text = careconcile("drift", cluster.spec, workspace=tmp_path / "ws", timeout=120)
    assert text.returncode == 0, text.stderr
    assert f"Cluster {cluster.name} ({cluster.spec}): in sync" in text.stdout
    assert "Drift: 1 cluster checked, 1 in sync, 0 drifted, 0 unreachable or failed." in text.stdout


# kind -> (clusterCA settings, what the findings must be; "*" for "every leaf", checked below).
# renewBefore must be shorter than validity and leafValidity, so those grow with it; the
# sandbox's CA was made for ten years and its leaves for one, whatever the spec says now.
SPEC_CASES = {
    "pin-mismatch": ({"fingerprint": "sha256:" + "ab" * 32}, ["clusterCA"]),
    "ca-expiring": ({"validity": "7300d", "renewBefore": "4000d", "leafValidity": "5000d"}, ["clusterCA"]),
    "leaf-expiring": ({"renewBefore": "400d", "leafValidity": "730d"}, ["*"]),
    "key-mismatch": ({"key": {"algorithm": "ECDSA", "size": 256}}, ["clusterCA"]),
    "rotation-requested": ({"rotation": 1}, ["clusterCA"]),
}


@pytest.mark.parametrize("kind", list(SPEC_CASES))
def test_a_spec_that_departs_is_drift(cluster, tmp_path, kind):
    settings, subjects = SPEC_CASES[kind]
    spec = spec_copy(cluster, tmp_path, kind, **settings)
    report = drift(spec, tmp_path=tmp_path, expect=2)
    entry = report["clusters"][0]
    assert entry["status"] == "drift" and entry["spec"] == str(spec)
    found = findings(report)
    if subjects == ["*"]:
        # renewBefore 400d: every one-year leaf is due, the ten-year CA is not.
        leaves = [subject for found_kind, subject in found]
        assert kinds(report) == {kind}
        for node in range(len(cluster.nodes)):
            assert node_id(cluster, node, kubeadm.KUBELET_CLIENT_CERT) in leaves
        assert node_id(cluster, 0, APISERVER) in leaves and f"local:{cluster.kubeconfig}" in leaves
        assert all("inside renewBefore 400d" in f["message"] for f in entry["findings"])
    elif kind == "ca-expiring":
        # Ten years left inside a 4000-day window; the one-year leaves are inside it too.
        assert ("ca-expiring", "clusterCA") in found
        assert kinds(report) <= {"ca-expiring", "leaf-expiring"}
    else:
        assert found == [(kind, subject) for subject in subjects]
    assert all(f["remedy"] for f in entry["findings"])
    check_findings_metric(read_metrics(tmp_path / "drift.prom"), report)


# --- the shared sandbox: node files replaced by hand, then put back -----------------------


def _bundle_extra(info, foreign):
    path = node_file(info, node_index(info, "worker"), kubeadm.CLUSTER_CA_CERT)
    return [(path, path.read_bytes() + foreign.cert_pem)], \
        [("bundle-extra-ca", node_id(info, node_index(info, "worker"), kubeadm.CLUSTER_CA_CERT))]


def _bundle_missing(info, foreign):
    path = node_file(info, node_index(info, "worker"), kubeadm.CLUSTER_CA_CERT)
    return [(path, foreign.cert_pem)], \
        [("bundle-missing-ca", node_id(info, node_index(info, "worker"), kubeadm.CLUSTER_CA_CERT))]


def _kubelet_wrong_issuer(info, foreign):
    worker = node_index(info, "worker", 1)
    path = node_file(info, worker, kubeadm.KUBELET_CLIENT_CERT)
    pair = client_cert(foreign, f"system:node:{info.nodes[worker].name}", ("system:nodes",))
    return [(path, pair.cert_pem + pair.key_pem)], \
        [("leaf-wrong-issuer", node_id(info, worker, kubeadm.KUBELET_CLIENT_CERT))]


def _kubeconfig_wrong_issuer(info, foreign):
    # super-admin.conf: read by no component, so nothing restarts or fails meanwhile.
    path = node_file(info, 0, SUPER_ADMIN)
    document = kubeconfig.parse(path.read_text(), source=str(path))
    [(user, _, _)] = kubeconfig.embedded_credentials(document)
    pair = client_cert(foreign, "kubernetes-super-admin", (kubeadm.SYSTEM_MASTERS_GROUP,))
    changed = kubeconfig.with_credentials(document, user, pair.cert_pem, pair.key_pem)
    return [(path, kubeconfig.dump(changed).encode())], [("leaf-wrong-issuer", node_id(info, 0, SUPER_ADMIN))]


FILE_CASES = {"bundle-extra-ca": _bundle_extra, "bundle-missing-ca": _bundle_missing,
              "leaf-wrong-issuer-kubelet": _kubelet_wrong_issuer,
              "leaf-wrong-issuer-kubeconfig": _kubeconfig_wrong_issuer}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_a_node_file_changed_by_hand_is_drift(cluster, tmp_path, case):
    changes, expected = FILE_CASES[case](cluster, foreign_ca())
    with replaced(*changes):
        report = drift(Path(cluster.spec), tmp_path=tmp_path, expect=2)
    assert findings(report) == expected
    finding = report["clusters"][0]["findings"][0]
    assert "careconcile plan SPEC" in finding["remedy"]
    check_findings_metric(read_metrics(tmp_path / "drift.prom"), report)
    # Put back, the sandbox is in sync again for the tests after this one.
    assert drift(Path(cluster.spec), tmp_path=tmp_path, expect=0)["clusters"][0]["findings"] == []


def test_an_unreachable_cluster_is_an_error_and_the_others_are_still_checked(cluster, tmp_path):
    good_kubeconfig = tmp_path / "gone.conf"
    good_kubeconfig.write_bytes(Path(cluster.kubeconfig).read_bytes())
    gone = spec_copy(cluster, tmp_path, "gone", kubeconfig_path=good_kubeconfig, cluster="gone")
    metrics_file = tmp_path / "drift.prom"
    # First both clusters answer: "gone" gets a last-success time.
    first = drift(Path(cluster.spec), gone, tmp_path=tmp_path, expect=0)
    gone_labels = labels(**who(first, 1))
    last_success = read_metrics(metrics_file)[LAST_SUCCESS][gone_labels]

    document = kubeconfig.parse(good_kubeconfig.read_text(), source="gone.conf")
    server = f"https://127.0.0.1:{closed_port()}"
    for entry in document["clusters"]:
        entry["cluster"]["server"] = server
    good_kubeconfig.write_text(kubeconfig.dump(document))
    started = time.monotonic()
    report = drift(Path(cluster.spec), gone, tmp_path=tmp_path, expect=1)
    assert time.monotonic() - started < 60
    reachable, unreachable = report["clusters"]
    assert (unreachable["cluster"], unreachable["status"]) == ("gone", "error")
    assert server.removeprefix("https://") in unreachable["error"], unreachable["error"]
    assert unreachable["findings"] == [] and unreachable["authorities"] == []
    assert (reachable["cluster"], reachable["status"], reachable["findings"]) == (cluster.name, "in-sync", [])
    assert reachable["authorities"][0]["fingerprint"] == pki.fingerprint(cluster_ca(cluster).cert)
    assert report["totals"]["errors"] == 1 and report["totals"]["in_sync"] == 1

    metrics = read_metrics(metrics_file)
    assert metrics["careconcile_cluster_reachable"][gone_labels] == 0
    assert metrics[LAST_SUCCESS][gone_labels] == last_success  # kept from the previous file
    assert gone_labels not in metrics["careconcile_cluster_in_sync"]
    assert not any(("cluster", "gone") in key for key in metrics["careconcile_drift_findings"])
    check_findings_metric(metrics, report, 0)

    text = careconcile("drift", cluster.spec, str(gone), workspace=tmp_path / "ws", timeout=120)
    assert text.returncode == 1
    assert "Cluster gone" in text.stdout and "ERROR" in text.stdout and server.removeprefix("https://") in text.stdout


def test_drift_reads_and_writes_nothing_but_the_metrics_file(cluster, tmp_path):
    workspace = tmp_path / "never-created"
    secret, lease = api_object(cluster, SECRET), api_object(cluster, LEASE)
    mtimes = tree_mtimes(cluster)
    spec_before = Path(cluster.spec).read_bytes()
    result = careconcile("drift", cluster.spec, "--workspace", str(workspace), "--metrics-file",
                         str(tmp_path / "m.prom"), workspace=workspace, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not workspace.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.prom"]
    assert tree_mtimes(cluster) == mtimes
    assert Path(cluster.spec).read_bytes() == spec_before
    after_secret, after_lease = api_object(cluster, SECRET), api_object(cluster, LEASE)
    assert (secret or {}).get("metadata", {}).get("resourceVersion") == \
        (after_secret or {}).get("metadata", {}).get("resourceVersion")
    assert lease is None and after_lease is None


# --- a sandbox of this module: two apiservers, a rotation, a webhook ----------------------


@pytest.fixture(scope="module")
def ha(start_sandbox):
    """Stopped when this module is done rather than at the end of the session."""
    info = start_sandbox("driftha", control_planes=2, workers=1)
    yield info
    paths = SandboxPaths.named(info.name)
    if paths.directory.exists():
        sandbox.down(paths)


def test_apiservers_that_present_different_issuers_disagree(ha, tmp_path):
    second = node_index(ha, "control-plane", 1)
    crt = node_file(ha, second, APISERVER + ".crt")
    key = node_file(ha, second, APISERVER + ".key")
    server = next(s for s in ha.apiservers if s == _server_of(ha, second))
    original = probes.presented_certificate(server)
    assert pki.fingerprint(original) == pki.fingerprint(pki.load_certificates(crt.read_bytes(), source="crt")[0])
    bogus = pki.reissue(original, foreign_ca(), key=ECDSA, validity=dt.timedelta(days=365),
                        now=dt.datetime.now(dt.timezone.utc))
    try:
        with replaced((key, bogus.key_pem), (crt, bogus.cert_pem)):
            # The apiserver reloads its serving pair from disk without a restart.
            wait_until("the apiserver presents the foreign certificate",
                       lambda: probes.presented_certificate(server) == bogus.cert, timeout=90, interval=0.5)
            report = drift(Path(ha.spec), tmp_path=tmp_path, expect=2)
    finally:
        wait_until("the apiserver presents its own certificate again",
                   lambda: probes.presented_certificate(server) == original, timeout=90, interval=0.5)
    name = ha.nodes[second].name
    assert findings(report) == [("apiservers-disagree", "clusterCA"), ("leaf-wrong-issuer", f"apiserver/{name}"),
                                ("leaf-wrong-issuer", node_id(ha, second, APISERVER))]
    disagree = next(f for f in report["clusters"][0]["findings"] if f["kind"] == "apiservers-disagree")
    assert server in disagree["message"] and "CA of record" in disagree["message"]
    check_findings_metric(read_metrics(tmp_path / "drift.prom"), report)
    assert drift(Path(ha.spec), tmp_path=tmp_path, expect=0)["clusters"][0]["findings"] == []


def _server_of(info, index: int) -> str:
    manifest = node_file(info, index, f"{kubeadm.MANIFESTS_DIR}/kube-apiserver.yaml").read_text()
    port = next(line.split("=", 1)[1].strip().strip('"') for line in manifest.splitlines()
                if "--secure-port=" in line)
    return f"https://127.0.0.1:{port}"


def _webhook(name: str, ca_pem: bytes) -> dict:
    """Calls a service that does not exist, for an API group nobody serves: never called."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "widgets.drift.careconcile.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"service": {"namespace": "default", "name": "no-such-service", "path": "/validate"},
                             "caBundle": base64.b64encode(ca_pem).decode()},
            "rules": [{"apiGroups": ["drift.careconcile.test"], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["widgets"]}],
        }],
    }


@pytest.fixture(scope="module")
def held_at_phase_2(ha, tmp_path_factory):
    """A rotation of ``ha``'s cluster CA held after phase 2 (both CAs trusted, nothing
    reissued yet): its spec, its workspace and the CA it started from."""
    directory = tmp_path_factory.mktemp("held")
    spec = spec_copy(ha, directory, "rotate", rotation=1)
    workspace = directory / "ws"
    old = record_ca(ha)
    half = careconcile("apply", str(spec), "--auto-approve", "--until", "trust-both", workspace=workspace)
    assert half.returncode == 0, half.stdout[-3000:] + half.stderr
    return spec, workspace, old


def private_key_holders(client: KubeconfigClient) -> list[str]:
    """The API path of every Secret and ConfigMap of the cluster that holds a private key."""
    holders = []
    for kind, plural in (("Secret", "secrets"), ("ConfigMap", "configmaps")):
        for obj in client.list(f"/api/v1/{plural}"):
            values = [base64.b64decode(value) for value in (obj.get("data") or {}).values()] if kind == "Secret" \
                else [value.encode() for value in (obj.get("data") or {}).values()]
            values += [base64.b64decode(value) for value in (obj.get("binaryData") or {}).values()]
            if any(b"PRIVATE KEY" in value for value in values):
                holders.append(f"/api/v1/namespaces/{obj['metadata']['namespace']}/{plural}/{obj['metadata']['name']}")
    return holders


def test_the_drift_service_account_reads_no_ca_key_during_a_rotation_held_at_phase_2(ha, held_at_phase_2, tmp_path,
                                                                                    monkeypatch):
    """The drift CronJob's ServiceAccount, with the RBAC of the recipe, while a rotation is
    held at phase 2: drift, run as it, still reports the rotation and its phase; each
    Secret and ConfigMap of the cluster that holds a private key answers it 403."""
    spec, _, _ = held_at_phase_2
    with KubeconfigClient(Path(ha.kubeconfig)) as admin, \
            drift_account.service_account(admin, ha.apiservers[0], tmp_path / "serviceaccount") as environment:
        in_cluster = drift_account.in_cluster_spec(spec, tmp_path / "in-cluster.yaml")
        result = careconcile("drift", str(in_cluster), "--format", "json", "--metrics-file",
                             str(tmp_path / "drift.prom"), workspace=tmp_path / "ws", env=environment, timeout=120)
        assert result.returncode == 2, result.stdout[-4000:] + result.stderr
        report = json.loads(result.stdout)
        assert findings(report)[0] == ("rotation-half-done", "clusterCA")
        assert "after phase 2 of 5" in report["clusters"][0]["findings"][0]["message"]

        holders = private_key_holders(admin)
        assert KEYS_SECRET in holders and SECRET not in holders, holders
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        with InClusterClient() as account:
            for path in holders:
                with pytest.raises(APIForbiddenError):
                    account.get(path)
            public = account.get(SECRET)["data"]  # what it reads: the phase, no key
        assert json.loads(base64.b64decode(public["clusterCA.json"]))["verifiedPhase"] == 2
        assert not any(b"PRIVATE KEY" in base64.b64decode(value) for value in public.values())


def to_the_store_layout_before_the_split(info) -> None:
    """The state store as careconcile before the split kept it: the keys beside their
    certificates in careconcile-state (``clusterCA.target.key``, ``.previous.key``), no
    careconcile-keys."""
    with KubeconfigClient(Path(info.kubeconfig)) as client:
        state, keys = client.get(SECRET), client.get(KEYS_SECRET)["data"]
        data = dict(state["data"])
        record = json.loads(base64.b64decode(data["clusterCA.json"]))
        del record["keysStored"]
        data["clusterCA.json"] = base64.b64encode(json.dumps(record).encode()).decode()
        for role in ("target", "previous"):
            cert = pki.load_certificates(base64.b64decode(data[f"clusterCA.{role}.crt"]), source=role)[0]
            data[f"clusterCA.{role}.key"] = keys["clusterCA." + pki.fingerprint(cert).removeprefix("sha256:") + ".key"]
        client.replace(SECRET, {**state, "data": data})
        client.delete(KEYS_SECRET)


def test_a_half_done_rotation_of_an_earlier_careconcile_then_a_stale_webhook_ca_bundle(ha, held_at_phase_2, tmp_path):
    """The rotation held at phase 2 is read and resumed from the store layout of a
    careconcile from before the split (keys in careconcile-state), and split on resuming."""
    spec, workspace, old = held_at_phase_2
    to_the_store_layout_before_the_split(ha)
    report = drift(spec, tmp_path=tmp_path, expect=2)
    # Held before phase 3, the add-ons' pods still trust only the old CA: apply restarts them next.
    assert findings(report)[0] == ("rotation-half-done", "clusterCA")
    pending = findings(report)[1:]
    assert ("workload-restart-pending", "deployment/kube-system/coredns") in pending
    assert {kind for kind, _ in pending} == {"workload-restart-pending"}
    finding = report["clusters"][0]["findings"][0]
    assert "after phase 2 of 5" in finding["message"]
    assert "careconcile apply SPEC" in finding["remedy"] and "careconcile rollback SPEC" in finding["remedy"]
    check_findings_metric(read_metrics(tmp_path / "drift.prom"), report)

    done = careconcile("apply", str(spec), "--auto-approve", workspace=workspace)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert list(api_object(ha, SECRET)["data"]) == ["clusterCA.json"]  # split, then finalized: no key left
    assert not api_object(ha, KEYS_SECRET).get("data")
    new = record_ca(ha)
    assert pki.fingerprint(new.cert) != pki.fingerprint(old.cert)
    report = drift(spec, tmp_path=tmp_path, expect=0)
    assert report["clusters"][0]["authorities"][0]["fingerprint"] == pki.fingerprint(new.cert)

    # Read-only, with a state store that exists now.
    secret = api_object(ha, SECRET)
    assert secret is not None and pki.fingerprint(old.cert) in \
        json.loads(base64.b64decode(secret["data"]["clusterCA.json"]))["retired"]
    mtimes = tree_mtimes(ha)
    drift(spec, tmp_path=tmp_path, expect=0)
    assert api_object(ha, SECRET)["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"]
    assert api_object(ha, LEASE) is None
    assert tree_mtimes(ha) == mtimes

    # A webhook installed with the CA from before the rotation.
    with KubeconfigClient(Path(ha.kubeconfig)) as client:
        client.create(WEBHOOKS, _webhook("drift-stale", old.cert_pem))
    site = "validatingwebhookconfiguration/drift-stale/webhooks/widgets.drift.careconcile.test"
    report = drift(spec, tmp_path=tmp_path, expect=2)
    assert findings(report) == [("ca-bundle-stale", site)]
    finding = report["clusters"][0]["findings"][0]
    assert pki.fingerprint(old.cert)[:19] in finding["message"] and "careconcile plan SPEC" in finding["remedy"]
    check_findings_metric(read_metrics(tmp_path / "drift.prom"), report)

    plan = careconcile("plan", str(spec), "--format", "json", workspace=workspace)
    assert plan.returncode == 0, plan.stderr
    actions = [a for c in json.loads(plan.stdout)["clusters"] for a in c["actions"]]
    assert [(a["kind"], a["target"]) for a in actions if a["kind"] == "update-bundle"] == [("update-bundle", site)]
    repaired = careconcile("apply", str(spec), "--auto-approve", workspace=workspace)
    assert repaired.returncode == 0, repaired.stdout[-3000:] + repaired.stderr
    with KubeconfigClient(Path(ha.kubeconfig)) as client:
        hook = client.get(f"{WEBHOOKS}/drift-stale")["webhooks"][0]
    bundle = pki.load_certificates(base64.b64decode(hook["clientConfig"]["caBundle"]), source="caBundle")
    assert [pki.fingerprint(c) for c in bundle] == [pki.fingerprint(new.cert)]
    assert drift(spec, tmp_path=tmp_path, expect=0)["clusters"][0]["findings"] == []
