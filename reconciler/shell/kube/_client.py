"""The client: JSON over HTTPS to one API server, with credentials from a source
(:mod:`._credentials`) that it asks before every request, refreshes once after a 401, and
backoff when the server is busy.

Backoff: a 429 (the API server's priority and fairness rejected the request before any
handler saw it) is sent again whatever the method; a 500, 502, 503 or 504 only for a GET,
since anything else may have been carried out. The wait is the answer's ``Retry-After``
(seconds) or else exponential with jitter, and all waits of one request together stay
within :data:`BACKOFF_BUDGET_SECONDS`, well inside a phase's timeout (300 s by default).
Each wait is logged.
"""

from __future__ import annotations

import datetime as dt
import http
import http.client
import json
import random
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

from reconciler import __version__
from reconciler._time import monotonic, parse_http_date
from reconciler.errors import (APIConflictError, APIError, APIForbiddenError, APINotFoundError,
                               APIUnauthorizedError, ClusterUnreachableError)
from reconciler.shell import proxy
from reconciler.shell.kube._credentials import (Credentials, InClusterCredentials, KubeconfigCredentials, Log,
                                                TargetCredentials)
from reconciler.shell.kube._kubeconfig import KubeTarget, kubeconfig_paths, refuse_moved
from reconciler.shell.kube._tls import tls_context
from reconciler.shell.kube._transport import DROPPED_CONNECTION, Headers, HTTPSTransport, Transport

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

# --- backoff ------------------------------------------------------------------------------

# All the waits of one request: well inside a phase's timeout (300 s by default, and a
# phase's check makes many requests), and longer than an API server's usual Retry-After (1 s).
BACKOFF_BUDGET_SECONDS = 30.0
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
# Sends per request at most: the first and 10 retries, as client-go. A server that keeps
# saying "Retry-After: 0" would otherwise be asked again forever, the budget never spent.
MAX_ATTEMPTS = 11
RETRIED_5XX = frozenset({500, 502, 503, 504})


def retry_wait(method: str, status: int, retry_after: str | None, attempt: int, *,
               rng: Callable[[], float] = random.random) -> tuple[float, str] | None:
    """How long to wait before sending a request again after ``status``, and why (the
    server's ``Retry-After`` or backoff), or None when it must not be sent again.
    ``attempt`` counts the answers so far (1 after the first)."""
    if status != 429 and not (status in RETRIED_5XX and method == "GET"):
        return None
    if retry_after is not None:
        try:
            seconds = int(retry_after.strip())
        except ValueError:
            seconds = -1  # an HTTP date, or junk: the exponential wait instead
        if seconds >= 0:
            return float(seconds), "Retry-After"
    ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1))
    return ceiling / 2 + rng() * ceiling / 2, "backoff"  # "equal jitter": half fixed, half random


def _stderr_log(message: str) -> None:
    print(f"careconcile: {message}", file=sys.stderr, flush=True)


# --- the client --------------------------------------------------------------------------

