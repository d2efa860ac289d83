"""KubeClient without a cluster: a fake transport for status mapping, messages and JSON,
and a tiny local TLS server for the kept-alive connection's reconnect rule."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import socket
import ssl
import tempfile
import threading
from pathlib import Path

import pytest

from reconciler.core import pki
from reconciler.errors import (APIConflictError, APIError, APIForbiddenError, APINotFoundError,
                               APIUnauthorizedError, ClusterUnreachableError, PKIError)
from reconciler.shell.kube import HTTPSTransport, KubeClient, KubeTarget, load_kubeconfig, tls_context
from reconciler.shell.lock import LockInfo, lease_body, stale_reason

NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.timezone.utc)
TARGET = KubeTarget(name="kubeconfig /k context admin@c", server="https://127.0.0.1:6443",
                    ca_pem=b"CA", cert_pem=b"CERT", key_pem=b"-----BEGIN EC PRIVATE KEY-----secret",
                    token="s3cret-token")


class FakeTransport:
    """Answers every request with the next canned (status, body); records what was sent."""

    def __init__(self, *answers: tuple[int, object]) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, str, dict[str, str], bytes | None]] = []
        self.closed = False

    def request(self, method, url_path, headers, body):
        self.sent.append((method, url_path, headers, body))
        status, document = self.answers.pop(0)
        if isinstance(document, BaseException):
            raise document
        data = document if isinstance(document, bytes) else json.dumps(document).encode()
        return status, {"content-type": "application/json"}, data

    def close(self):
        self.closed = True


def status_object(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reason, "code": code}


@pytest.fixture(scope="module")
def ca():
    return pki.new_ca("test-ca", now=NOW)


@pytest.fixture(scope="module")
def client_pair(ca):
    return pki.issue_leaf(ca, pki.LeafRequest("x", client=True), now=NOW)


# --- status mapping and messages ----------------------------------------------------------

@pytest.mark.parametrize("status, reason, error_type", [
    (401, "Unauthorized", APIUnauthorizedError),
    (403, "Forbidden", APIForbiddenError),
    (404, "NotFound", APINotFoundError),
    (409, "AlreadyExists", APIConflictError),
    (422, "Invalid", APIError),
    (501, "NotImplemented", APIError),  # a GET that got 500 is sent again (backoff tests)
])
def test_error_statuses_map_to_typed_errors_naming_request_and_target(status, reason, error_type):
    path = "/api/v1/namespaces/x/configmaps/y"
    client = KubeClient(TARGET, transport=FakeTransport((status, status_object(status, reason, "the why"))))
    with pytest.raises(APIError) as error:
        client.get(path)
    assert type(error.value) is error_type
    assert error.value.status == status and error.value.reason == reason
    assert str(error.value) == (f"GET {path} on kubeconfig /k context admin@c (https://127.0.0.1:6443): "
                                f"{status} {reason}: the why")


def test_an_error_without_a_status_object_falls_back_to_the_http_phrase_and_the_body():
    client = KubeClient(TARGET, transport=FakeTransport((503, b"upstream down\n")))
    with pytest.raises(APIError) as error:
        client.delete("/api/v1/namespaces/x")
    assert error.value.status == 503 and error.value.reason == "ServiceUnavailable"
    assert str(error.value) == ("DELETE /api/v1/namespaces/x on kubeconfig /k context admin@c "
                                "(https://127.0.0.1:6443): 503 ServiceUnavailable: upstream down")


def test_a_transport_failure_is_cluster_unreachable_with_the_cause_chained():
    refused = ConnectionRefusedError(111, "Connection refused")
    client = KubeClient(TARGET, transport=FakeTransport((0, refused)))
    with pytest.raises(ClusterUnreachableError) as error:
        client.get("/version")
    assert "GET /version on kubeconfig /k context admin@c (https://127.0.0.1:6443)" in str(error.value)
    assert "connection refused" in str(error.value)
    assert error.value.__cause__ is refused


def test_a_success_that_is_not_json_is_reported_not_returned():
    client = KubeClient(TARGET, transport=FakeTransport((200, b"<html>proxy</html>")))
    with pytest.raises(ClusterUnreachableError, match=r"GET /api on .*: 200 answer is not JSON: <html>"):
        client.get("/api")


# --- JSON and the verbs -------------------------------------------------------------------

def test_bodies_round_trip_as_json_with_the_right_content_types():
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "y"}, "data": {"ü": "✓"}}
    transport = FakeTransport((201, configmap), (200, configmap), (200, configmap), (200, configmap),
                              (200, {"kind": "Status", "status": "Success"}))
    client = KubeClient(TARGET, transport=transport)
    assert client.create("/api/v1/namespaces/x/configmaps", configmap) == configmap
    assert client.replace("/api/v1/namespaces/x/configmaps/y", configmap) == configmap
    assert client.patch("/api/v1/namespaces/x/configmaps/y", {"data": {"a": None}}) == configmap
    assert client.patch("/api/v1/namespaces/x/configmaps/y", [{"op": "remove", "path": "/data/a"}],
                        merge=False) == configmap
    assert client.delete("/api/v1/namespaces/x/configmaps/y", uid="u-1", resource_version="7") is None

    methods = [(m, h.get("Content-Type")) for m, _, h, _ in transport.sent]
    assert methods == [("POST", "application/json"), ("PUT", "application/json"),
                       ("PATCH", "application/merge-patch+json"), ("PATCH", "application/json-patch+json"),
                       ("DELETE", "application/json")]
    assert json.loads(transport.sent[0][3]) == configmap
    assert json.loads(transport.sent[2][3]) == {"data": {"a": None}}
    assert json.loads(transport.sent[4][3])["preconditions"] == {"uid": "u-1", "resourceVersion": "7"}
    assert all(h["Authorization"] == "Bearer s3cret-token" and h["Accept"] == "application/json"
               for _, _, h, _ in transport.sent)


def test_list_follows_continue_tokens_and_passes_selectors():
    transport = FakeTransport(
        (200, {"kind": "ConfigMapList", "metadata": {"continue": "tok en"}, "items": [{"n": 1}, {"n": 2}]}),
        (200, {"kind": "ConfigMapList", "metadata": {}, "items": [{"n": 3}]}),
    )
    client = KubeClient(TARGET, transport=transport)
    items = client.list("/api/v1/configmaps", label_selector="a=b,c", field_selector="metadata.name=y")
    assert items == [{"n": 1}, {"n": 2}, {"n": 3}]
    first, second = transport.sent[0][1], transport.sent[1][1]
    assert first == "/api/v1/configmaps?limit=500&labelSelector=a%3Db%2Cc&fieldSelector=metadata.name%3Dy"
    assert second.endswith("&continue=tok+en")


def test_an_empty_success_body_is_an_empty_dict_and_close_closes_the_transport():
    transport = FakeTransport((200, b""))
    with KubeClient(TARGET, transport=transport) as client:
        assert client.request("GET", "/x") == {}
    assert transport.closed


# --- credentials never show -----------------------------------------------------------------

def test_no_key_material_or_token_in_repr():
    for text in (repr(TARGET), repr(KubeClient(TARGET, transport=FakeTransport()))):
        assert "secret" not in text and "s3cret" not in text and "CERT" not in text
    assert "https://127.0.0.1:6443" in repr(TARGET) and "admin@c" in repr(TARGET)


def test_load_kubeconfig_resolves_the_context_and_names_file_and_context(tmp_path, ca, client_pair):
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "clusters": [{"name": "c1", "cluster": {"server": "https://127.0.0.1:1",
                                                "certificate-authority-data": b64(ca.cert_pem)}},
                     {"name": "c2", "cluster": {"server": "https://127.0.0.1:2", "certificate-authority": "ca.crt"}},
                     {"name": "bare", "cluster": {"server": "https://127.0.0.1:3"}}],
        "users": [{"name": "u1", "user": {"client-certificate-data": b64(client_pair.cert_pem),
                                          "client-key-data": b64(client_pair.key_pem)}},
                  {"name": "u2", "user": {"token": "tkn"}}],
        "contexts": [{"name": "a", "context": {"cluster": "c1", "user": "u1"}},
                     {"name": "b", "context": {"cluster": "c2", "user": "u2"}},
                     {"name": "nothing-to-trust", "context": {"cluster": "bare", "user": "u2"}}],
    }))
    first = load_kubeconfig(config)
    assert (first.name, first.server) == (f"kubeconfig {config} context a", "https://127.0.0.1:1")
    assert (first.ca_pem, first.cert_pem, first.key_pem, first.token) == (
        ca.cert_pem, client_pair.cert_pem, client_pair.key_pem, None)
    second = load_kubeconfig(config, "b")
    assert (second.server, second.ca_pem, second.cert_pem, second.token) == (
        "https://127.0.0.1:2", ca.cert_pem, None, "tkn")

    with pytest.raises(ClusterUnreachableError, match=rf"kubeconfig {config} context nope: no such context"):
        load_kubeconfig(config, "nope")
    with pytest.raises(PKIError, match=rf"kubeconfig {config} context nothing-to-trust: .*no certificate-authority"):
        load_kubeconfig(config, "nothing-to-trust")
    with pytest.raises(ClusterUnreachableError, match=rf"kubeconfig {tmp_path / 'absent'}: cannot read"):
        load_kubeconfig(tmp_path / "absent", "a")


# --- TLS material stays in memory -------------------------------------------------------------

def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_tls_context_loads_cert_and_key_from_memory_and_leaves_nothing_behind(ca, client_pair):
    temp_before, fds_before = set(os.listdir(tempfile.gettempdir())), _open_fds()
    context = tls_context(ca_pem=ca.cert_pem, cert_pem=client_pair.cert_pem, key_pem=client_pair.key_pem)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test-ca"),),)]
    assert set(os.listdir(tempfile.gettempdir())) == temp_before
    assert _open_fds() == fds_before  # the memfds are closed again


def test_tls_context_without_verification_and_with_bad_material():
    context = tls_context(ca_pem=None, verify=False)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    other = pki.issue_leaf(pki.new_ca("other", now=NOW), pki.LeafRequest("y", client=True), now=NOW)
    mine = pki.issue_leaf(pki.new_ca("mine", now=NOW), pki.LeafRequest("x", client=True), now=NOW)
    fds_before = _open_fds()
    with pytest.raises(PKIError, match="cannot be used together") as error:
        tls_context(ca_pem=None, cert_pem=mine.cert_pem, key_pem=other.key_pem)
    assert b"PRIVATE" not in str(error.value).encode()
    assert _open_fds() == fds_before
    with pytest.raises(PKIError, match="needs its key"):
        tls_context(ca_pem=None, cert_pem=mine.cert_pem)
    with pytest.raises(PKIError, match="no usable PEM"):
        tls_context(ca_pem=b"not a certificate")


# --- the kept-alive connection ------------------------------------------------------------

class DroppingServer:
    """HTTPS on 127.0.0.1 that answers the first request of each connection, keeps the
    connection open, and drops it when a second request arrives on it, as a server does
    whose idle timeout fires just as a request comes in."""

    def __init__(self, ca: pki.KeyPair, scratch: Path) -> None:
        leaf = pki.issue_leaf(ca, pki.LeafRequest("server", server=True, ip_addresses=("127.0.0.1",)), now=NOW)
        (scratch / "s.crt").write_bytes(leaf.cert_pem)
        (scratch / "s.key").write_bytes(leaf.key_pem)  # a throwaway test key
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(scratch / "s.crt", scratch / "s.key")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(raw,), daemon=True).start()

    def _connection(self, raw: socket.socket) -> None:
        with self.context.wrap_socket(raw, server_side=True) as tls, tls.makefile("rb") as reader:
            for served in range(2):
                request_line = reader.readline().decode()
                if not request_line:
                    return
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                reader.read(length)
                self.received.append(request_line.split()[0])
                if served == 1:
                    return  # drop it, unanswered
                body = json.dumps({"served": len(self.received)}).encode()
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def dropping_server(ca, tmp_path):
    server = DroppingServer(ca, tmp_path)
    yield server
    server.close()


def test_a_get_on_a_dropped_keep_alive_connection_is_sent_again_once(ca, dropping_server):
    target = KubeTarget(name="test server", server=f"https://127.0.0.1:{dropping_server.port}", ca_pem=ca.cert_pem)
    with KubeClient(target) as client:
        assert client.get("/a") == {"served": 1}
        assert client.get("/b") == {"served": 3}  # the second connection answered it
    assert dropping_server.received == ["GET", "GET", "GET"]


def test_a_post_that_may_have_reached_the_server_is_never_sent_again(ca, dropping_server):
    target = KubeTarget(name="test server", server=f"https://127.0.0.1:{dropping_server.port}", ca_pem=ca.cert_pem)
    with KubeClient(target) as client:
        client.get("/a")
        with pytest.raises(ClusterUnreachableError, match=r"POST /c on test server \(https://127.0.0.1:\d+\)") as error:
            client.create("/c", {"x": 1})
        assert "may have been carried out" in str(error.value)
        assert isinstance(error.value.__cause__, ConnectionError)
        assert client.get("/d") == {"served": 3}  # and the client recovers with a new connection
    assert dropping_server.received == ["GET", "POST", "GET"]


def test_https_transport_refuses_plain_http():
    with pytest.raises(ClusterUnreachableError, match="https:// servers only"):
        HTTPSTransport("http://127.0.0.1:8080", tls_context(ca_pem=None, verify=False), timeout=1)


# --- the lock's record, without a cluster ----------------------------------------------------

def test_lock_info_round_trips_through_the_lease():
    info = LockInfo.new("apply", 900)
    lease = lease_body(info)
    assert lease["spec"]["holderIdentity"] == info.id and lease["spec"]["leaseDurationSeconds"] == 900
    assert lease["spec"]["renewTime"].endswith("Z") and len(lease["spec"]["renewTime"]) == len("2026-11-28T10:00:00.000000Z")
    assert lease["metadata"]["annotations"]["careconcile.dev/lock-operation"] == "apply"
    assert LockInfo.from_lease(lease) == info
    assert LockInfo.from_lease({"metadata": {}, "spec": {"holderIdentity": "by-hand"}}).holder == "unknown"


def test_a_lock_is_stale_only_when_expired_or_its_local_process_is_gone():
    info = LockInfo.new("apply", 60)
    assert stale_reason(info) is None  # this very process holds it
    assert "ran out" in stale_reason(info, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=61))
    elsewhere = LockInfo(**{**info.__dict__, "host": "elsewhere", "pid": 2**22 + 1})
    assert stale_reason(elsewhere) is None  # a pid on another host says nothing
    here_gone = LockInfo(**{**info.__dict__, "pid": 2**22 + 1})
    assert "is gone" in stale_reason(here_gone)
