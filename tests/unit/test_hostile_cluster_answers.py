"""Answers from a cluster that are malformed or hostile, fed to the readiness checks of
component restarts and to the front-proxy check of the aggregated apiservers: each becomes
a problem line (the phase waits, then fails naming it) or a named error, never a traceback,
and never a restart taken for done on a start time that is not a time (issue 13, and what
issue 12 left)."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import tempfile
import threading
import types

import pytest

from reconciler.core import aggregated, pki
from reconciler.core.authorities import CLUSTER_CA, ETCD_CA
from reconciler.core.observed import ObservedComponent
from reconciler.errors import ClusterUnreachableError
from reconciler.shell.components import ComponentRestarts, process_start
from reconciler.shell.kube import KubeClient
from reconciler.shell.verification import Verifier

from .test_kube_client import TARGET, FakeTransport

NOW = dt.datetime.now(dt.timezone.utc)
BEFORE = 1_700_000_000.0
ETCD = next(c for c in ETCD_CA.components if c.readiness == "etcd-member")


def _client(*answers) -> KubeClient:
    return KubeClient(TARGET, transport=FakeTransport(*answers))


# --- etcd's /metrics and member list -------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("process_start_time_seconds 1.7000001e+09\n", 1_700_000_100.0),
    ("# HELP x\nother 1\n", None),
    ("process_start_time_seconds NaN\n", ValueError),
    ("process_start_time_seconds +Inf\n", ValueError),
    ("process_start_time_seconds -1e300\n", ValueError),
    ("process_start_time_seconds 1e300\n", ValueError),
    ("process_start_time_seconds 0\n", ValueError),
    ("process_start_time_seconds s3cr3t\n", ValueError),
])
def test_a_start_time_that_is_not_a_time_is_an_error_that_quotes_nothing(text, expected):
    if expected is ValueError:
        with pytest.raises(ValueError) as error:
            process_start(text)
        assert str(error.value) == "its /metrics has a process_start_time_seconds that is not a time"
    else:
        assert process_start(text) == expected


def _etcd_problem(monkeypatch, *answers, before: float | None = BEFORE) -> str | None:
    restarts = ComponentRestarts(types.SimpleNamespace(nodes={}))
    monkeypatch.setattr(restarts, "_client", lambda component, node: _client(*answers))
    return restarts._instance_problem(ETCD, "cp1", before=before)


HEALTHY = (200, {"health": "true"})


@pytest.mark.parametrize(("answers", "problem"), [
    # NaN compares false with everything: the old check took such a member for restarted
    ([(200, b"process_start_time_seconds NaN\n"), HEALTHY, (200, {"members": []})],
     "its /metrics has a process_start_time_seconds that is not a time"),
    ([(200, b"process_start_time_seconds -1e300\n")],
     "its /metrics has a process_start_time_seconds that is not a time"),
    ([(200, b"process_start_time_seconds 1.8e9\n"), HEALTHY, (200, {"members": 5})],
     "its /v3/cluster/member/list answer holds no list of members"),
    ([(200, b"process_start_time_seconds 1.8e9\n"), HEALTHY, (200, {"members": "s3cr3t"})],
     "its /v3/cluster/member/list answer holds no list of members"),
    ([(200, b"process_start_time_seconds 1.8e9\n"), HEALTHY, (200, b"[1, 2]")],
     "POST /v3/cluster/member/list on kubeconfig /k context admin@c (https://127.0.0.1:6443): 200 answer is "
     "not a JSON object: [1, 2]"),
    ([(200, b"process_start_time_seconds 1.8e9\n"), (200, b"\xff\xfe")],
     "GET /health on kubeconfig /k context admin@c (https://127.0.0.1:6443): 200 answer is not JSON: \ufffd\ufffd"),
    ([(200, b"process_start_time_seconds 1.8e9\n"), (200, {"health": ["true"]})],
     "its /health does not answer true (no leader)"),
])
def test_malformed_etcd_answers_are_problems_of_the_member(monkeypatch, answers, problem):
    assert _etcd_problem(monkeypatch, *answers) == problem


def test_a_member_linked_to_all_its_peers_is_ready(monkeypatch):
    metrics = (b"process_start_time_seconds 1.8e9\n"
               b'etcd_network_active_peers{Local="a",Remote="b"} 1\netcd_network_active_peers{Local="a",Remote="c"} 1\n')
    assert _etcd_problem(monkeypatch, (200, metrics), HEALTHY, (200, {"members": [{}, {}, {}]})) is None
    assert _etcd_problem(monkeypatch, (200, b"process_start_time_seconds 1.6e9\n")).startswith(
        "still the process started")


FRESH = (NOW + dt.timedelta(seconds=1)).isoformat()


@pytest.mark.parametrize(("lease", "problem"), [
    ({"metadata": {"name": "cp1"}, "spec": "s3cr3t"},
     f"cp1:kubelet: the node's Lease has not been renewed since the restart at {NOW:%H:%M:%S}"),
    ({"metadata": {"name": "cp1"}, "spec": {"leaseDurationSeconds": "abc", "renewTime": FRESH}}, None),
    ({"metadata": {"name": "cp1"}, "spec": {"leaseDurationSeconds": 10 ** 30, "renewTime": FRESH}}, None),
    ({"metadata": 5, "spec": []},
     "cp1:kubelet: node cp1 has no Lease in kube-node-lease; its kubelet has not registered the node"),
], ids=["spec-not-an-object", "duration-not-a-number", "duration-out-of-range", "metadata-not-an-object"])
def test_malformed_node_leases_are_read_as_untrusted(lease, problem):
    restarts = ComponentRestarts(types.SimpleNamespace(client=_client((200, {"items": [lease]}))))
    kubelet = ObservedComponent(id="cp1:kubelet", node="cp1", name="kubelet", inputs=(), inputs_digest="d",
                                restarted_for="d", restarted_at=NOW, restart="command")
    assert restarts.services_not_ready([kubelet]) == ([problem] if problem else [])


@pytest.mark.parametrize("duration", ["abc", 10 ** 30, -1, None])
def test_a_leader_lease_with_a_duration_that_is_not_one_is_not_taken(duration):
    client = _client((200, {"spec": {"holderIdentity": "x", "acquireTime": "2000-01-01T00:00:00Z",
                                     "renewTime": "2000-01-01T00:00:00Z", "leaseDurationSeconds": duration}}))
    restarts = ComponentRestarts(types.SimpleNamespace(client=client, layout=CLUSTER_CA))
    scheduler = ObservedComponent(id="cp1:kube-scheduler", node="cp1", name="kube-scheduler", inputs=(),
                                  inputs_digest="d", restarted_for="d", restarted_at=NOW)
    assert restarts.not_ready((scheduler,)) == [
        f"kube-scheduler has not taken its leader lease since its restart at {NOW:%H:%M:%S}"]


# --- lists --------------------------------------------------------------------------------

@pytest.mark.parametrize(("pages", "message"), [
    ([{"items": "s3cr3t"}], "the answer is not a list of objects"),
    ([{"items": [1, 2]}], "the answer is not a list of objects"),
    ([{"items": [], "metadata": "x"}], "the answer is not a list of objects"),
    ([{"items": [{}], "metadata": {"continue": "a"}}, {"items": [{}], "metadata": {"continue": "a"}}],
     "the answer's continue token is not text, or came before"),
    ([{"items": [], "metadata": {"continue": 5}}], "the answer's continue token is not text, or came before"),
])
def test_a_list_answer_that_is_not_one_is_a_named_error(pages, message):
    client = _client(*[(200, page) for page in pages])
    with pytest.raises(ClusterUnreachableError) as error:
        client.list("/api/v1/nodes")
    assert str(error.value) == f"GET /api/v1/nodes on {TARGET.describe()}: {message}"


# --- APIServices and their Services --------------------------------------------------------

def _apiservice(**spec) -> dict:
    base = {"group": "wardle.example.com", "version": "v1alpha1", "caBundle": "Q0E=",
            "service": {"name": "api", "namespace": "wardle", "port": 443}}
    base.update(spec)
    return {"metadata": {"name": "v1alpha1.wardle.example.com"}, "spec": base}


@pytest.mark.parametrize(("item", "message"), [
    ("s3cr3t", "the APIService is not an object"),
    ({"spec": "s3cr3t"}, "spec is not an object"),
    (_apiservice(service="s3cr3t"), "spec.service is not an object"),
    (_apiservice(service={"name": "api/../../x", "namespace": "wardle"}), "spec.service.name is not a DNS label"),
    (_apiservice(service={"name": "api", "namespace": 5}), "spec.service.namespace is not a DNS label"),
    (_apiservice(service={"name": "api", "namespace": "wardle", "port": "443"}),
     "spec.service.port is not a port number (1-65535)"),
    (_apiservice(service={"name": "api", "namespace": "wardle", "port": 10 ** 30}),
     "spec.service.port is not a port number (1-65535)"),
    (_apiservice(service={"name": "api", "namespace": "wardle", "port": True}),
     "spec.service.port is not a port number (1-65535)"),
    (_apiservice(group="x\r\nX-Remote-Group: system:masters"), "spec.group is not a DNS subdomain"),
    (_apiservice(version=["v1"]), "spec.version is not a DNS label"),
    (_apiservice(caBundle=5), "spec.caBundle is not base64 text"),
    (_apiservice(caBundle="s3cr3t!!"), "spec.caBundle is not base64 text"),
])
def test_a_malformed_apiservice_is_an_error_naming_the_field(item, message):
    with pytest.raises(ValueError) as error:
        aggregated.endpoint(item)
    assert str(error.value) == message


@pytest.mark.parametrize(("service", "message"), [
    ({"spec": "x"}, "the Service's spec is not an object"),
    ({"spec": {"type": "ExternalName", "externalName": 5}}, "the Service's spec.externalName is not a host name or "
                                                           "IP address"),
    ({"spec": {"clusterIP": "10.0.0.1\r\nHost: s3cr3t"}}, "the Service's spec.clusterIP is not a host name or "
                                                          "IP address"),
    ({"spec": {"type": "ExternalName", "externalName": "-oProxyCommand=x"}},
     "the Service's spec.externalName is not a host name or IP address"),
])
def test_a_malformed_service_is_an_error_naming_the_field(service, message):
    with pytest.raises(ValueError) as error:
        aggregated.host_of(service)
    assert str(error.value) == message


def test_services_served_by_kube_apiserver_or_headless_are_not_asked():
    assert aggregated.endpoint({"metadata": {"name": "v1."}, "spec": {"version": "v1"}}) is None
    assert aggregated.endpoint(_apiservice(caBundle="")) is None
    assert aggregated.host_of({"spec": {"clusterIP": "None"}}) is None
    assert aggregated.name_of({"metadata": {"name": "\x1b[2J"}}) == "(unnamed)"


class _Server:
    """A TLS server on 127.0.0.1 that answers every request with ``status``."""

    def __init__(self, ca: pki.KeyPair, names: tuple[str, ...], status: int) -> None:
        leaf = pki.issue_leaf(ca, pki.LeafRequest("api", server=True, dns_names=names), now=NOW)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.NamedTemporaryFile() as cert, tempfile.NamedTemporaryFile() as key:
            cert.write(leaf.cert_pem)
            key.write(leaf.key_pem)
            cert.flush()
            key.flush()
            self.context.load_cert_chain(cert.name, key.name)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.status = status
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(4096)
                    tls.sendall(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def cas():
    return pki.new_ca("serving-ca", now=NOW), pki.new_ca("other-ca", now=NOW), pki.new_ca("front-proxy-ca", now=NOW)


def _problems_with(server_port: int, ca_bundle: bytes, front_proxy: pki.KeyPair, *items) -> list[str]:
    import base64

    answers = [(200, {"items": [_apiservice(caBundle=base64.b64encode(ca_bundle).decode(),
                                            service={"name": "api", "namespace": "wardle", "port": server_port}),
                                *items]}),
               (200, {"spec": {"type": "ExternalName", "externalName": "127.0.0.1"}})]
    verifier = Verifier.__new__(Verifier)
    verifier.access = types.SimpleNamespace(client=_client(*answers))
    return verifier._aggregated_not_accepting(front_proxy)


@pytest.mark.timeout(60)
def test_an_aggregated_apiserver_whose_certificate_the_cabundle_does_not_verify_is_reported(cas):
    serving, other, front_proxy = cas
    server = _Server(serving, ("api.wardle.svc",), 200)
    try:
        problems = _problems_with(server.port, other.cert_pem, front_proxy)
        assert len(problems) == 1
        assert problems[0].startswith(
            f"APIService v1alpha1.wardle.example.com: aggregated apiserver api.wardle.svc at 127.0.0.1:{server.port}: "
            "its serving certificate does not verify against the caBundle for api.wardle.svc (")
        assert _problems_with(server.port, serving.cert_pem, front_proxy) == []  # the right caBundle: asked, 200
    finally:
        server.close()


@pytest.mark.timeout(60)
def test_an_aggregated_apiserver_for_another_name_or_answering_401_is_reported(cas):
    serving, _, front_proxy = cas
    wrong_name = _Server(serving, ("other.wardle.svc",), 200)
    refusing = _Server(serving, ("api.wardle.svc",), 401)
    try:
        assert "does not verify against the caBundle for api.wardle.svc" in \
            _problems_with(wrong_name.port, serving.cert_pem, front_proxy)[0]
        assert _problems_with(refusing.port, serving.cert_pem, front_proxy) == [
            "aggregated apiserver v1alpha1.wardle.example.com does not yet accept front-proxy certificates from the "
            "new CA"]
        problems = _problems_with(refusing.port, b"s3cr3t not a certificate", front_proxy)
        assert problems == ["APIService v1alpha1.wardle.example.com: its caBundle holds no usable PEM certificate"]
    finally:
        wrong_name.close()
        refusing.close()


def test_malformed_apiservices_are_problems_naming_them_and_the_others_are_still_asked(cas):
    _, _, front_proxy = cas
    verifier = Verifier.__new__(Verifier)
    items = [{"metadata": {"name": "v1.bad"}, "spec": {"service": {"name": "x", "namespace": "y", "port": "s3cr3t"},
                                                       "caBundle": "Q0E=", "group": "g", "version": "v1"}},
             {"metadata": {"name": "v1.odd"}, "spec": []},
             {"metadata": {"name": "v1.headless"}, "spec": {"service": {"name": "h", "namespace": "y"},
                                                            "caBundle": "Q0E=", "group": "g", "version": "v1"}}]
    verifier.access = types.SimpleNamespace(client=_client((200, {"items": items}),
                                                           (200, {"spec": {"clusterIP": "None"}})))
    assert verifier._aggregated_not_accepting(front_proxy) == [
        "APIService v1.bad: spec.service.port is not a port number (1-65535)",
        "APIService v1.odd: spec is not an object",
    ]
