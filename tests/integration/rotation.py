"""Tools for the rotation tests: the CLI as a subprocess, a polling client, end-state checks."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography import x509

from reconciler.core import kubeadm, kubeconfig, pki
from reconciler.core.authorities import CLUSTER_CA
from reconciler.shell import probes
from reconciler.shell.kube import KubeClient, kubeconfig_target, load_kubeconfig

PRIVATE_KEY_HEADER = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
ROOT = Path(__file__).resolve().parents[2]
# A rotation is sampled densely: some request of the Poller ends at least this often.
POLL_GAP_SECONDS = 3.0


@dataclass
class CLIResult:
    returncode: int
    stdout: str
    stderr: str


def careconcile(*args: str, workspace: Path, env: dict[str, str] | None = None, timeout: float = 900,
                stdin: str | None = None) -> CLIResult:
    """Run the CLI as a user would; its output must never hold a private key."""
    completed = subprocess.run(
        [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "CARECONCILE_WORKSPACE": str(workspace), **(env or {})}, cwd=ROOT,
        input=stdin if stdin is not None else "",
    )
    result = CLIResult(completed.returncode, completed.stdout, completed.stderr)
    assert_no_private_key(result.stdout.encode() + result.stderr.encode(), f"output of careconcile {' '.join(args)}")
    return result


def assert_no_private_key(data: bytes, where: str) -> None:
    assert not PRIVATE_KEY_HEADER.search(data), f"a private key appears in {where}"


def assert_no_private_key_in_files(directory: Path) -> None:
    """Logs and plans hold public data only (kubeconfigs and state files may hold keys)."""
    for path in directory.rglob("*"):
        if path.is_file() and (path.suffix in (".log", ".json") or path.name.endswith(".log")):
            assert_no_private_key(path.read_bytes(), str(path))


def set_rotation(spec: Path, value: int, *authorities: str) -> None:
    """Set the rotation counter of these authorities (the cluster CA if none is named) in
    every cluster of the spec, as a user edits it."""
    text = spec.read_text()
    for authority in authorities or ("clusterCA",):
        text, count = re.subn(rf"(\b{authority}:\n\s+rotation: )\d+", rf"\g<1>{value}", text)
        assert count, f"{spec} has no {authority}.rotation"
    spec.write_text(text)


def record_ca(info) -> pki.KeyPair:
    node = Path(info.nodes[0].root)
    key = pki.load_private_key((node / kubeadm.CLUSTER_CA_KEY.lstrip("/")).read_bytes(), source="ca.key")
    for cert in pki.load_certificates((node / kubeadm.CLUSTER_CA_CERT.lstrip("/")).read_bytes(), source="ca.crt"):
        if pki.key_matches_cert(key, cert):
            return pki.KeyPair(cert, key)
    raise AssertionError("ca.key matches no certificate in ca.crt")


@dataclass
class Poller:
    """Clients that read the admin kubeconfig afresh for every request, round-robin over its
    contexts (one per apiserver), as a user's kubectl would during the rotation. Several
    poll at once (``clients``), so that even a short rotation is sampled densely."""

    kubeconfig: Path
    servers: set[str]  # contexts of other clusters in the same file are not polled
    interval: float = 0.05
    # Where the kubeconfig's text comes from, if not the file (admin mode: the Secret
    # <name>-kubeconfig of the management cluster, fetched afresh for every request).
    read: Callable[[], str] | None = None
    clients: int = 2
    # What each request reads: a namespace, or through the aggregation layer an aggregated API.
    path: str = "/api/v1/namespaces/kube-system"
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    per_server: dict[str, int] = field(default_factory=dict)
    # When each request ended (time.monotonic()), and when polling started and stopped.
    finished: list[float] = field(default_factory=list)
    span: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._count = threading.Lock()
        # ``read`` may use a connection of its own, which threads must not share.
        self._read = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(offset,), daemon=True)
                         for offset in range(self.clients)]

    def __enter__(self) -> "Poller":
        self.span = (time.monotonic(), 0.0)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.span = (self.span[0], time.monotonic())

    def longest_gap(self) -> float:
        """The longest time, in seconds, in which no request ended: from the start to the
        first, between two, and from the last to the end."""
        times = [self.span[0], *sorted(self.finished), self.span[1]]
        return max(later - earlier for earlier, later in zip(times, times[1:]))

    def _text(self) -> str:
        if self.read is None:
            return self.kubeconfig.read_text()
        with self._read:
            return self.read()

    def _run(self, turn: int) -> None:
        while not self._stop.is_set():
            server = None
            try:
                text = self._text()
                document = kubeconfig.parse(text, source=str(self.kubeconfig))
                servers = {c["name"]: c["cluster"]["server"] for c in document["clusters"]}
                contexts = [c["name"] for c in document["contexts"] if servers.get(c["context"]["cluster"]) in self.servers]
                context = contexts[turn % len(contexts)]
                turn += 1
                target = kubeconfig_target(text, source=str(self.kubeconfig), context=context,
                                           base=self.kubeconfig.parent)
                with KubeClient(target, timeout=10) as client:
                    client.get(self.path)
                server = target.server
            except Exception as exc:  # every failure counts, whatever its kind
                self.failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
            with self._count:
                self.requests += 1
                self.finished.append(time.monotonic())
                if server is not None:
                    self.per_server[server] = self.per_server.get(server, 0) + 1
            self._stop.wait(self.interval)


def bundle_fingerprints(pem: bytes, source: str) -> list[str]:
    return [pki.fingerprint(cert) for cert in pki.load_certificates(pem, source=source)]


def assert_nodes_trust_only(info, ca: x509.Certificate) -> None:
    """Every node file of the cluster CA trusts exactly ``ca``, every leaf comes from it, and
    every apiserver presents a chain to it."""
    expected = [pki.fingerprint(ca)]
    for node in info.nodes:
        root = Path(node.root)
        assert bundle_fingerprints((root / "etc/kubernetes/pki/ca.crt").read_bytes(), node.name) == expected, node.name
        for site in CLUSTER_CA.bundles:
            path = root / site.path.lstrip("/")
            if site.form == "kubeconfig" and path.is_file():
                document = kubeconfig.parse(path.read_text(), source=str(path))
                for pem in kubeconfig.ca_certificates(document, source=str(path)):
                    assert bundle_fingerprints(pem, str(path)) == expected, str(path)
                for user, cert_pem, _ in kubeconfig.embedded_credentials(document):
                    assert pki.is_signed_by(pki.load_certificates(cert_pem, source=user)[0], ca), f"{path} {user}"
        pem = root / kubeadm.KUBELET_CLIENT_CERT.lstrip("/")
        assert pki.is_signed_by(pki.load_certificates(pem.read_bytes(), source=str(pem))[0], ca), str(pem)
    for server in info.apiservers:
        assert probes.serves_chain_to(server, pki.cert_pem(ca)), f"{server} does not present a chain to the CA"


def assert_cluster_trusts_only(info, ca: x509.Certificate, workspace_kubeconfig: Path | None = None) -> None:
    """Every consumer of the cluster CA trusts exactly ``ca`` and every leaf comes from it."""
    assert_nodes_trust_only(info, ca)
    expected = [pki.fingerprint(ca)]
    with KubeClient(load_kubeconfig(Path(info.kubeconfig))) as client:
        configmaps = client.list("/api/v1/configmaps", field_selector="metadata.name=kube-root-ca.crt")
        assert configmaps, "no kube-root-ca.crt ConfigMaps"
        for configmap in configmaps:
            where = f"{configmap['metadata']['namespace']}/kube-root-ca.crt"
            assert bundle_fingerprints(configmap["data"]["ca.crt"].encode(), where) == expected, where
        info_kubeconfig = client.get("/api/v1/namespaces/kube-public/configmaps/cluster-info")["data"]["kubeconfig"]
        for pem in kubeconfig.ca_certificates(kubeconfig.parse(info_kubeconfig, source="cluster-info"),
                                              source="cluster-info"):
            assert bundle_fingerprints(pem, "cluster-info") == expected
        nodes = client.list("/api/v1/nodes")
        assert nodes and all(any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
                             for n in nodes), "not every node is Ready"
    if workspace_kubeconfig is not None:
        with KubeClient(load_kubeconfig(workspace_kubeconfig)) as client:
            assert client.get("/api")["kind"] == "APIVersions"


def rejects_client_of(info, ca: pki.KeyPair, trust: x509.Certificate) -> bool:
    """Whether every apiserver answers 401 to a client certificate from ``ca``."""
    probe = pki.issue_leaf(ca, pki.LeafRequest("rotation-test", client=True, key=pki.KeySpec("ECDSA", 256)),
                           now=dt.datetime.now(dt.timezone.utc))
    return all(probes.accepts_client_certificate(server, ca_pem=pki.cert_pem(trust), cert_pem=probe.cert_pem,
                                                 key_pem=probe.key_pem) is None for server in info.apiservers)


def careconcile_in_process(*args: str, workspace: Path) -> CLIResult:
    """The CLI's own entry point run in this process, for tests that call it after every
    action: the same code as :func:`careconcile` without starting an interpreter."""
    from reconciler.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        returncode = main([*args, "--workspace", str(workspace)])
    result = CLIResult(returncode, stdout.getvalue(), stderr.getvalue())
    assert_no_private_key(result.stdout.encode() + result.stderr.encode(), f"output of careconcile {' '.join(args)}")
    return result


def plan_json(spec: Path, workspace: Path, *, in_process: bool = False) -> dict:
    run = careconcile_in_process if in_process else careconcile
    result = run("plan", str(spec), "--format", "json", workspace=workspace)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def stop_at_every_action_boundary(spec: Path, workspace: Path, planned: list[str],
                                  remaining: Callable[[], list[str]], *, signal_name: str = "SIGKILL",
                                  after_each: Callable[[CLIResult, str], None] | None = None) -> int:
    """Run ``apply SPEC`` again and again, each run stopped by ``signal_name`` right after its
    first action (the executor's test hook sends it), until none of the ``planned`` action
    ids remains: after each stop, planning again (``remaining``, the ids of the actions
    left) yields exactly the actions that were left. A SIGKILLed run leaves its lock for the next run to take over;
    a SIGTERMed one exits 143 after its cleanup. ``after_each`` looks at each stopped run
    (and the action it did) before the next one starts. Returns the number of runs, which
    is the number of actions first planned."""
    from reconciler.shell.executor import CRASH_AFTER_ENV, CRASH_SIGNAL_ENV

    expected = {"SIGKILL": -9, "SIGTERM": 143}[signal_name]
    left, runs = list(planned), 0
    while left:
        result = careconcile("apply", str(spec), "--auto-approve", workspace=workspace,
                             env={CRASH_AFTER_ENV: "1", CRASH_SIGNAL_ENV: signal_name})
        assert result.returncode == expected, \
            f"run {runs + 1} did not end by {signal_name}: {result.returncode}\n{result.stdout[-2000:]}{result.stderr}"
        runs += 1
        if after_each is not None:
            after_each(result, left[0])
        now = remaining()
        # Planning again yields exactly the actions that were left, whatever moment the run stopped at.
        assert now == left[1:], f"after run {runs} ({left[0]}): plan differs"
        left = now
    assert runs == len(planned)
    return runs
