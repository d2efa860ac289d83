"""Tools for the rotation tests: the CLI in a process of its own, a polling client, end-state checks."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import datetime as dt
import http.client
import io
import json
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from cryptography import x509

from reconciler.core import kubeadm, kubeconfig, pki
from reconciler.core.authorities import CLUSTER_CA
from reconciler.shell import probes
from reconciler.shell.kube import KubeClient, KubeconfigClient, kubeconfig_target, load_kubeconfig
from reconciler.shell.session import PLANNED_PREFIX
from .launcher import launcher

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
                stdin: str | None = None, cwd: Path = ROOT) -> CLIResult:
    """Run the CLI as a user would, in a process of its own (forked from one that imported
    careconcile already: launcher.py); its output must never hold a private key."""
    completed = launcher().run(
        list(args), env={**os.environ, "CARECONCILE_WORKSPACE": str(workspace), **(env or {})}, cwd=cwd,
        stdin=stdin if stdin is not None else "", timeout=timeout,
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


# An apiserver that is shutting down answers 503 with Retry-After: 1 to a request that still
# came in on a connection opened before (kube-apiserver's WithWaitGroup filter: "there is a good
# chance the client hit a different server"); the aggregator's pooled connection to an
# aggregated apiserver is one. client-go, so kubectl, waits and asks again, up to 10 times.
RETRY_AFTER_BUDGET_SECONDS = 5.0


@dataclass
class Poller:
    """Clients that read the admin kubeconfig afresh for every request, round-robin over its
    contexts (one per apiserver), as a user's kubectl would during the rotation. Several
    poll at once (``clients``), staggered, so that even a short rotation is sampled densely:
    each client starts a request every ``interval`` seconds (at once if one took longer).

    Each request is a new TLS handshake on both ends, about 8 ms of CPU here and as much in
    the apiserver. With a request every 50 ms after the last one ended (29 a second), one
    Poller kept 0.45 of the 2 cores busy, and the pollers of the suite's rotations together
    about a quarter of its CPU (docs/development.md). At 10 a second, a failure that lasts
    0.1 s is still sampled; what a rotation can break lasts longer (a restart, a bundle or
    a kubeconfig not yet rewritten)."""

    kubeconfig: Path
    servers: set[str]  # contexts of other clusters in the same file are not polled
    interval: float = 0.2
    # Where the kubeconfig's text comes from, if not the file (admin mode: the Secret
    # <name>-kubeconfig of the management cluster, fetched afresh for every request).
    read: Callable[[], str] | None = None
    clients: int = 2
    # What each request reads: a namespace, or through the aggregation layer an aggregated API.
    path: str = "/api/v1/namespaces/kube-system"
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)  # time.time() of each failure, in the order of failures
    # Answers that said Retry-After, asked again after that wait as kubectl (client-go) does;
    # the request counts as failed only if no answer within the budget was a success.
    retried: list[str] = field(default_factory=list)
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

    def longest_gap(self, until: float | None = None) -> float:
        """The longest time, in seconds, in which no request ended: from the start to the
        first, between two, and from the last to the end (or to ``until``, a time.time())."""
        end = self.span[1] if until is None else until - time.time() + time.monotonic()
        times = [self.span[0], *sorted(t for t in self.finished if t <= end), end]
        return max(later - earlier for earlier, later in zip(times, times[1:]))

    def failures_before(self, moment: float) -> list[str]:
        """The failures of requests that ended before ``moment`` (a time.time())."""
        return [failure for failure, at in zip(self.failures, self.failed_at) if at < moment]

    def _text(self) -> str:
        if self.read is None:
            return self.kubeconfig.read_text()
        with self._read:
            return self.read()

    def _run(self, turn: int) -> None:
        due = time.monotonic() + self.interval * turn / self.clients
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            # The next start on the schedule; after a request that ran past it, an interval on.
            now = time.monotonic()
            due = due + self.interval if due + self.interval > now else now + self.interval
            server = failure = None
            retried: list[str] = []
            try:
                text = self._text()
                document = kubeconfig.parse(text, source=str(self.kubeconfig))
                servers = {c["name"]: c["cluster"]["server"] for c in document["clusters"]}
                contexts = [c["name"] for c in document["contexts"] if servers.get(c["context"]["cluster"]) in self.servers]
                context = contexts[turn % len(contexts)]
                turn += 1
                target = kubeconfig_target(text, source=str(self.kubeconfig), context=context,
                                           base=self.kubeconfig.parent)
                said: list[str] = []
                with KubeClient(target, timeout=10, backoff_budget=RETRY_AFTER_BUDGET_SECONDS,
                                log=said.append) as client:
                    client.get(self.path)
                guessed = [line for line in said if "(Retry-After)" not in line]
                if guessed:  # a 5xx without Retry-After: kubectl would have failed at once
                    raise AssertionError(guessed[0])
                server = target.server
                retried = said
            except Exception as exc:  # every failure counts, whatever its kind
                failure = f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}"
            with self._count:
                if failure is not None:
                    self.failures.append(failure)
                    self.failed_at.append(time.time())
                self.retried.extend(f"{time.strftime('%H:%M:%S')} {line}" for line in retried)
                self.requests += 1
                self.finished.append(time.monotonic())
                if server is not None:
                    self.per_server[server] = self.per_server.get(server, 0) + 1


def without_proxy(path: Path) -> Callable[[], str]:
    """A Poller's ``read``: the kubeconfig, read afresh, without its clusters' proxy-url, so
    that what a proxy logs is careconcile's traffic alone."""
    def read() -> str:
        document = kubeconfig.parse(path.read_text(), source=str(path))
        for entry in document["clusters"]:
            entry["cluster"].pop("proxy-url", None)
        return kubeconfig.dump(document)
    return read


