"""Kubeconfig documents as kubeadm writes them (pure: builds and parses text)."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML

from reconciler.core import yamldoc
from reconciler.errors import PKIError


@dataclass(frozen=True)
class ClientCredentials:
    """How a kubeconfig user authenticates: embedded PEM data or paths to files."""

    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    cert_path: str | None = None
    key_path: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """One API server a kubeconfig can reach, under its own cluster and context name."""

    name: str
    server: str
    # The cluster entry's tls-server-name and proxy-url, kept when careconcile writes a kubeconfig anew.
    tls_server_name: str | None = None
    proxy_url: str | None = None

    def cluster(self, ca_data: str) -> dict[str, str]:
        """The cluster entry's fields: the server, the CA and what else this endpoint has."""
        entry = {"certificate-authority-data": ca_data, "server": self.server}
        if self.tls_server_name:
            entry["tls-server-name"] = self.tls_server_name
        if self.proxy_url:
            entry["proxy-url"] = self.proxy_url
        return entry


def build(
    *,
    endpoints: list[Endpoint],
    ca_pem: bytes,
    user: str,
    credentials: ClientCredentials,
) -> dict[str, Any]:
    """A kubeconfig with a cluster and context per endpoint; the first is current."""
    if not endpoints:
        raise ValueError("a kubeconfig needs at least one endpoint")
    ca_data = base64.b64encode(ca_pem).decode()
    user_entry: dict[str, str] = {}
    if credentials.cert_pem is not None:
        user_entry["client-certificate-data"] = base64.b64encode(credentials.cert_pem).decode()
    if credentials.key_pem is not None:
        user_entry["client-key-data"] = base64.b64encode(credentials.key_pem).decode()
    if credentials.cert_path is not None:
        user_entry["client-certificate"] = credentials.cert_path
    if credentials.key_path is not None:
        user_entry["client-key"] = credentials.key_path
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {"name": ep.name, "cluster": ep.cluster(ca_data)}
            for ep in endpoints
        ],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [
            {"name": f"{user}@{ep.name}", "context": {"cluster": ep.name, "user": user}}
            for ep in endpoints
        ],
        "current-context": f"{user}@{endpoints[0].name}",
    }


def dump(document: dict[str, Any]) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def parse(text: str | bytes, *, source: str) -> dict[str, Any]:
    """A kubeconfig's document, within :data:`yamldoc.KUBECONFIG`'s limits (no aliases),
    with the entries careconcile reads in the shape it reads them. Errors name ``source``,
    the line and column and the problem, never a value: a kubeconfig's values are keys."""
    try:
        document = yamldoc.load(text, yamldoc.KUBECONFIG).data
    except yamldoc.DocumentError as exc:
        raise PKIError(f"{source}: not a kubeconfig: {exc}") from None
    if not isinstance(document, dict) or document.get("kind") != "Config":
        raise PKIError(f"{source}: not a kubeconfig (kind Config missing)")
    _check_shape(document, source)
    return document


# The entries of each list, and their fields careconcile reads, which must be text.
_SECTIONS = {
    "clusters": ("cluster", ("server", "certificate-authority", "certificate-authority-data", "tls-server-name",
                             "proxy-url")),
    "contexts": ("context", ("cluster", "user", "namespace")),
    "users": ("user", ("client-certificate", "client-certificate-data", "client-key", "client-key-data",
                       "token", "tokenFile")),
}


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "a boolean", type(None): "empty"}.get(
        type(value), "a number")


def _check_shape(document: dict[str, Any], source: str) -> None:
    """clusters, contexts and users are lists of named mappings; the fields careconcile reads
    are text. Anything else in a kubeconfig is left as it is."""
    if not isinstance(document.get("current-context", ""), (str, type(None))):
        raise PKIError(f"{source}: current-context must be text; it is {_kind(document['current-context'])}")
    for section, (inner, fields) in _SECTIONS.items():
        entries = document.get(section)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise PKIError(f"{source}: {section} must be a list of entries; it is {_kind(entries)}")
        for index, entry in enumerate(entries):
            where = f"{source}: {section}[{index}]"
            if not isinstance(entry, dict):
                raise PKIError(f"{where} must be a mapping with name and {inner}; it is {_kind(entry)}")
            if not isinstance(entry.get("name"), str):
                raise PKIError(f"{where}: name must be text; it is {_kind(entry.get('name'))}")
            body = entry.get(inner)
            if body is None:
                continue
            if not isinstance(body, dict):
                raise PKIError(f"{where} ({entry['name']}): {inner} must be a mapping; it is {_kind(body)}")
            for name in fields:
                if not isinstance(body.get(name, ""), (str, type(None))):
                    raise PKIError(f"{where} ({entry['name']}): {inner}.{name} must be text; "
                                   f"it is {_kind(body[name])}")


def decode_data(data: Any, where: str) -> bytes:
    """Base64 data of a kubeconfig (``*-data``), line-wrapped or not: the one decoder of
    kubeconfig data. The error names where it is, never what it holds."""
    try:
        return base64.b64decode("".join(str(data).split()), validate=True)  # wrapped lines are fine
    except (binascii.Error, ValueError) as exc:
        raise PKIError(f"{where}: not valid base64 ({exc})") from None


