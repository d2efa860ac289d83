"""A small Kubernetes API client: JSON over kept-alive HTTPS connections, one per thread.

Why not the ``kubernetes`` package: it writes client keys to temp files (left behind when
the process is SIGKILLed), it is slow to import and its errors are untyped. Here the TLS
material lives only in memory (``memfd``), and every failure is one of the typed errors of
:mod:`reconciler.errors`, with a message naming the request and the cluster.

Public surface: :func:`tls_context`, :class:`KubeTarget`, :func:`load_kubeconfig`, :func:`kubeconfig_target`,
:class:`Transport`, :class:`HTTPSTransport`, :class:`KubeClient`, :class:`KubeconfigClient`,
and for a pod that uses its ServiceAccount (``inCluster: true``): :func:`load_in_cluster`,
:class:`InClusterClient`, :data:`SERVICEACCOUNT_DIR_ENV`.
"""

from __future__ import annotations

import base64
import datetime as dt
import http
import http.client
import json
import os
import re
import select
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

from reconciler import __version__
from reconciler._files import read_limited
from reconciler._time import monotonic, parse_http_date
from reconciler.core import kubeconfig, yamldoc
from reconciler.errors import (APIConflictError, APIError, APIForbiddenError, APINotFoundError,
                               APIUnauthorizedError, ClusterUnreachableError, PKIError)
from reconciler.shell import proxy

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
USER_AGENT = f"careconcile/{__version__}"
_DATE_RESOLUTION = dt.timedelta(seconds=1)  # an HTTP Date has whole seconds

_TYPED_ERRORS: dict[int, type[APIError]] = {
    401: APIUnauthorizedError,
    403: APIForbiddenError,
    404: APINotFoundError,
    409: APIConflictError,
}

# A certificate, key or token file a kubeconfig names: a PEM bundle of many CAs fits.
REFERENCED_FILE_MAX_BYTES = 1024 * 1024

# A kept-alive connection the server closed while idle fails with one of these before any
# response byte arrives; that alone is what a reconnect may paper over.
_DROPPED_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


# --- TLS ---------------------------------------------------------------------------------

