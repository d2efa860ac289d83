"""`sandbox up --extension-apiserver`: k8s.io/sample-apiserver behind the real aggregation
layer, on a sandbox of its own ("ext", 1 control plane, no workers)."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
import uuid
from pathlib import Path

import pytest

from reconciler import sandbox
from reconciler.core import extension_apiserver as extension
from reconciler.core import kubeadm, pki
from reconciler.core.pki import KeyPair
from reconciler.sandbox import _api, supervisor
from reconciler.sandbox._paths import SandboxPaths

from .helpers import (
    client_cert, is_listening, listening_ports, node_file, require_extension_apiserver, sandbox_processes,
    supervisor_state, with_client_certificate,
)

pytestmark = pytest.mark.integration

NAME = "ext"
FLUNDER = {"apiVersion": f"{extension.GROUP}/{extension.VERSION}", "kind": "Flunder", "spec": {}}


@pytest.fixture(scope="module")
def ext(start_sandbox):
    require_extension_apiserver()
    return start_sandbox(NAME, control_planes=1, workers=0, extension_apiserver=True)


@pytest.fixture
def admin(ext):
    with _api.Client(Path(ext.kubeconfig)) as client:
        yield client


def _pids() -> dict[str, int]:
    return {c["component"]: c["pid"] for c in supervisor_state(NAME)["components"].values()}


def _https(port: int, ca_pem: bytes, path: str, *, client: KeyPair | None = None, headers: dict | None = None,
           method: str = "GET") -> tuple[int, dict]:
    """One request straight to 127.0.0.1:port (its serving certificate names the address),
    optionally with a client certificate."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    if client is not None:
        with_client_certificate(context, client)
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def _etcd_keys(url: str, prefix: str, *, context: ssl.SSLContext | None = None) -> list[str]:
    """Keys under ``prefix`` through etcd's v3 JSON gateway."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    cls = http.client.HTTPSConnection if context is not None else http.client.HTTPConnection
    connection = cls(host, int(port), timeout=10, **({"context": context} if context is not None else {}))
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = {"key": base64.b64encode(prefix.encode()).decode(), "range_end": base64.b64encode(end.encode()).decode(),
            "keys_only": True}
    try:
        connection.request("POST", "/v3/kv/range", body=json.dumps(body))
        response = connection.getresponse()
        assert response.status == 200
        kvs = json.loads(response.read()).get("kvs") or []
    finally:
        connection.close()
    return [base64.b64decode(kv["key"]).decode() for kv in kvs]


def test_the_apiservice_is_available_through_an_external_name_service_on_loopback(ext, admin):
    info = ext.extension_apiserver
    assert info["apiservice"] == "v1alpha1.wardle.example.com"
    apiservice = admin.call("get", "GET", f"/apis/apiregistration.k8s.io/v1/apiservices/{info['apiservice']}")
    assert extension.available(apiservice)
    assert base64.b64decode(apiservice["spec"]["caBundle"]) == node_file(ext, 0, extension.SERVING_CA_CERT).read_bytes()
    service = admin.call("get", "GET", "/api/v1/namespaces/kube-system/services/extension-apiserver")
    assert service["spec"]["type"] == "ExternalName" and service["spec"]["externalName"] == "127.0.0.1"
    # Its own processes: sample-apiserver on the APIService's port, an etcd of its own.
    pids = _pids()
    assert info["port"] in listening_ports(pids["extension-apiserver"])
    assert int(info["etcd"].rsplit(":", 1)[1]) in listening_ports(pids["extension-apiserver-etcd"])
    assert pids["extension-apiserver-etcd"] != pids["etcd"]
    report = sandbox.status(SandboxPaths.named(NAME))
    assert report["healthy"], report["problems"]
    assert report["extension_apiserver"] == {"apiservice": info["apiservice"], "available": True}
    assert {"extension-apiserver", "extension-apiserver-etcd"} <= {
        c.split("/", 1)[1] for c, v in report["components"].items() if v["status"] == "running"}


def test_a_flunder_created_through_the_aggregator_is_stored_in_the_extension_apiservers_etcd(ext, admin):
    name = f"f-{uuid.uuid4().hex[:8]}"
    path = extension.flunders_path("default")
    created = admin.call("create", "POST", path, FLUNDER | {"metadata": {"name": name}})
    got = admin.call("get", "GET", f"{path}/{name}")
    assert got["kind"] == "Flunder" and got["metadata"]["uid"] == created["metadata"]["uid"]
    assert name in [item["metadata"]["name"] for item in admin.call("list", "GET", path)["items"]]
    # sample-apiserver's --etcd-prefix (/registry/wardle.example.com), then group/resource/namespace/name.
    key = f"/registry/wardle.example.com/wardle.example.com/flunders/default/{name}"
    # In its own etcd (plain HTTP), not in the cluster's (mutual TLS with the etcd CA).
    assert _etcd_keys(ext.extension_apiserver["etcd"], key) == [key]
    cluster_etcd = ssl.create_default_context(cafile=str(node_file(ext, 0, f"{kubeadm.PKI_DIR}/etcd/ca.crt")))
    cluster_etcd.load_cert_chain(node_file(ext, 0, f"{kubeadm.PKI_DIR}/etcd/healthcheck-client.crt"),
                                 node_file(ext, 0, f"{kubeadm.PKI_DIR}/etcd/healthcheck-client.key"))
    assert _etcd_keys(_cluster_etcd_url(ext), "/registry/wardle.example.com/", context=cluster_etcd) == []
    assert _etcd_keys(_cluster_etcd_url(ext), "/registry/namespaces/default", context=cluster_etcd) != []


def _cluster_etcd_url(ext) -> str:
    manifest = node_file(ext, 0, f"{kubeadm.MANIFESTS_DIR}/etcd.yaml").read_text()
    return next(line.split("=", 1)[1] for line in manifest.split()
                if line.startswith("--listen-client-urls="))


def test_the_extension_apiserver_trusts_the_clusters_front_proxy_ca_from_the_configmap(ext):
    """Straight to its port: the aggregator's headers count only with a client certificate
    of the front-proxy CA it read from extension-apiserver-authentication."""
    port, serving_ca = ext.extension_apiserver["port"], node_file(ext, 0, extension.SERVING_CA_CERT).read_bytes()
    front_proxy = KeyPair(
        pki.load_certificates(node_file(ext, 0, f"{kubeadm.PKI_DIR}/front-proxy-ca.crt").read_bytes(), source="ca")[0],
        pki.load_private_key(node_file(ext, 0, f"{kubeadm.PKI_DIR}/front-proxy-ca.key").read_bytes(), source="key"),
    )
    impostor = pki.new_ca("front-proxy-ca", now=front_proxy.cert.not_valid_before_utc, key=pki.KeySpec("ECDSA", 256))
    headers = {"X-Remote-User": "someone", "X-Remote-Group": "system:masters"}
    path = extension.flunders_path("default")
    status, body = _https(port, serving_ca, path, client=client_cert(front_proxy, "front-proxy-client"),
                          headers=headers)
    assert status == 200 and body["kind"] == "FlunderList"
    # The same name from another CA, or no certificate at all: the headers are not believed.
    status, _ = _https(port, serving_ca, path, client=client_cert(impostor, "front-proxy-client"), headers=headers)
    assert status == 401
    status, _ = _https(port, serving_ca, path, headers=headers)
    assert status in (401, 403)


def test_down_leaves_no_process_or_port(ext):
    paths = SandboxPaths.named(NAME)
    pids = _pids()
    ports = set().union(*(listening_ports(pid) for pid in pids.values()))
    assert {ext.extension_apiserver["port"], int(ext.extension_apiserver["etcd"].rsplit(":", 1)[1])} <= ports
    started = time.monotonic()
    sandbox.down(paths)
    # Stopped after the controller-manager, whose watches through the aggregator would hold
    # sample-apiserver's shutdown until the supervisor's SIGKILL (15 s).
    assert time.monotonic() - started < supervisor.STOP_GRACE_SECONDS - 3
    assert sandbox_processes(paths.directory) == []
    assert sorted(p for p in ports if is_listening(p)) == []
    assert not paths.directory.exists()
