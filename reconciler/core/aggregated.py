"""An aggregated apiserver as the API describes it: where its APIService says it is served
(a Service, a port, a caBundle) and where that Service points.

Pure. What the API answers is read as untrusted: a field of the wrong type or shape is a
ValueError whose message names the field and quotes nothing from it (an object can be
written by whoever may write APIServices or Services, and a value could hold anything).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

# What names in an API path and a TLS server name may be (DNS labels and subdomains).
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")
# A host to connect to: a DNS name or an IP address (v4, or v6 without brackets).
_HOST = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9.:]{0,252})")


@dataclass(frozen=True)
class Endpoint:
    """Where to ask an APIService's server: its Service (to look up), the port, the name its
    serving certificate must carry, the CAs that must verify it, and a path of its group."""

    service_path: str
    port: int
    server_name: str
    ca_pem: bytes
    path: str


def name_of(item: Any) -> str:
    """An APIService's name for a message, or a stand-in when it has none that can be shown."""
    metadata = item.get("metadata") if isinstance(item, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9.-]{1,253}", name) else "(unnamed)"


def endpoint(item: Any) -> Endpoint | None:
    """Where the APIService ``item`` is served; None when kube-apiserver serves it itself
    (no Service, or no caBundle)."""
    spec = _mapping(_mapping(item, "the APIService").get("spec"), "spec")
    service = spec.get("service")
    if service is None or not spec.get("caBundle"):
        return None
    service = _mapping(service, "spec.service")
    if not service.get("name"):
        return None
    name = _matching(service.get("name"), _LABEL, "spec.service.name", "a DNS label")
    namespace = _matching(service.get("namespace"), _LABEL, "spec.service.namespace", "a DNS label")
    port = service.get("port", 443)
    if type(port) is not int or not 1 <= port <= 65535:
        raise ValueError("spec.service.port is not a port number (1-65535)")
    group = _matching(spec.get("group"), _SUBDOMAIN, "spec.group", "a DNS subdomain")
    version = _matching(spec.get("version"), _LABEL, "spec.version", "a DNS label")
    ca_bundle = spec.get("caBundle")
    try:
        if not isinstance(ca_bundle, str):
            raise TypeError
        ca_pem = base64.b64decode(ca_bundle, validate=True)
    except (TypeError, binascii.Error):
        raise ValueError("spec.caBundle is not base64 text") from None
    return Endpoint(service_path=f"/api/v1/namespaces/{namespace}/services/{name}", port=port,
                    server_name=f"{name}.{namespace}.svc", ca_pem=ca_pem, path=f"/apis/{group}/{version}")


def host_of(service: Any) -> str | None:
    """Where a Service points: its externalName (type ExternalName) or its clusterIP; None
    when it has neither (a headless Service)."""
    spec = _mapping(_mapping(service, "the Service").get("spec"), "the Service's spec")
    field = "externalName" if spec.get("type") == "ExternalName" else "clusterIP"
    host = spec.get(field)
    if not host or host == "None":
        return None
    return _matching(host, _HOST, f"the Service's spec.{field}", "a host name or IP address")


def _mapping(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object")
    return value


def _matching(value: Any, pattern: re.Pattern[str], field: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{field} is not {what}")
    return value
