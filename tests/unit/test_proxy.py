"""Proxies and the TLS server name without a cluster: NO_PROXY as Go reads it, proxy URLs
and their refusals, a kubeconfig's tls-server-name and proxy-url, and real sockets on
127.0.0.1 for the server name checked and a proxy that refuses the tunnel."""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest

from reconciler.core import kubeconfig, pki
from reconciler.core.proxyenv import uses_proxy
from reconciler.errors import ClusterUnreachableError
from reconciler.shell import proxy
from reconciler.shell.kube import KubeClient, KubeTarget, kubeconfig_target

NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.timezone.utc)


# --- NO_PROXY, as golang.org/x/net/http/httpproxy's useProxy ------------------------------

@pytest.mark.parametrize("no_proxy, host, port, proxied", [
    ("", "api.example.com", 443, True),
    ("", "localhost", 6443, False),           # never through the environment's proxy
    ("", "127.0.0.1", 6443, False),
    ("", "127.8.9.10", 6443, False),          # all of 127.0.0.0/8
    ("", "::1", 6443, False),
    ("", "LocalHost", 443, False),
    ("*", "api.example.com", 443, False),
    ("example.com", "example.com", 443, False),
    ("example.com", "api.example.com", 443, False),  # a domain covers the names under it
    ("example.com", "badexample.com", 443, True),
    (".example.com", "example.com", 443, True),      # a leading dot: only the names under it
    (".example.com", "api.example.com", 443, False),
    ("*.example.com", "example.com", 443, True),
    ("*.example.com", "a.b.example.com", 443, False),
    ("EXAMPLE.com", "api.example.COM", 443, False),
    ("example.com:6443", "api.example.com", 6443, False),
    ("example.com:6443", "api.example.com", 443, True),
    ("10.0.0.0/8", "10.1.2.3", 443, False),
    ("10.0.0.0/8", "11.1.2.3", 443, True),
    ("10.0.0.0/8", "ten.example.com", 443, True),    # a CIDR never matches a name
    ("fd00::/8", "fd12::1", 443, False),
    ("192.168.1.10", "192.168.1.10", 6443, False),
    ("192.168.1.10:6443", "192.168.1.10", 443, True),
    ("[fd00::1]:6443", "fd00::1", 6443, False),
    ("192.168.1.10", "host.example.com", 443, True),
    ("example.com", "93.184.216.34", 443, True),     # a domain never matches an address
    (" foo.com , ,bar.com ", "x.bar.com", 443, False),
    (":443", "api.example.com", 443, True),          # no host part: ignored, as Go ignores it
])
def test_no_proxy_follows_go(no_proxy, host, port, proxied):
    assert uses_proxy(no_proxy, host, port) is proxied


def test_the_environment_proxy_is_https_proxy_then_https_proxy_lower_case_unless_no_proxy():
    server = "https://api.example.com:6443"
    assert proxy.environment_proxy(server, {}) is None
    found = proxy.environment_proxy(server, {"HTTPS_PROXY": "http://proxy.corp:3128", "https_proxy": "http://x:1"})
    assert (found.host, found.port, found.source) == ("proxy.corp", 3128, "the environment variable HTTPS_PROXY")
    found = proxy.environment_proxy(server, {"https_proxy": "proxy.corp:8080"})  # Go: a bare host:port is http://
    assert (found.host, found.port, found.source) == ("proxy.corp", 8080, "the environment variable https_proxy")
    assert proxy.environment_proxy(server, {"HTTPS_PROXY": "http://p:1", "no_proxy": ".example.com"}) is None
    assert proxy.environment_proxy(server, {"HTTP_PROXY": "http://p:1"}) is None  # http:// requests only
    assert proxy.environment_proxy("https://127.0.0.1:6443", {"HTTPS_PROXY": "http://p:1"}) is None
    with pytest.raises(ClusterUnreachableError, match="HTTPS_PROXY: socks5:// proxies are not supported"):
        proxy.environment_proxy(server, {"HTTPS_PROXY": "socks5://p:1080"})