def tls_context(
    *,
    ca_pem: bytes | None,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """An SSL context built in memory: the CA from ``cadata``, the client certificate and
    key through anonymous memory files, so that no key ever touches the disk.

    ``ca_pem=None`` with ``verify=True`` trusts the system's CAs. ``verify=False`` checks
    nothing (CERT_NONE), for probes that only look at what a server presents.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        if ca_pem is None:
            context.load_default_certs()
        else:
            try:
                context.load_verify_locations(cadata=ca_pem.decode("ascii"))
            except (ssl.SSLError, ValueError) as exc:
                raise PKIError(f"CA bundle holds no usable PEM certificate ({exc})") from exc
        # Like Go's x509 pool: any certificate in the bundle is a trust anchor, also an
        # intermediate, so "verifies against exactly this CA" means what it says.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if (cert_pem is None) != (key_pem is None):
        raise PKIError("a client certificate needs its key and a key its certificate")
    if cert_pem is not None and key_pem is not None:
        _load_client_chain(context, cert_pem, key_pem)
    return context


def _memory_file(name: str, content: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]
    return fd


def _refuse_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise PKIError("the client key is encrypted; careconcile needs an unencrypted key")


def _load_client_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """load_cert_chain only takes paths: give it /proc/self/fd paths of memfds, which
    vanish with the process, even under SIGKILL."""
    cert_fd = _memory_file("careconcile-client-cert", cert_pem)
    try:
        key_fd = _memory_file("careconcile-client-key", key_pem)
        try:
            context.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}",
                                    password=_refuse_passphrase)
        except ssl.SSLError as exc:
            # OpenSSL's reason only (e.g. KEY_VALUES_MISMATCH); never the key itself.
            raise PKIError(f"client certificate and key cannot be used together ({exc.reason or exc})") from exc
        finally:
            os.close(key_fd)
    finally:
        os.close(cert_fd)


# --- where a cluster is and how to authenticate ------------------------------------------

@dataclass(frozen=True)
class KubeTarget:
    """One API server and the credentials for it. ``name`` is for messages, e.g.
    ``kubeconfig /path context admin@c``. Key material and token are left out of repr."""

    name: str
    server: str
    context: str | None = None  # the kubeconfig context it came from
    ca_pem: bytes | None = field(default=None, repr=False)
    cert_pem: bytes | None = field(default=None, repr=False)
    key_pem: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    # Sent with every request: a front proxy's X-Remote-User, for one.
    headers: tuple[tuple[str, str], ...] = ()
    # The cluster's tls-server-name and proxy-url (reconciler.shell.proxy); a proxy URL may hold a password.
    tls_server_name: str | None = None
    proxy_url: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        return f"{self.name} ({self.server})"


def _named(entries: Any, name: str) -> dict[str, Any] | None:
    for entry in entries or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    return None


def _data_or_file(section: dict[str, Any], key: str, base: Path | None, where: str) -> bytes | None:
    """``KEY-data`` (base64) or ``KEY`` (a path, relative to the kubeconfig's directory,
    as kubectl resolves it). A kubeconfig that is not a file (``base`` None) must embed it."""
    data = section.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(data, validate=True)
        except (ValueError, TypeError) as exc:
            raise PKIError(f"{where}: {key}-data is not base64") from exc
    path = section.get(key)
    if path and base is None:
        raise PKIError(f"{where}: {key} names a file; a kubeconfig that is not a file must embed it ({key}-data)")
    if path:
        resolved = base / Path(path).expanduser()
        try:
            return read_limited(resolved, REFERENCED_FILE_MAX_BYTES)
        except OSError as exc:
            raise PKIError(f"{where}: cannot read {key} {resolved}: {exc.strerror}") from exc
    return None


# RFC 6750's b64token: what a bearer token may hold. A token with a line break would add a
# header to every request (http.client refuses it, quoting the token in its error).
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
# A kubeconfig's tls-server-name: a DNS name or an IP address, as TLS's SNI and certificate check take it.
_SERVER_NAME = re.compile(r"[A-Za-z0-9.:_-]+")


def _check_server(server: str, where: str) -> None:
    """An https:// URL with a host and a valid port, and no user name or password in it:
    everything the transport needs to be able to use it, checked where the kubeconfig is
    read, so that the error names the kubeconfig. The URL is not quoted: it may hold a
    password."""
    try:
        url = urlsplit(server)
        port = url.port
    except ValueError:  # a bad IPv6 literal, a port out of range or not a number (its message quotes it)
        raise ClusterUnreachableError(f"{where}: the server is not a URL careconcile can use (a malformed host "
                                      "or port)") from None
    if url.username is not None or url.password is not None:
        raise ClusterUnreachableError(f"{where}: the server URL holds a user name or password; careconcile does "
                                      "not use them (authenticate with a client certificate or a token)")
    if url.scheme != "https" or not url.hostname or port == 0:
        raise ClusterUnreachableError(f"{where}: the server must be an https:// URL with a host; careconcile "
                                      "talks to https:// servers only")
    if any(ord(char) < 0x21 or ord(char) == 0x7f for char in server):
        raise ClusterUnreachableError(f"{where}: the server URL holds a space or a control character")


def load_kubeconfig(path: Path, context: str | None = None) -> KubeTarget:
    """The server and credentials of ``context`` (default: current-context) in ``path``."""
    path = Path(path)
    try:
        raw = read_limited(path, yamldoc.KUBECONFIG.max_bytes)
    except OSError as exc:
        raise ClusterUnreachableError(f"kubeconfig {path}: cannot read it: {exc.strerror}") from exc
    return kubeconfig_target(raw, source=f"kubeconfig {path}", context=context, base=path.resolve().parent)


def kubeconfig_target(text: str | bytes, *, source: str, context: str | None = None, base: Path | None = None) -> KubeTarget:
    """The server and credentials of ``context`` (default: current-context) in a kubeconfig's
    text; ``source`` names it in errors. ``base`` is the directory file references are relative
    to; None (a kubeconfig held in a Secret) refuses them."""
    document = kubeconfig.parse(text, source=source)
    context_name = context or document.get("current-context")
    if not context_name:
        raise ClusterUnreachableError(f"{source}: no context given and no current-context set")
    where = f"{source} context {context_name}"
    context_entry = _named(document.get("contexts"), context_name)
    if context_entry is None:
        known = ", ".join(str(c.get("name")) for c in document.get("contexts") or []) or "none"
        raise ClusterUnreachableError(f"{where}: no such context (contexts: {known})")
    details = context_entry.get("context") or {}
    cluster_entry = _named(document.get("clusters"), details.get("cluster"))
    if cluster_entry is None:
        raise ClusterUnreachableError(f"{where}: no cluster named {details.get('cluster')!r}")
    cluster = cluster_entry.get("cluster") or {}
    server = cluster.get("server")
    if not server:
        raise ClusterUnreachableError(f"{where}: cluster {cluster_entry['name']!r} has no server")
    _check_server(server, f"{where}: cluster {cluster_entry['name']!r}")
    tls_server_name, proxy_url = cluster.get("tls-server-name") or None, cluster.get("proxy-url") or None
    if tls_server_name is not None and not _SERVER_NAME.fullmatch(tls_server_name):
        raise ClusterUnreachableError(f"{where}: cluster {cluster_entry['name']!r}: tls-server-name is not a host name")
    proxy.choose(server, proxy_url, f"{where}: cluster {cluster_entry['name']!r}")  # refuses what is unusable
    ca_pem = _data_or_file(cluster, "certificate-authority", base, where)
    if ca_pem is None:
        raise PKIError(f"{where}: cluster {cluster_entry['name']!r} has no certificate-authority(-data); "
                       f"careconcile does not talk to a cluster it cannot verify")
    user: dict[str, Any] = {}
    if details.get("user"):
        user_entry = _named(document.get("users"), details["user"])
        if user_entry is None:
            raise ClusterUnreachableError(f"{where}: no user named {details['user']!r}")
        user = user_entry.get("user") or {}
    token = user.get("token")
    if not token and user.get("tokenFile"):
        if base is None:
            raise PKIError(f"{where}: tokenFile names a file; a kubeconfig that is not a file must embed the token")
        token_path = base / Path(user["tokenFile"]).expanduser()
        try:
            token = read_limited(token_path, REFERENCED_FILE_MAX_BYTES).decode().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise PKIError(f"{where}: cannot read tokenFile {token_path}: {reason}") from exc
    if token and not _TOKEN.fullmatch(token):  # it goes into a header: never quoted, never sent
        raise PKIError(f"{where}: the user's token holds characters a bearer token cannot have (only letters, "
                       "digits and -._~+/=); check the kubeconfig")
    return KubeTarget(
        name=where,
        server=server,
        context=context_name,
        ca_pem=ca_pem,
        cert_pem=_data_or_file(user, "client-certificate", base, where),
        key_pem=_data_or_file(user, "client-key", base, where),
        token=token or None,
        tls_server_name=tls_server_name,
        proxy_url=proxy_url,
    )


# --- transport ---------------------------------------------------------------------------

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
        self.server_name = server_name
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

    def _open(self) -> tuple[http.client.HTTPSConnection, bool]:
        """The connection and whether it served a request before (so may have gone stale)."""
        if self._connection is not None and self._closed_by_server(self._connection):
            self._drop()
        if self._connection is not None:
            return self._connection, True
        connection = proxy.HTTPSConnection(self.host, self.port, context=self.context, timeout=self.timeout,
                                           server_name=self.server_name, proxy=self.proxy)
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
            except _DROPPED_CONNECTION:
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


def https_transport(target: KubeTarget, *, timeout: float) -> HTTPSTransport:
    """The transport to ``target``: its CA and client certificate, tls-server-name and proxy."""
    context = tls_context(ca_pem=target.ca_pem, cert_pem=target.cert_pem, key_pem=target.key_pem)
    return HTTPSTransport(target.server, context, timeout=timeout, server_name=target.tls_server_name,
                          proxy_url=target.proxy_url)


# --- the client --------------------------------------------------------------------------

class KubeClient:
    """JSON requests to one API server; every error is typed and names the request.

    ``path`` is an API path (``/api/v1/namespaces/x/configmaps/y``), with or without a
    query string. Use as a context manager, or call :meth:`close`."""

    def __init__(self, target: KubeTarget, *, timeout: float = 10.0, transport: Transport | None = None) -> None:
        self.target = target
        self.timeout = timeout
        # The Date of the server's last answer that had one, and when it arrived (monotonic).
        self._server_date: tuple[dt.datetime, float] | None = None
        self.transport = transport if transport is not None else https_transport(target, timeout=timeout)

    def __repr__(self) -> str:
        return f"KubeClient({self.target.describe()})"

    def __enter__(self) -> "KubeClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()

    def server_now(self) -> dt.datetime | None:
        """The API server's clock now: the Date header of its last answer plus the time since
        that answer on this process's monotonic clock (up to a second behind, as a Date has
        whole seconds). None before an answer carried a Date. Compared with times the server
        writes, or that careconcile wrote from this, it is free of this machine's clock skew."""
        if self._server_date is None:
            return None
        date, received = self._server_date
        return date + dt.timedelta(seconds=monotonic() - received)

    def _note_date(self, date: dt.datetime | None) -> None:
        """Take the server's clock from a Date. A Date has whole seconds, so each one is a
        lower bound of the server's time: the estimate only moves forward, unless the server's
        clock went back by more than that (it was set back, or another server answers)."""
        if date is None:
            return
        known = self.server_now()
        if known is None or date > known or known - date > _DATE_RESOLUTION * 2:
            self._server_date = (date, monotonic())

    # -- verbs --

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def list(self, path: str, *, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        """Every item of a collection, following ``continue`` tokens page by page."""
        query: dict[str, str] = {"limit": "500"}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        items: list[dict[str, Any]] = []
        seen: set[str] = set()
        while True:
            page = self.request("GET", _with_query(path, query))
            found, metadata = page.get("items") or [], page.get("metadata") or {}
            if not isinstance(found, list) or not all(isinstance(item, dict) for item in found) \
                    or not isinstance(metadata, dict):
                raise ClusterUnreachableError(f"GET {path} on {self.target.describe()}: the answer is not a list "
                                              "of objects")
            items.extend(found)
            token = metadata.get("continue")
            if not token:
                return items
            if not isinstance(token, str) or token in seen:  # a server that pages forever
                raise ClusterUnreachableError(f"GET {path} on {self.target.describe()}: the answer's continue "
                                              "token is not text, or came before")
            seen.add(token)
            query["continue"] = token

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the collection at ``path``."""
        return self.request("POST", path, body)

    def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT; a ``metadata.resourceVersion`` in ``body`` makes it conditional (409 if stale)."""
        return self.request("PUT", path, body)

    def patch(self, path: str, body: dict[str, Any] | list[Any], *, merge: bool = True) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386); ``merge=False`` sends ``body`` as a JSON patch
        (RFC 6902, a list of operations)."""
        return self.request("PATCH", path, body, content_type=MERGE_PATCH if merge else JSON_PATCH)

    def delete(self, path: str, *, uid: str | None = None, resource_version: str | None = None) -> None:
        """DELETE; ``uid``/``resource_version`` are preconditions (409 when they no longer hold)."""
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions} if preconditions else None
        self.request("DELETE", path, body)

    def get_text(self, path: str) -> str:
        """GET a non-resource path that answers plain text (``/metrics``, ``/readyz``)."""
        return self._call("GET", path, None, JSON, accept="text/plain")[1].decode("utf-8", "replace")

    def request(self, method: str, path: str, body: dict[str, Any] | list[Any] | None = None,
                content_type: str = JSON) -> dict[str, Any]:
        status, data = self._call(method, path, body, content_type)
        what = f"{method} {_without_query(path)} on {self.target.describe()}"
        if not data.strip():
            return {}
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise ClusterUnreachableError(f"{what}: {status} answer is not JSON: {_excerpt(data)}") from exc
        if not isinstance(document, dict):
            raise ClusterUnreachableError(f"{what}: {status} answer is not a JSON object: {_excerpt(data)}")
        return document

    def _call(self, method: str, path: str, body: dict[str, Any] | list[Any] | None, content_type: str, *,
              accept: str = JSON) -> tuple[int, bytes]:
        headers = {"Accept": accept, "User-Agent": USER_AGENT, **dict(self.target.headers)}
        if self.target.token:
            headers["Authorization"] = f"Bearer {self.target.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        what = f"{method} {_without_query(path)} on {self.target.describe()}"
        try:
            status, answer_headers, data = self.transport.request(method, path, headers, payload)
        except (OSError, http.client.HTTPException) as exc:
            hint = None
            if method != "GET" and isinstance(exc, _DROPPED_CONNECTION):
                hint = "the connection dropped after the request was sent; it may have been carried out"
            raise ClusterUnreachableError(f"{what}: {_connection_failure(exc)}", hint=hint) from exc
        self._note_date(parse_http_date(answer_headers.get("date")))  # an error answer carries it too
        if status >= 400:
            raise _api_error(what, status, data)
        return status, data


def _with_query(path: str, query: dict[str, str]) -> str:
    return f"{path}{'&' if '?' in path else '?'}{urlencode(query)}"


def _without_query(path: str) -> str:
    # Query strings carry continue tokens and selectors; the path is what identifies the call.
    return path.split("?", 1)[0]


def _excerpt(data: bytes, limit: int = 200) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _api_error(what: str, status: int, data: bytes) -> APIError:
    """The typed error for an error status, with the Status object's reason and message."""
    reason, message = "", ""
    try:
        document = json.loads(data)
    except ValueError:
        document = None
    if isinstance(document, dict) and document.get("kind") == "Status":
        reason = str(document.get("reason") or "")
        message = str(document.get("message") or "")
    elif data.strip():
        message = _excerpt(data)
    if not reason:
        try:
            reason = http.HTTPStatus(status).phrase.replace(" ", "")
        except ValueError:
            reason = "Unknown"
    error_type = _TYPED_ERRORS.get(status, APIError)
    text = f"{what}: {status} {reason}" + (f": {message}" if message else "")
    return error_type(text, status=status, reason=reason)


