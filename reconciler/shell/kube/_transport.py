"""The HTTPS connections requests travel on: http.client over kept-alive connections, one
per thread.

:meth:`HTTPSTransport._connect` is the one place a connection is made: straight to the
server, or through a CONNECT tunnel (``proxy-url``, ``HTTPS_PROXY``; :mod:`reconciler.shell.proxy`),
with the server's certificate checked for ``tls-server-name`` when the kubeconfig gives one,
else for the URL's host.
"""

from __future__ import annotations

import http.client
import select
import ssl
import threading
from typing import Iterable, Protocol
from urllib.parse import urlsplit

from reconciler.errors import ClusterUnreachableError
from reconciler.shell import proxy

# A kept-alive connection the server closed while idle fails with one of these before any
# response byte arrives; that alone is what a reconnect may paper over.
DROPPED_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class Headers(dict):
    """Request headers by name, as a dict; a name that repeats (``Impersonate-Group`` for
    each group) keeps its further values in :attr:`extra`, and :meth:`items` yields every
    line, which is what http.client sends."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        self.extra: list[tuple[str, str]] = []
        for name, value in pairs:
            if name in self:
                self.extra.append((name, value))
            else:
                self[name] = value

    def items(self):  # type: ignore[override]
        return [*super().items(), *self.extra]


class Transport(Protocol):
    """What KubeClient sends requests through; tests pass a fake one.

    ``request`` returns ``(status, headers with lower-case names, body)``; it raises
    ``OSError`` or ``http.client.HTTPException`` when the server cannot be reached."""

    def request(self, method: str, url_path: str, headers: dict[str, str],
                body: bytes | None) -> tuple[int, dict[str, str], bytes]: ...

    def close(self) -> None: ...


class HTTPSTransport:
    """http.client over kept-alive connections, one per thread (workload restarts wait in
    threads), with an in-memory SSL context.

    A dropped idle connection is replaced once: always when the failure came while
    sending, and after the request was sent only for a GET, since anything else may have
    reached the server and been carried out."""

    def __init__(self, server: str, context: ssl.SSLContext, *, timeout: float, server_name: str | None = None,
                 proxy_url: str | None = None) -> None:
        url = urlsplit(server)
        if url.scheme != "https" or not url.hostname:
            raise ClusterUnreachableError(f"server {server!r}: careconcile talks to https:// servers only")
        self.host = url.hostname
        self.port = url.port or 443
        self.base_path = url.path.rstrip("/")
        self.context = context
        self.timeout = timeout
        self.server_name = server_name  # a kubeconfig's tls-server-name: what the certificate must name
        self.proxy = proxy.choose(server, proxy_url, "the cluster's kubeconfig")
        self._local = threading.local()
        self._connections: set[http.client.HTTPSConnection] = set()
        self._guard = threading.Lock()

    @property
    def _connection(self) -> http.client.HTTPSConnection | None:
        return getattr(self._local, "connection", None)

    def _drop(self) -> None:
        """Close this thread's connection."""
        connection = self._connection
        if connection is not None:
            connection.close()
            self._local.connection = None
            with self._guard:
                self._connections.discard(connection)

    def _connect(self) -> http.client.HTTPSConnection:
        """A new (not yet opened) connection to the server: direct or through the proxy's
        CONNECT tunnel, its certificate checked against ``tls-server-name`` when given."""
        return proxy.HTTPSConnection(self.host, self.port, context=self.context, timeout=self.timeout,
                                     server_name=self.server_name, proxy=self.proxy)

    def _open(self) -> tuple[http.client.HTTPSConnection, bool]:
        """The connection and whether it served a request before (so may have gone stale)."""
        if self._connection is not None and self._closed_by_server(self._connection):
            self._drop()
        if self._connection is not None:
            return self._connection, True
        connection = self._connect()
        self._local.connection = connection
        with self._guard:
            self._connections.add(connection)
        return connection, False

    @staticmethod
    def _closed_by_server(connection: http.client.HTTPSConnection) -> bool:
        # An idle keep-alive socket that is readable has seen the server's FIN (or junk):
        # replace it before sending rather than find out after, when a retry is unsafe.
        sock = connection.sock
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def request(self, method: str, url_path: str, headers: dict[str, str],
                body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        for attempt in (1, 2):
            connection, reused = self._open()
            sent = False
            try:
                connection.request(method, self.base_path + url_path, body=body, headers=headers)
                sent = True
                response = connection.getresponse()
                data = response.read()
            except DROPPED_CONNECTION:
                self._drop()
                if attempt == 2 or not reused or (sent and method != "GET"):
                    raise
                continue
            except BaseException:
                self._drop()
                raise
            if response.will_close:
                self._drop()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every thread's connection."""
        with self._guard:
            connections, self._connections = self._connections, set()
        for connection in connections:
            connection.close()
        self._local = threading.local()