@pytest.mark.parametrize("url, message", [
    ("https://proxy.corp:3128", "https:// proxies are not supported"),
    ("socks5://proxy.corp:1080", "socks5:// proxies are not supported"),
    ("proxy.corp:3128", "must be an http:// URL"),
    ("ftp://proxy.corp", "must be an http:// URL"),
    ("http://", "has no host"),
    ("http://proxy.corp:99999", "malformed host or port"),
])
def test_a_proxy_careconcile_cannot_use_is_refused_by_name(url, message):
    with pytest.raises(ClusterUnreachableError, match=message):
        proxy.parse_proxy(url, "kubeconfig k: proxy-url")


def test_proxy_credentials_become_basic_auth_and_are_never_shown():
    found = proxy.parse_proxy("http://al%40ice:pa%3Ass@proxy.corp", "proxy-url")
    assert (found.host, found.port) == ("proxy.corp", 80)
    assert base64.b64decode(found.authorization.split()[1]) == b"al@ice:pa:ss"
    assert "pa" not in repr(found).replace("proxy", "") and "alice" not in found.describe()
    assert found.describe() == "proxy http://proxy.corp:80 (from proxy-url)"


# --- a kubeconfig's tls-server-name and proxy-url -----------------------------------------

def _kubeconfig(ca_pem: bytes, **cluster: str) -> str:
    document = kubeconfig.build(endpoints=[kubeconfig.Endpoint("c", cluster.pop("server", "https://127.0.0.1:6443"),
                                                               cluster.get("tls-server-name"), cluster.get("proxy-url"))],
                                ca_pem=ca_pem, user="admin", credentials=kubeconfig.ClientCredentials())
    return kubeconfig.dump(document)


def test_a_kubeconfig_gives_its_tls_server_name_and_proxy_url_and_hides_the_password():
    ca = pki.new_ca("ca", now=NOW)
    text = _kubeconfig(ca.cert_pem, **{"tls-server-name": "kubernetes", "proxy-url": "http://u:s3cret@127.0.0.1:3128"})
    target = kubeconfig_target(text, source="kubeconfig k")
    assert (target.tls_server_name, target.proxy_url) == ("kubernetes", "http://u:s3cret@127.0.0.1:3128")
    assert "s3cret" not in repr(target)
    # what careconcile writes anew from it keeps both
    (endpoint,) = kubeconfig.servers(kubeconfig.parse(text, source="k"))
    assert (endpoint.tls_server_name, endpoint.proxy_url) == ("kubernetes", "http://u:s3cret@127.0.0.1:3128")


@pytest.mark.parametrize("fields, message", [
    ({"proxy-url": "socks5://u:s3cret@127.0.0.1:1080"}, r"kubeconfig k context admin@c: cluster 'c': proxy-url: "
                                                        "socks5:// proxies are not supported"),
    ({"proxy-url": "https://127.0.0.1:3128"}, "https:// proxies are not supported"),
    ({"tls-server-name": "kube rnetes"}, "tls-server-name is not a host name"),
])
def test_a_kubeconfig_with_an_unusable_proxy_or_server_name_is_refused_naming_it(fields, message):
    ca = pki.new_ca("ca", now=NOW)
    with pytest.raises(ClusterUnreachableError, match=message) as error:
        kubeconfig_target(_kubeconfig(ca.cert_pem, **fields), source="kubeconfig k")
    assert "s3cret" not in str(error.value)


# --- real sockets on 127.0.0.1 ------------------------------------------------------------

class OneShotTLSServer:
    """HTTPS on 127.0.0.1 with a certificate for the DNS name ``kubernetes`` only (no IP):
    answers each connection's one request with {} and records the SNI it was asked for."""

    def __init__(self, ca: pki.KeyPair, scratch: Path) -> None:
        leaf = pki.issue_leaf(ca, pki.LeafRequest("apiserver", server=True, dns_names=("kubernetes",)), now=NOW)
        (scratch / "s.crt").write_bytes(leaf.cert_pem)
        (scratch / "s.key").write_bytes(leaf.key_pem)  # a throwaway test key
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(scratch / "s.crt", scratch / "s.key")
        self.names: list[str | None] = []
        self.context.sni_callback = lambda sock, name, context: self.names.append(name)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(raw, server_side=True) as tls, tls.makefile("rb") as reader:
                    while reader.readline() not in (b"\r\n", b""):
                        pass
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            except (OSError, ssl.SSLError):
                continue


