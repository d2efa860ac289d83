"""Which API servers go through the proxy of the environment: ``NO_PROXY`` as Go's
``golang.org/x/net/http/httpproxy`` (what net/http's ``ProxyFromEnvironment`` and so
client-go apply) reads it. Pure: the caller passes the variables' values.

The rules, as ``httpproxy.config.useProxy`` and ``init`` have them (golang.org/x/net v0.57.0,
and as vendored in Go 1.26.8):

- ``localhost`` and every loopback address (127.0.0.0/8, ::1) never go through the proxy
  of the environment, whatever ``NO_PROXY`` says. (A kubeconfig's ``proxy-url`` is not
  this rule: client-go uses it for every request, loopback included.)
- ``NO_PROXY`` is a comma-separated list, case-insensitive, blanks around entries ignored:
  ``*`` alone: no host is proxied; an IP or CIDR (``10.0.0.0/8``, ``fd00::/8``) matches
  the server's address when the server is named by an IP; ``IP:port`` / ``[IPv6]:port``
  matches that address on that port only; a domain ``example.com`` matches itself and every
  name under it, ``.example.com`` and ``*.example.com`` only the names under it, each
  optionally with ``:port``. Domains never match a server named by an IP, nor IPs a name.
  A malformed entry (``:80``) is ignored, as Go ignores it.

Go also converts international names to their ASCII form (IDNA) first; careconcile
lower-cases them, which is the same for ASCII names.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class _Rule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # a CIDR or one address
    domain: str | None = None  # with its leading dot
    match_self: bool = False   # "example.com" matches example.com as well as names under it
    port: str = ""             # "" for any port


def _split_host_port(text: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort, for what NO_PROXY entries hold: None when there is no port."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1:].startswith(":"):
            return None
        return text[1:end], text[end + 2:]
    if text.count(":") != 1:
        return None
    host, port = text.split(":")
    return host, port


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_no_proxy(value: str) -> tuple[_Rule, ...] | None:
    """The rules of a NO_PROXY value; None for ``*`` (nothing is proxied)."""
    rules: list[_Rule] = []
    for entry in value.split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return None
        if "/" in entry:
            try:
                rules.append(_Rule(network=ipaddress.ip_network(entry, strict=False)))
            except ValueError:
                pass  # Go: not a CIDR, so a host (that matches nothing a server is named)
            else:
                continue
        split = _split_host_port(entry)
        host, port = split if split is not None else (entry, "")
        if split is not None and not host:
            continue  # ":80": no host part, ignored
        address = _address(host)
        if address is not None:
            rules.append(_Rule(network=ipaddress.ip_network(address), port=port))
            continue
        if host.startswith("*."):
            host = host[1:]
        match_self = not host.startswith(".")
        rules.append(_Rule(domain=host if not match_self else "." + host, match_self=match_self, port=port))
    return tuple(rules)


def uses_proxy(no_proxy: str, host: str, port: int) -> bool:
    """Whether a request to ``host:port`` goes through the environment's proxy, given the
    value of NO_PROXY (or no_proxy)."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return False
    address = _address(host)
    if address is not None and address.is_loopback:
        return False
    rules = parse_no_proxy(no_proxy)
    if rules is None:
        return False
    for rule in rules:
        if rule.port and rule.port != str(port):
            continue
        if rule.network is not None:
            if address is not None and address.version == rule.network.version and address in rule.network:
                return False
        elif address is None and rule.domain is not None:
            if host.endswith(rule.domain) or (rule.match_self and host == rule.domain[1:]):
                return False
    return True