def cluster_ca_pem(document: dict[str, Any], cluster: str, *, source: str) -> bytes:
    """The certificate-authority-data of the named cluster entry."""
    for entry in document.get("clusters") or []:
        if entry.get("name") == cluster:
            data = (entry.get("cluster") or {}).get("certificate-authority-data")
            if not data:
                raise PKIError(f"{source}: cluster {cluster!r} has no certificate-authority-data")
            return decode_data(data, f"{source}: cluster {cluster!r} certificate-authority-data")
    raise PKIError(f"{source}: no cluster named {cluster!r}")


@dataclass(frozen=True)
class Scope:
    """The cluster and user entries of a kubeconfig that belong to one cluster; None means
    every entry (kubeadm's kubeconfigs hold one cluster). A user's own kubeconfig may list
    other clusters, whose CAs careconcile must neither count nor touch."""

    clusters: frozenset[str] | None = None
    users: frozenset[str] | None = None


EVERYTHING = Scope()


def scope_for(document: dict[str, Any], *, servers: set[str], context: str | None) -> Scope:
    """The entries that reach one of ``servers``, plus the cluster of ``context`` (a load
    balancer's address appears in no manifest), and the users their contexts use."""
    current = context or document.get("current-context")
    context_cluster = next(((entry.get("context") or {}).get("cluster") for entry in document.get("contexts") or []
                            if entry.get("name") == current), None)
    clusters = frozenset(
        entry.get("name", "") for entry in document.get("clusters") or []
        if (entry.get("cluster") or {}).get("server") in servers or entry.get("name") == context_cluster)
    users = frozenset((entry.get("context") or {}).get("user", "") for entry in document.get("contexts") or []
                      if (entry.get("context") or {}).get("cluster") in clusters)
    return Scope(clusters, users)


def _in_scope(name: str, names: frozenset[str] | None) -> bool:
    return names is None or name in names


def ca_certificates(document: dict[str, Any], *, source: str, scope: Scope = EVERYTHING) -> list[bytes]:
    """The distinct certificate-authority-data of every cluster entry in scope, in order."""
    seen: list[bytes] = []
    for entry in document.get("clusters") or []:
        if not _in_scope(entry.get("name", ""), scope.clusters):
            continue
        data = (entry.get("cluster") or {}).get("certificate-authority-data")
        if data:
            pem = decode_data(data, f"{source}: cluster {entry.get('name', '')!r} certificate-authority-data")
            if pem not in seen:
                seen.append(pem)
    if not seen:
        raise PKIError(f"{source}: no cluster entry of this cluster has certificate-authority-data")
    return seen


def with_ca(document: dict[str, Any], ca_pem: bytes, scope: Scope = EVERYTHING) -> dict[str, Any]:
    """A copy whose cluster entries in scope trust exactly ``ca_pem`` (one or more certificates)."""
    data = base64.b64encode(ca_pem).decode()
    updated = dict(document)
    updated["clusters"] = [
        {**entry, "cluster": {**(entry.get("cluster") or {}), "certificate-authority-data": data}}
        if _in_scope(entry.get("name", ""), scope.clusters) else entry
        for entry in document.get("clusters") or []
    ]
    return updated


def embedded_credentials(document: dict[str, Any], scope: Scope = EVERYTHING, *,
                         source: str = "kubeconfig") -> list[tuple[str, bytes, bytes | None]]:
    """(user, certificate PEM, key PEM) of each user in scope whose client certificate is embedded."""
    found = []
    for entry in document.get("users") or []:
        user = entry.get("user") or {}
        if user.get("client-certificate-data") and _in_scope(entry.get("name", ""), scope.users):
            key = user.get("client-key-data")
            where = f"{source}: user {entry.get('name', '')!r}"
            found.append((entry.get("name", ""), decode_data(user["client-certificate-data"],
                                                         f"{where} client-certificate-data"),
                          decode_data(key, f"{where} client-key-data") if key else None))
    return found


def file_references(document: dict[str, Any], scope: Scope = EVERYTHING) -> list[str]:
    """Entries in scope that point at certificate files instead of embedding them: careconcile
    rotates what a kubeconfig embeds, and would otherwise lock out the client that uses it."""
    found = [f"cluster {entry.get('name')!r} certificate-authority: {(entry.get('cluster') or {})['certificate-authority']}"
             for entry in document.get("clusters") or []
             if _in_scope(entry.get("name", ""), scope.clusters)
             and (entry.get("cluster") or {}).get("certificate-authority")
             and not (entry.get("cluster") or {}).get("certificate-authority-data")]
    for entry in document.get("users") or []:
        user = entry.get("user") or {}
        if _in_scope(entry.get("name", ""), scope.users) and user.get("client-certificate") \
                and not user.get("client-certificate-data"):
            found.append(f"user {entry.get('name')!r} client-certificate: {user['client-certificate']}")
    return found


def with_credentials(document: dict[str, Any], user: str, cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    updated = dict(document)
    users = []
    for entry in document.get("users") or []:
        if entry.get("name") == user:
            entry = {**entry, "user": {**(entry.get("user") or {}),
                                       "client-certificate-data": base64.b64encode(cert_pem).decode(),
                                       "client-key-data": base64.b64encode(key_pem).decode()}}
        users.append(entry)
    updated["users"] = users
    return updated


def servers(document: dict[str, Any]) -> list[Endpoint]:
    return [Endpoint(entry.get("name", ""), cluster.get("server", ""), cluster.get("tls-server-name") or None,
                     cluster.get("proxy-url") or None)
            for entry in document.get("clusters") or [] for cluster in [entry.get("cluster") or {}]]