def through_load_balancer(info) -> Callable[[], str]:
    """A Poller's ``read``: the sandbox's kubeconfig, read afresh, with every apiserver
    replaced by the load balancer in front of them (sandboxes with several control planes)."""
    def read() -> str:
        text = Path(info.kubeconfig).read_text()
        for server in info.apiservers:
            text = text.replace(server, info.load_balancer)
        return text
    return read


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
        assert probes.serves_chain_to(server, pki.cert_pem(ca), server_name=info.tls_server_name), \
            f"{server} does not present a chain to the CA"


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
                                                 key_pem=probe.key_pem, server_name=info.tls_server_name) is None
               for server in info.apiservers)


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


# --- what a user's cluster has beside careconcile's sites ------------------------------------

def add_foreign_cluster(kubeconfig_path: Path) -> dict:
    """A user's kubeconfig often reaches other clusters too; a rotation must leave them be."""
    document = kubeconfig.parse(kubeconfig_path.read_text(), source=str(kubeconfig_path))
    other = pki.new_ca("other-cluster", now=dt.datetime.now(dt.timezone.utc), key=pki.KeySpec("ECDSA", 256))
    client = pki.issue_leaf(other, pki.LeafRequest("me", client=True, key=pki.KeySpec("ECDSA", 256)),
                            now=dt.datetime.now(dt.timezone.utc))
    foreign = kubeconfig.build(endpoints=[kubeconfig.Endpoint("elsewhere", "https://127.0.0.1:1")],
                               ca_pem=other.cert_pem, user="me-elsewhere",
                               credentials=kubeconfig.ClientCredentials(cert_pem=client.cert_pem,
                                                                        key_pem=client.key_pem))
    for key in ("clusters", "users", "contexts"):
        document[key] = document[key] + foreign[key]
    kubeconfig_path.write_text(kubeconfig.dump(document))
    return {key: foreign[key] for key in ("clusters", "users", "contexts")}


WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


def add_webhook_trusting(info, ca: pki.KeyPair) -> pki.KeyPair:
    """A webhook whose caBundle holds the cluster CA beside its own CA, as tools that copy
    the cluster CA into webhooks leave it. Its rules match nothing, so it is never called."""
    own = pki.new_ca("webhook-ca", now=dt.datetime.now(dt.timezone.utc), key=pki.KeySpec("ECDSA", 256))
    bundle = base64.b64encode(ca.cert_pem + own.cert_pem).decode()
    with KubeconfigClient(Path(info.kubeconfig)) as client:
        client.create(WEBHOOKS, {
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "rotation-test"},
            "webhooks": [{
                "name": "widgets.careconcile.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Ignore",
                "clientConfig": {"url": "https://127.0.0.1:1/validate", "caBundle": bundle},
                "rules": [{"apiGroups": ["careconcile.test"], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["widgets"]}],
            }],
        })
    return own


