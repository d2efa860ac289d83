"""HTTP proxies and the TLS server name, for the API client (:mod:`reconciler.shell.kube`).

Which proxy a request to an API server takes, as client-go decides it:

- the cluster's ``proxy-url`` in the kubeconfig, for every request, loopback included
  (client-go's ``http.ProxyURL``);
- else ``HTTPS_PROXY`` (or ``https_proxy``; the server is https://) unless ``NO_PROXY`` (or
  ``no_proxy``) exempts the server, by the rules of :mod:`reconciler.core.proxyenv`
  (Go's ``http.ProxyFromEnvironment``): never for localhost or a loopback address.

Only ``http://`` proxies are supported, through a CONNECT tunnel: the TLS session to the
API server runs inside it, end to end, so the proxy sees the server's address and nothing
else. A user and password in the proxy's URL go as ``Proxy-Authorization: Basic`` on the
CONNECT, and appear in no message: a proxy is named by scheme, host and port only.
``https://`` and ``socks5://`` proxies, which client-go also takes, are refused by name.
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from reconciler import __version__
from reconciler.core import proxyenv
from reconciler.errors import ClusterUnreachableError

DEFAULT_PORTS = {"http": 80}
# A proxy's answer to CONNECT: a status line and a few headers.
_LINE_MAX = 8192
_HEADERS_MAX = 100


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy to tunnel through; ``source`` says where it came from (``proxy-url``,
    ``HTTPS_PROXY``). The credentials are left out of repr."""

    host: str
    port: int
    source: str
    authorization: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"proxy http://{host}:{self.port} (from {self.source})"


class ProxyError(OSError):
    """The proxy could not be reached, or refused the tunnel; the message names the proxy."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "proxy error"


def parse_proxy(text: str, source: str) -> Proxy:
    """An ``http://[user:password@]host[:port]`` URL, as ``source`` gives it. Errors name the
    source and never quote the URL (it may hold a password)."""
    try:
        url = urlsplit(text.strip())
        port = url.port
    except ValueError:
        raise ClusterUnreachableError(f"{source}: the proxy is not a URL careconcile can use (a malformed host "
                                      "or port)") from None
    scheme = url.scheme.lower()
    if scheme in ("https", "socks5", "socks5h", "socks4"):
        raise ClusterUnreachableError(f"{source}: {scheme}:// proxies are not supported; careconcile tunnels "
                                      "through http:// proxies only (HTTP CONNECT)")
    if scheme != "http":
        raise ClusterUnreachableError(f"{source}: the proxy must be an http:// URL with a host; careconcile "
                                      "tunnels through http:// proxies only (HTTP CONNECT)")
    if not url.hostname or port == 0:
        raise ClusterUnreachableError(f"{source}: the proxy URL has no host (or port 0)")
    if any(ord(char) < 0x21 or ord(char) == 0x7f for char in text.strip()):
        raise ClusterUnreachableError(f"{source}: the proxy URL holds a space or a control character")
    authorization = None
    if url.username is not None:
        pair = f"{unquote(url.username)}:{unquote(url.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode("ascii")
    return Proxy(url.hostname, port or DEFAULT_PORTS[scheme], source, authorization)


def environment_proxy(server: str, environ: Mapping[str, str]) -> Proxy | None:
    """The proxy of the environment for an https:// ``server``, as Go's
    ``http.ProxyFromEnvironment`` picks it; None when there is none or NO_PROXY exempts it."""
    name = next((n for n in ("HTTPS_PROXY", "https_proxy") if environ.get(n)), None)
    if name is None:
        return None
    url = urlsplit(server)
    no_proxy = next((environ[n] for n in ("NO_PROXY", "no_proxy") if environ.get(n)), "")
    if not proxyenv.uses_proxy(no_proxy, url.hostname or "", url.port or 443):
        return None
    value = environ[name].strip()
    if "://" not in value:
        value = "http://" + value  # Go: a bare host:port is an http:// proxy
    return parse_proxy(value, f"the environment variable {name}")


def choose(server: str, proxy_url: str | None, source: str, environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy for requests to ``server``: ``proxy_url`` (from ``source``, a kubeconfig
    cluster) when set, else the environment's."""
    if proxy_url:
        return parse_proxy(proxy_url, f"{source}: proxy-url")
    return environment_proxy(server, os.environ if environ is None else environ)


def tunnel(proxy: Proxy, host: str, port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to ``host:port`` through ``proxy``'s CONNECT tunnel."""
    try:
        sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    except OSError as exc:
        raise ProxyError(f"{proxy.describe()}: {(exc.strerror or type(exc).__name__).lower()}") from exc
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", f"User-Agent: careconcile/{__version__}"]
        if proxy.authorization:
            lines.append(f"Proxy-Authorization: {proxy.authorization}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        status = _read_answer(sock, proxy)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError) and not isinstance(exc, ProxyError):
            raise ProxyError(f"{proxy.describe()}: CONNECT {target} failed: "
                             f"{(exc.strerror or type(exc).__name__).lower()}") from exc
        raise
    if status[0] != 200:
        sock.close()
        raise ProxyError(f"{proxy.describe()} answered CONNECT {target} with {status[0]} {status[1]}".rstrip())
    return sock


def _read_answer(sock: socket.socket, proxy: Proxy) -> tuple[int, str]:
    """The status of the proxy's answer to CONNECT, its headers read and dropped. Nothing
    past them is read: the server sends nothing before the TLS client speaks."""
    reader = sock.makefile("rb", buffering=0)
    try:
        line = reader.readline(_LINE_MAX).decode("latin-1")
        parts = line.split(None, 2)
        # isdigit() alone takes "²" (latin-1 0xB2), which int() refuses.
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not (parts[1].isascii() and parts[1].isdigit()):
            raise ProxyError(f"{proxy.describe()}: no HTTP answer to CONNECT")
        for _ in range(_HEADERS_MAX):
            header = reader.readline(_LINE_MAX)
            if header in (b"\r\n", b"\n", b""):
                return int(parts[1]), (parts[2] if len(parts) > 2 else "").strip()
        raise ProxyError(f"{proxy.describe()}: its answer to CONNECT has more than {_HEADERS_MAX} headers")
    finally:
        reader.close()


class HTTPSConnection(http.client.HTTPSConnection):
    """http.client's HTTPS connection with two more things: the TLS server name (SNI and the
    name the certificate is verified for, a kubeconfig's ``tls-server-name``) when it is not
    the URL's host, and a CONNECT tunnel through ``proxy``. The Host header stays the URL's."""

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext, timeout: float,
                 server_name: str | None = None, proxy: Proxy | None = None) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self.server_name = server_name or host
        self.proxy = proxy

    def getresponse(self) -> http.client.HTTPResponse:
        if self.proxy is not None and self.sock is not None and hasattr(socket, "TCP_QUICKACK"):
            # A proxy that relays the answer in several writes without TCP_NODELAY (tinyproxy)
            # holds each after the first until it is acknowledged: acknowledge at once rather
            # than after Linux's delayed-ACK wait (40 ms), which made every request cost that.
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                pass
        return super().getresponse()

    def connect(self) -> None:
        if self.proxy is None:
            sock = socket.create_connection((self.host, self.port), self.timeout, self.source_address)
        else:
            sock = tunnel(self.proxy, self.host, self.port, self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self._context.wrap_socket(sock, server_hostname=self.server_name)  # type: ignore[attr-defined]
        except BaseException:
            sock.close()
            raise