def test_tls_server_name_is_the_sni_and_the_name_the_certificate_is_checked_for(tmp_path):
    ca = pki.new_ca("ca", now=NOW)
    server = OneShotTLSServer(ca, tmp_path)
    url = f"https://127.0.0.1:{server.port}"
    with pytest.raises(ClusterUnreachableError, match="TLS verification failed.*127.0.0.1"):
        with KubeClient(KubeTarget(name="t", server=url, ca_pem=ca.cert_pem)) as client:
            client.get("/api")
    with KubeClient(KubeTarget(name="t", server=url, ca_pem=ca.cert_pem, tls_server_name="kubernetes")) as client:
        assert client.get("/api") == {}
    assert server.names[-1] == "kubernetes"
    with pytest.raises(ClusterUnreachableError, match="TLS verification failed.*other"):
        with KubeClient(KubeTarget(name="t", server=url, ca_pem=ca.cert_pem, tls_server_name="other")) as client:
            client.get("/api")
    server.listener.close()


def test_a_proxy_that_refuses_the_tunnel_is_named_without_its_credentials():
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def refuse() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as reader:
            while (line := reader.readline()) not in (b"\r\n", b""):
                seen.append(line)
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=refuse, daemon=True).start()
    port = listener.getsockname()[1]
    ca = pki.new_ca("ca", now=NOW)
    target = KubeTarget(name="t", server="https://10.9.8.7:6443", ca_pem=ca.cert_pem,
                        proxy_url=f"http://bob:s3cret@127.0.0.1:{port}")
    with pytest.raises(ClusterUnreachableError) as error, KubeClient(target, timeout=5) as client:
        client.get("/api")
    listener.close()
    message = str(error.value)
    assert f"proxy http://127.0.0.1:{port} (from the cluster's kubeconfig: proxy-url) answered CONNECT " \
           "10.9.8.7:6443 with 407 Proxy Authentication Required" in message
    assert "s3cret" not in message and "bob" not in message
    assert seen[0] == b"CONNECT 10.9.8.7:6443 HTTP/1.1\r\n"
    assert f"Proxy-Authorization: Basic {base64.b64encode(b'bob:s3cret').decode()}\r\n".encode() in seen


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 \xb2\xb2\xb2 OK\r\n", b"SSH-2.0-OpenSSH\r\n"])
def test_a_proxy_answer_that_is_not_http_is_refused_naming_the_proxy(status_line):
    """"\xb2" (superscript two in latin-1) passes str.isdigit() and fails int()."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as reader:
            while reader.readline() not in (b"\r\n", b""):
                pass
            conn.sendall(status_line + b"\r\n")

    threading.Thread(target=answer, daemon=True).start()
    port = listener.getsockname()[1]
    target = KubeTarget(name="t", server="https://10.9.8.7:6443", ca_pem=pki.new_ca("ca", now=NOW).cert_pem,
                        proxy_url=f"http://127.0.0.1:{port}")
    with pytest.raises(ClusterUnreachableError, match=rf"proxy http://127.0.0.1:{port} .*no HTTP answer to CONNECT"), \
            KubeClient(target, timeout=5) as client:
        client.get("/api")
    listener.close()


def test_a_proxy_that_cannot_be_reached_is_named():
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    ca = pki.new_ca("ca", now=NOW)
    target = KubeTarget(name="t", server="https://10.9.8.7:6443", ca_pem=ca.cert_pem,
                        proxy_url=f"http://127.0.0.1:{port}")
    with pytest.raises(ClusterUnreachableError, match=rf"GET /api on t .*: proxy http://127.0.0.1:{port} .*: "
                                                      "connection refused"), KubeClient(target, timeout=5) as client:
        client.get("/api")