def webhook_bundle(info) -> list[str]:
    with KubeconfigClient(Path(info.kubeconfig)) as client:
        hook = client.get(f"{WEBHOOKS}/rotation-test")["webhooks"][0]
    pem = base64.b64decode(hook["clientConfig"]["caBundle"])
    return [pki.fingerprint(cert) for cert in pki.load_certificates(pem, source="caBundle")]


@dataclass
class Rotated:
    info: object
    workspace: Path
    poller: Poller
    old: pki.KeyPair
    new: pki.KeyPair
    foreign: dict
    webhook_ca: pki.KeyPair


def prepare_user_objects(info) -> tuple[dict, pki.KeyPair, pki.KeyPair]:
    """What a user's cluster has beside careconcile's sites: another cluster in the same
    kubeconfig and a webhook that trusts the cluster CA."""
    foreign = add_foreign_cluster(Path(info.kubeconfig))
    old = record_ca(info)
    return foreign, old, add_webhook_trusting(info, old)


def assert_polled_without_failure(poller: Poller, servers: int, max_gap: float = POLL_GAP_SECONDS) -> None:
    """No request failed, requests came often (some ended at least every ``max_gap``
    seconds), and they went to ``servers`` servers."""
    assert poller.failures == [], "\n".join(poller.failures[:10])
    assert poller.requests > 100
    # Each Retry-After is a request that raced one apiserver's shutdown: rare, not a way through.
    assert len(poller.retried) <= poller.requests // 100, "\n".join(poller.retried[:10])
    assert poller.longest_gap() < max_gap, f"no request for {poller.longest_gap():.1f}s"
    assert len(poller.per_server) == servers  # the client really went to every one


def assert_rotated(rotated: Rotated) -> None:
    """Only the new CA is trusted anywhere; the old CA's clients are rejected; the other
    cluster and the webhook's own CA are untouched; nothing is left to do."""
    info, workspace, old, new = rotated.info, rotated.workspace, rotated.old, rotated.new
    after = kubeconfig.parse(Path(info.kubeconfig).read_text(), source=info.kubeconfig)
    for key, entries in rotated.foreign.items():
        assert all(entry in after[key] for entry in entries), f"the other cluster's {key} changed"
    assert pki.fingerprint(new.cert) != pki.fingerprint(old.cert)
    workspace_kubeconfig = workspace / info.name / f"{info.name}-kubeconfig"
    assert workspace_kubeconfig.stat().st_mode & 0o777 == 0o600
    assert_cluster_trusts_only(info, new.cert, workspace_kubeconfig)
    assert webhook_bundle(info) == [pki.fingerprint(new.cert), pki.fingerprint(rotated.webhook_ca.cert)]
    assert rejects_client_of(info, old, trust=new.cert), "a client certificate from the old CA is still accepted"
    assert not rejects_client_of(info, new, trust=new.cert)

    again = careconcile("plan", info.spec, "--detailed-exitcode", workspace=workspace)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes." in again.stdout
    logs = list((workspace / info.name / "log").glob("apply-*/apply.log"))
    assert logs and "finished" in logs[0].read_text()
    assert_no_private_key_in_files(workspace)


# --- etcd's health, sampled ------------------------------------------------------------------