class KubeClient:
    """JSON requests to one API server; every error is typed and names the request.

    ``path`` is an API path (``/api/v1/namespaces/x/configmaps/y``), with or without a
    query string. Use as a context manager, or call :meth:`close`.

    ``credentials`` is a :class:`KubeTarget` (its tokenFile and exec plugin are followed) or
    a credential source. A request that gets a 401, or fails the server's certificate check,
    reads the credentials again (runs the exec plugin again) and is sent once more when they
    changed: neither reached a handler, so sending again is safe. :attr:`log` receives what
    the client has to say (backoff waits, an exec plugin's stderr): stderr until a command
    points it at its run's log."""

    def __init__(self, credentials: KubeTarget | Credentials, *, timeout: float = 10.0,
                 transport: Transport | None = None, log: Log | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 backoff_budget: float = BACKOFF_BUDGET_SECONDS) -> None:
        self.credentials: Credentials = TargetCredentials(credentials) if isinstance(credentials, KubeTarget) \
            else credentials
        self.timeout = timeout
        # 0 for a probe of one instance, which asks again on its own schedule.
        self.backoff_budget = backoff_budget
        self.log: Log = log or _stderr_log
        self._sleep = sleep
        self._guard = threading.RLock()
        # The Date of the server's last answer that had one, and when it arrived (monotonic).
        self._server_date: tuple[dt.datetime, float] | None = None
        self.target = self.credentials.current(self.log)
        self.transport = transport if transport is not None else self._open_for(self.target)

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

    def _use(self, target: KubeTarget) -> None:
        """Send later requests with ``target``'s credentials; a new connection when what TLS
        uses changed. The server must stay: careconcile never follows a kubeconfig to
        another cluster."""
        with self._guard:
            if target is self.target:
                return
            refuse_moved(self.target, target)
            if (target.ca_pem, target.cert_pem, target.key_pem) != \
                    (self.target.ca_pem, self.target.cert_pem, self.target.key_pem):
                old = self.transport
                self.transport = self._open_for(target)
                close = getattr(old, "close", None)
                if close is not None:
                    close()
            self.target = target

    def _open_for(self, target: KubeTarget) -> Transport:
        context = tls_context(ca_pem=target.ca_pem, cert_pem=target.cert_pem, key_pem=target.key_pem)
        return HTTPSTransport(target.server, context, timeout=self.timeout, server_name=target.tls_server_name,
                              proxy_url=target.proxy_url)

    def reload(self) -> None:
        """Read the credentials again now (after careconcile rewrote where they come from)."""
        self._use(self.credentials.refresh(self.log))

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

    def create(self, path: str, body: dict[str, Any], *, wait_if_busy: bool = True) -> dict[str, Any]:
        """POST ``body`` to the collection at ``path``. ``wait_if_busy=False``: a 429 is raised
        at once, for a caller that asks again on its own schedule (an eviction that a
        disruption budget refuses answers 429 with Retry-After: 10)."""
        return self.request("POST", path, body, wait_if_busy=wait_if_busy)

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
                content_type: str = JSON, *, wait_if_busy: bool = True) -> dict[str, Any]:
        status, data = self._call(method, path, body, content_type, wait_if_busy=wait_if_busy)
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
              accept: str = JSON, wait_if_busy: bool = True) -> tuple[int, bytes]:
        """Send, with a refresh of the credentials after a 401 or a failed certificate check
        (once), and backoff on a busy server."""
        self._use(self.credentials.current(self.log))
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
        waited, attempt, refreshed = 0.0, 0, False
        while True:
            attempt += 1
            target, transport = self.target, self.transport
            what = f"{method} {_without_query(path)} on {target.describe()}"
            try:
                status, answer_headers, data = transport.request(
                    method, path, self._headers(target, accept, content_type if payload is not None else None),
                    payload)
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, ssl.SSLCertVerificationError) and not refreshed:
                    refreshed = True
                    if self._refreshed(target):
                        continue
                hint = None
                if method != "GET" and isinstance(exc, DROPPED_CONNECTION):
                    hint = "the connection dropped after the request was sent; it may have been carried out"
                raise ClusterUnreachableError(f"{what}: {_connection_failure(exc)}", hint=hint) from exc
            self._note_date(parse_http_date(answer_headers.get("date")))  # an error answer carries it too
            if status < 400:
                return status, data
            if status == 401 and not refreshed:
                refreshed = True
                if self._refreshed(target):
                    continue
            retry = retry_wait(method, status, answer_headers.get("retry-after"), attempt)
            if retry is None or self.backoff_budget <= 0 or not wait_if_busy:
                raise _api_error(what, status, data)
            wait, why = retry
            if waited + wait > self.backoff_budget or attempt >= MAX_ATTEMPTS:
                error = _api_error(what, status, data)
                error.hint = (f"the server was still busy after {attempt} attempts and {waited:.1f} s of waiting "
                              f"(at most {MAX_ATTEMPTS} attempts and {self.backoff_budget:g} s per request)")
                raise error
            self.log(f"{what}: {status} {_reason(status)}; waiting {wait:.2f} s ({why}) before attempt "
                     f"{attempt + 1}")
            self._sleep(wait)
            waited += wait

    def _refreshed(self, used: KubeTarget) -> bool:
        """Read the credentials again after ``used`` was refused; whether they changed."""
        fresh = self.credentials.refresh(self.log)
        if (fresh.token, fresh.cert_pem, fresh.key_pem, fresh.ca_pem) == \
                (used.token, used.cert_pem, used.key_pem, used.ca_pem):
            return False
        self._use(fresh)
        return True

    @staticmethod
    def _headers(target: KubeTarget, accept: str, content_type: str | None) -> Headers:
        headers = Headers([("Accept", accept), ("User-Agent", USER_AGENT), *target.headers])
        if target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        if content_type is not None:
            headers["Content-Type"] = content_type
        return headers


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase.replace(" ", "")
    except ValueError:
        return "Unknown"


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
        reason = _reason(status)
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
    """A client that follows its kubeconfig: when the file changes (a rotation rewrites its
    CA and client certificate), the next request uses what it holds now. ``path`` None reads
    the kubeconfigs kubectl would (KUBECONFIG, merged, else ~/.kube/config); a list of paths
    is merged by kubectl's rules."""

    def __init__(self, path: Path | list[Path] | None, context: str | None = None, *, timeout: float = 10.0,
                 log: Log | None = None) -> None:
        paths = [Path(p) for p in path] if isinstance(path, list) else kubeconfig_paths(
            Path(path) if path is not None else None)
        self.paths = paths
        credentials = KubeconfigCredentials(paths, context)
        self.context = credentials.context  # pinned
        # The one file that holds the context, its cluster and its user; None when KUBECONFIG's
        # files spread them over several (a spec names one kubeconfig file).
        self.path = credentials.home
        super().__init__(credentials, timeout=timeout, log=log)


class InClusterClient(KubeClient):
    """A client that authenticates as the pod's ServiceAccount, following the kubelet's
    swaps of the mounted token and CA."""

    def __init__(self, directory: Path | None = None, *, timeout: float = 10.0, log: Log | None = None) -> None:
        credentials = InClusterCredentials(directory)
        self.directory = credentials.directory
        super().__init__(credentials, timeout=timeout, log=log)
