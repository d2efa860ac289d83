"""The load balancer in front of the apiservers of a sandbox with 2 or more control planes.

HAProxy, as kubeadm's HA guide ("Options for Software Load Balancing") runs it: a static
pod on a control-plane node, in TCP mode, so that TLS goes through to the apiservers and
each client verifies an apiserver's own certificate. With ``--extension-apiserver`` it also
balances the two aggregated apiservers, which the APIService's Service leads to, as a
Service leads to the pods of a Deployment with two replicas. It goes round the apiservers
(``balance roundrobin``) and asks each one's /readyz every CHECK_INTERVAL_MS over TLS;
one that fails CHECK_FALL checks in a row gets no new connection until it passes one
again. A connection that an apiserver refuses is retried on another one (``option
redispatch``). Each kube-apiserver runs with a shutdown delay longer than CHECK_FALL checks
(``SHUTDOWN_DELAY_SECONDS``): told to stop, it fails /readyz but serves on, so the load
balancer has taken it out before it stops listening. (The aggregated apiservers have none:
a connection one refuses while it stops is retried.) Every connection is logged, with the
apiserver it went to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.core.kubeadm import LOOPBACK, static_pod

COMPONENT = "haproxy"
CONFIG_PATH = "/etc/haproxy/haproxy.cfg"
CHECK_INTERVAL_MS = 250
# Checks failed in a row before an apiserver is taken out. HAProxy bounds a check's connect
# and TLS handshake by min(timeout connect, inter), CHECK_INTERVAL_MS, whatever ``timeout
# check`` says. On a busy machine handshakes took 250-450 ms: with 1, slow checks took every
# apiserver out at once, and HAProxy closed the new connections it had no server for (the
# client saw an EOF in its TLS handshake; test_ha.py, clean-clone run AC). With 3, a
# stopping apiserver, which fails /readyz at once, is out within about 0.75 s and the
# checks' own time.
CHECK_FALL = 3
# Longer than CHECK_FALL checks and their own time on a busy machine.
SHUTDOWN_DELAY_SECONDS = 3
# How long a check may wait for /readyz's answer once its handshake is done.
CHECK_TIMEOUT_SECONDS = 2


@dataclass(frozen=True)
class Balanced:
    """One balanced service: where the load balancer listens, and the servers behind it."""

    name: str  # "apiserver", or "extension-apiserver" for the aggregated apiservers
    port: int
    server_ports: tuple[int, ...]


def server_name(service: str, index: int) -> str:
    return f"{service}-{index + 1}"


def config(services: list[Balanced]) -> str:
    sections = []
    for service in services:
        servers = "\n".join(f"  server {server_name(service.name, i)} {LOOPBACK}:{port}"
                            for i, port in enumerate(service.server_ports))
        sections.append(f"""frontend {service.name}
  bind {LOOPBACK}:{service.port}
  default_backend {service.name}

backend {service.name}
  balance roundrobin
  option httpchk
  http-check send meth GET uri /readyz
  http-check expect status 200
  default-server inter {CHECK_INTERVAL_MS} fall {CHECK_FALL} rise 1 check check-ssl verify none
{servers}
""")
    return f"""# careconcile sandbox: the load balancer (reconciler/core/loadbalancer.py)
global
  log stdout format raw local0
  maxconn 2000

defaults
  mode tcp
  log global
  option tcplog
  timeout connect 2s
  timeout check {CHECK_TIMEOUT_SECONDS}s
  timeout client 1h
  timeout server 1h
  retries 3
  option redispatch

""" + "\n".join(sections)


def manifest(*, library_path: str) -> dict[str, Any]:
    """``library_path``: where the unpacked package's libraries are (LD_LIBRARY_PATH)."""
    env = {"LD_LIBRARY_PATH": library_path} if library_path else None
    return static_pod(COMPONENT, [COMPONENT, "-db", "-f", CONFIG_PATH], env=env, grace_seconds=5)