class EtcdSampler:
    """Every ``interval`` seconds, every member's /health at once, with the first control
    plane's healthcheck-client pair and trusting its etcd/ca.crt, read afresh each sample."""

    def __init__(self, urls: list[str], pki: Path, interval: float = 0.5) -> None:
        self.urls, self.pki, self.interval = urls, pki, interval
        self.samples: list[tuple[float, int]] = []  # (time.time(), members answering health true)
        self.unreadable = 0
        self.errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(urls))

    @property
    def quorum(self) -> int:
        return len(self.urls) // 2 + 1

    def without_quorum(self) -> list[float]:
        return [when for when, healthy in self.samples if healthy < self.quorum]

    def __enter__(self) -> "EtcdSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._pool.shutdown(wait=True)

    def _context(self) -> ssl.SSLContext | None:
        """The client's TLS context from the files as they are now; None if they do not make
        one three times in a row (a certificate replaced, its key not yet)."""
        for _ in range(3):
            try:
                context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
                context.load_cert_chain(self.pki / "healthcheck-client.crt", self.pki / "healthcheck-client.key")
                return context
            except (OSError, ssl.SSLError):
                time.sleep(0.05)
        return None

    def _healthy(self, url: str, context: ssl.SSLContext) -> bool:
        parts = urlsplit(url)
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=1.0)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            body = json.loads(response.read() or b"null")
            return response.status == 200 and isinstance(body, dict) and body.get("health") == "true"
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError) as exc:
            key = type(exc).__name__
            self.errors[key] = self.errors.get(key, 0) + 1
            return False
        finally:
            connection.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            context = self._context()
            if context is None:
                self.unreadable += 1
            else:
                when = time.time()
                answers = list(self._pool.map(lambda url: self._healthy(url, context), self.urls))
                self.samples.append((when, sum(answers)))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


# --- stopping a rotation after every action ---------------------------------------------------

def stop_at_every_action_boundary(spec: Path, workspace: Path, planned: list[str],
                                  remaining: Callable[[], list[str]], *, signal_name: str = "SIGKILL",
                                  after_each: Callable[[CLIResult, str], None] | None = None) -> int:
    """Run ``apply SPEC`` again and again, each run stopped by ``signal_name`` right after its
    first action (the executor's test hook sends it), until none of the ``planned`` action
    ids remains: each run re-derives its plan from the spec and the live cluster, and that
    plan is exactly the actions that were left, whatever moment the run before stopped at.
    Each run's log records the ids it planned for the authority it worked on, and its
    progress the number of actions planned for all of them; once all are done, planning
    again (``remaining``, the ids of the actions left) yields none. A SIGKILLed run leaves
    its lock for the next run to take over; a SIGTERMed one exits 143 after its cleanup.
    ``after_each`` looks at each stopped run (and the action it did) before the next one
    starts. Returns the number of runs, which is the number of actions first planned."""
    from reconciler.shell.executor import CRASH_AFTER_ENV, CRASH_SIGNAL_ENV

    expected = {"SIGKILL": -9, "SIGTERM": 143}[signal_name]
    left, runs = list(planned), 0
    while left:
        logs_before = set(workspace.glob("*/log/*/*.log"))
        result = careconcile("apply", str(spec), "--auto-approve", workspace=workspace,
                             env={CRASH_AFTER_ENV: "1", CRASH_SIGNAL_ENV: signal_name})
        assert result.returncode == expected, \
            f"run {runs + 1} did not end by {signal_name}: {result.returncode}\n{result.stdout[-2000:]}{result.stderr}"
        runs += 1
        # The run's plan is exactly the actions that were left: its first authority's ids
        # (its log), and as many actions in all (its progress counts them).
        logs = sorted(set(workspace.glob("*/log/*/*.log")) - logs_before)
        assert len(logs) == 1, f"run {runs}: expected the log of one authority's run, found {logs}"
        lines = [line.split(PLANNED_PREFIX, 1)[1] for line in logs[0].read_text().splitlines()
                 if PLANNED_PREFIX in line]
        assert len(lines) == 1, f"run {runs}: {logs[0]} records no plan"
        ids = json.loads(lines[0])
        assert ids == left[:len(ids)], f"run {runs} ({left[0]}): its plan differs from the actions left"
        assert f"[1/{len(left)}] " in result.stdout, \
            f"run {runs} ({left[0]}): it did not plan {len(left)} actions in all:\n{result.stdout[-2000:]}"
        if after_each is not None:
            after_each(result, left[0])
        left = left[1:]
    assert remaining() == [], "after the last run, planning again still finds actions"
    assert runs == len(planned)
    return runs
