"""Small tools the integration tests share: API clients, certificates, waiting."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import socket
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from reconciler.core import kubeadm, pki
from reconciler.core.pki import KeyPair, KeySpec, LeafRequest
from reconciler._process import process_alive
from reconciler.errors import BinariesMissingError
from reconciler.sandbox import binaries
from reconciler.sandbox._lifecycle import _runs_from
from reconciler.sandbox._paths import SandboxPaths


def core_api(kubeconfig: str, context: str | None = None) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=kubeconfig, context=context))


def node_file(info, node_index: int, absolute: str) -> Path:
    return Path(info.nodes[node_index].root) / absolute.lstrip("/")


def cluster_ca(info) -> KeyPair:
    root = 0  # the first control-plane node holds the CA of record
    cert = pki.load_certificates(node_file(info, root, kubeadm.CLUSTER_CA_CERT).read_bytes(), source="ca.crt")[0]
    key = pki.load_private_key(node_file(info, root, kubeadm.CLUSTER_CA_KEY).read_bytes(), source="ca.key")
    return KeyPair(cert, key)


def client_cert(ca: KeyPair, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
    return pki.issue_leaf(ca, LeafRequest(user, organizations=groups, client=True, key=KeySpec("ECDSA", 256)),
                          now=dt.datetime.now(dt.timezone.utc))


def missing_prerequisite(message: str) -> None:
    """A test that cannot run here: in CI a failure (every integration test runs there),
    elsewhere a skip that says what to install."""
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_extension_apiserver() -> None:
    try:
        binaries.require_extension_apiserver()
    except BinariesMissingError as exc:
        missing_prerequisite(f"{exc.message} (run `make extension-apiserver`)")


def with_client_certificate(context: ssl.SSLContext, client: KeyPair) -> ssl.SSLContext:
    """``context`` presenting ``client``'s certificate (ssl loads a chain only from files:
    a temporary 0600 file, removed at once)."""
    with tempfile.TemporaryDirectory() as scratch:
        cert_file, key_file = Path(scratch, "c.crt"), Path(scratch, "c.key")
        cert_file.write_bytes(client.cert_pem)
        key_file.touch(0o600)
        key_file.write_bytes(client.key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context


def request_as(server: str, ca_file: Path, client: KeyPair, method: str, path: str,
               body: dict | None = None) -> tuple[int, Any]:
    """One HTTPS request to the apiserver authenticated by ``client``'s certificate."""
    context = with_client_certificate(ssl.create_default_context(cafile=str(ca_file)), client)
    url = urlsplit(server)
    connection = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=10)
    try:
        connection.request(method, path, body=json.dumps(body) if body else None,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def supervisor_state(name: str) -> dict:
    return json.loads(SandboxPaths.named(name).state.read_text())


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on: its socket inodes matched against /proc/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def is_listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def sandbox_processes(directory: str | Path) -> list[int]:
    """Live processes started from a sandbox: named in their command line or running in it."""
    return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if _runs_from(pid, Path(directory)) and process_alive(pid)]


def merged_kubeconfig(paths: list[Path]) -> str:
    """A stand-in for KUBECONFIG=a:b:c until careconcile reads it itself: the files merged by
    kubectl's rules (clientcmd's loading rules), the first file that names a cluster, user or
    context wins it, and the first that sets current-context wins that. Relative file
    references are not resolved: the files must embed what they use."""
    from reconciler.core import kubeconfig

    merged: dict = {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": []}
    for path in paths:
        document = kubeconfig.parse(path.read_text(), source=str(path))
        for section in ("clusters", "users", "contexts"):
            known = {entry["name"] for entry in merged[section]}
            merged[section] += [entry for entry in document.get(section) or [] if entry["name"] not in known]
        if document.get("current-context") and not merged.get("current-context"):
            merged["current-context"] = document["current-context"]
    return kubeconfig.dump(merged)