def _connection_failure(exc: BaseException) -> str:
    if isinstance(exc, proxy.ProxyError):
        return str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS verification failed: {exc.verify_message or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class KubeconfigClient(KubeClient):
    """A client that follows its kubeconfig file: when the file changes (a rotation
    rewrites its CA and client certificate), the next request uses what it holds now."""

    def __init__(self, path: Path, context: str | None = None, *, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._signature = self._stat()
        target = load_kubeconfig(self.path, context)
        # Pinned: a `kubectl config use-context` during a run must not move it to another cluster.
        self.context = target.context
        super().__init__(target, timeout=timeout)

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_ino

    def request(self, method: str, path: str, body: dict[str, Any] | list[Any] | None = None,
                content_type: str = "application/json") -> dict[str, Any]:
        signature = self._stat()
        if signature != self._signature:
            self.close()
            self._signature = signature
            reloaded = load_kubeconfig(self.path, self.context)
            if reloaded.server != self.target.server:
                raise ClusterUnreachableError(
                    f"{reloaded.name}: the server changed from {self.target.server} to {reloaded.server} "
                    "while careconcile was using it; not following it to another cluster")
            self.target = reloaded
            self.transport = https_transport(self.target, timeout=self.timeout)
        return super().request(method, path, body, content_type)


# --- in a pod: the ServiceAccount's token -------------------------------------------------

SERVICEACCOUNT_DIR_ENV = "CARECONCILE_SERVICEACCOUNT_DIR"
# Where the kubelet mounts a pod's ServiceAccount token, CA and namespace; tests point
# CARECONCILE_SERVICEACCOUNT_DIR at a directory of their own.
SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def serviceaccount_dir() -> Path:
    return Path(os.environ.get(SERVICEACCOUNT_DIR_ENV) or SERVICEACCOUNT_DIR)


def _read_mounted(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClusterUnreachableError(
            f"inCluster: cannot read the ServiceAccount {what} {path}: {exc.strerror}",
            hint="inCluster: true works in a pod with a ServiceAccount token mounted "
                 f"(automountServiceAccountToken); elsewhere use a kubeconfig, or set {SERVICEACCOUNT_DIR_ENV}") \
            from exc


def load_in_cluster(directory: Path | None = None) -> KubeTarget:
    """The API server and ServiceAccount credentials of the pod careconcile runs in: the
    server from KUBERNETES_SERVICE_HOST/PORT, the bearer token and the CA from the
    ServiceAccount directory (:func:`serviceaccount_dir`)."""
    directory = Path(directory) if directory is not None else serviceaccount_dir()
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ClusterUnreachableError(
            "inCluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set; careconcile is not "
            "running in a pod", hint="outside a cluster, give the cluster a kubeconfig instead of inCluster: true")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    token = _read_mounted(directory / "token", "token").decode("utf-8", "replace").strip()
    if not token:
        raise ClusterUnreachableError(f"inCluster: the ServiceAccount token {directory / 'token'} is empty")
    return KubeTarget(name=f"in-cluster ServiceAccount ({directory})", server=server,
                      ca_pem=_read_mounted(directory / "ca.crt", "CA"), token=token)


class InClusterClient(KubeClient):
    """A client that authenticates as the pod's ServiceAccount. The kubelet rotates a bound
    token (and replaces ``ca.crt`` when the cluster's root CA changes) by swapping the
    mounted files: when either file changes, the next request uses what it holds now."""

    def __init__(self, directory: Path | None = None, *, timeout: float = 10.0) -> None:
        self.directory = Path(directory) if directory is not None else serviceaccount_dir()
        self._signatures = self._stat()
        super().__init__(load_in_cluster(self.directory), timeout=timeout)

    def _stat(self) -> dict[str, tuple[int, int, int, int] | None]:
        signatures: dict[str, tuple[int, int, int, int] | None] = {}
        for name in ("token", "ca.crt"):
            try:
                stat = (self.directory / name).stat()  # follows the kubelet's ..data symlinks
            except OSError:
                signatures[name] = None
                continue
            signatures[name] = (stat.st_mtime_ns, stat.st_ino, stat.st_dev, stat.st_size)
        return signatures

    def request(self, method: str, path: str, body: dict[str, Any] | list[Any] | None = None,
                content_type: str = JSON) -> dict[str, Any]:
        signatures = self._stat()
        if signatures != self._signatures:
            reloaded = load_in_cluster(self.directory)
            if reloaded.ca_pem != self.target.ca_pem:
                self.close()
                self.transport = https_transport(reloaded, timeout=self.timeout)
            self.target = reloaded
            self._signatures = signatures
        return super().request(method, path, body, content_type)
