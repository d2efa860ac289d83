"""What the real binaries do while the front-proxy CA is replaced on disk, by hand, in the
order a rotation would (no careconcile code involved), measured on a sandbox of its own
with the extension apiserver (`sandbox up --extension-apiserver`):

  1. bundle:     pki/front-proxy-ca.crt := old + new CA
                 (extension-apiserver-authentication's requestheader-client-ca-file: does
                 the kube-apiserver add the new CA itself? if not, this script writes old + new)
  2. client:     pki/front-proxy-client.key, then .crt := a new pair from the new CA
  3. new only:   pki/front-proxy-ca.crt := new CA; then, as the kube-apiserver never drops a
                 CA from the ConfigMap, requestheader-client-ca-file := new CA

Neither kube-apiserver nor sample-apiserver is restarted. Throughout, a client lists
flunders through the aggregator (admin kubeconfig) every 0.2 s and counts failures. Each
component's pick-up is observed from outside:

- kube-apiserver's requestheader CA: a request straight to it with a client certificate
  (CN front-proxy-client) of the CA in question and X-Remote-User/X-Remote-Group headers
  authenticates (200) or not (401);
- sample-apiserver's: the same request straight to its port;
- kube-apiserver's proxy client certificate: an "observer" APIService
  (v1.observer.careconcile.dev, an ExternalName Service to a TLS server in this script on
  127.0.0.1) records the client certificate each proxied request and each availability
  check presents.

    .venv/bin/python hack/front-proxy-facts.py [--keep] [--settle SECONDS]

Sandboxes go under $CARECONCILE_SANDBOX_ROOT (default: a temporary directory); the sandbox
is stopped and removed at the end unless --keep. Only 127.0.0.1 is ever contacted. No key
is printed; the probes' keys stay in memory.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.client
import json
import os
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconciler import sandbox  # noqa: E402
from reconciler._files import atomic_write  # noqa: E402
from reconciler.core import extension_apiserver as extension  # noqa: E402
from reconciler.core import kubeadm, pki  # noqa: E402
from reconciler.core.pki import KeyPair, KeySpec, LeafRequest  # noqa: E402
from reconciler.sandbox import _api  # noqa: E402
from reconciler.sandbox._paths import ROOT_ENV, SandboxPaths, node_path  # noqa: E402
from reconciler.shell.kube._tls import _load_client_chain, tls_context  # noqa: E402

NAME = "fpfacts"
KEY = KeySpec("ECDSA", 256)
PROXY_CN = "front-proxy-client"
OBSERVER_GROUP = "observer.careconcile.dev"
OBSERVER_SERVICE = "fp-observer"
CONFIGMAP = f"/api/v1/namespaces/kube-system/configmaps/{extension.AUTHENTICATION_CONFIGMAP}"
WAIT = 150.0  # kube-apiserver resyncs files and the ConfigMap every minute: more than two rounds
POLL = 0.1


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def fingerprint_der(der: bytes) -> str:
    from cryptography import x509
    return pki.fingerprint(x509.load_der_x509_certificate(der))


# --- the observer: an aggregated "apiserver" that records the aggregator's client certificate

class Observer:
    """A TLS server on 127.0.0.1 that answers discovery for observer.careconcile.dev/v1 and
    records, per request, the time, the X-Remote-User and the client certificate's fingerprint."""

    def __init__(self, serving: KeyPair, trusted_pem: bytes) -> None:
        self.seen: list[tuple[float, str, str | None]] = []
        self.lock = threading.Lock()
        observer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                der = self.connection.getpeercert(binary_form=True)
                with observer.lock:
                    observer.seen.append((time.monotonic(), self.headers.get("X-Remote-User", ""),
                                          fingerprint_der(der) if der else None))
                body = json.dumps({"kind": "APIResourceList", "apiVersion": "v1",
                                   "groupVersion": f"{OBSERVER_GROUP}/v1", "resources": []}).encode()
                if not self.path.startswith(f"/apis/{OBSERVER_GROUP}/v1"):
                    self.send_response(404)
                    body = b"{}"
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _load_client_chain(context, serving.cert_pem, serving.key_pem)
        context.load_verify_locations(cadata=trusted_pem.decode())
        context.verify_mode = ssl.CERT_OPTIONAL  # record whatever verifies against old or new
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first_since(self, since: float, fingerprint: str, user_is_checker: bool) -> float | None:
        with self.lock:
            for at, user, seen in self.seen:
                if at >= since and seen == fingerprint and (user == "system:kube-aggregator") == user_is_checker:
                    return at
        return None

    def stop(self) -> None:
        self.server.shutdown()


# --- the steady client: flunders through the aggregator --------------------------------

@dataclass
class Poller:
    kubeconfig: Path
    results: list[tuple[float, bool, str]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with _api.Client(self.kubeconfig, timeout=5) as client:
            while not self.stopping.is_set():
                at = time.monotonic()
                try:
                    client.call("list", "GET", extension.flunders_path("default"))
                    client.call("observer", "GET", f"/apis/{OBSERVER_GROUP}/v1")
                    self.results.append((at, True, ""))
                except Exception as exc:  # noqa: BLE001 (any failure counts)
                    self.results.append((at, False, str(exc)[:160]))
                time.sleep(0.2)

    def between(self, start: float, end: float) -> tuple[int, int, list[str]]:
        window = [r for r in self.results if start <= r[0] < end]
        failures = [r[2] for r in window if not r[1]]
        return len(window), len(failures), failures[:3]


# --- probes -------------------------------------------------------------------------------

class Probes:
    def __init__(self, info: sandbox.SandboxInfo) -> None:
        root = Path(info.nodes[0].root)
        self.apiserver_port = int(info.apiservers[0].rsplit(":", 1)[1])
        self.apiserver_ca = node_path(root, kubeadm.CLUSTER_CA_CERT).read_bytes()
        self.ext_port = info.extension_apiserver["port"]
        self.ext_ca = node_path(root, extension.SERVING_CA_CERT).read_bytes()
        self.contexts: dict[tuple[str, str], ssl.SSLContext] = {}

    def _context(self, server_ca: bytes, ca: KeyPair) -> ssl.SSLContext:
        key = (pki.fingerprint(ca.cert), server_ca.decode()[:80])
        if key not in self.contexts:
            leaf = pki.issue_leaf(ca, LeafRequest(PROXY_CN, client=True, key=KEY), now=now())
            self.contexts[key] = tls_context(ca_pem=server_ca, cert_pem=leaf.cert_pem, key_pem=leaf.key_pem)
        return self.contexts[key]

    @staticmethod
    def _status(port: int, context: ssl.SSLContext, path: str) -> int:
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
        try:
            connection.request("GET", path, headers={"X-Remote-User": "fp-probe", "X-Remote-Group": "system:masters"})
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def kube_trusts(self, ca: KeyPair) -> bool:
        return self._status(self.apiserver_port, self._context(self.apiserver_ca, ca),
                            "/api/v1/namespaces/default") == 200

    def ext_trusts(self, ca: KeyPair) -> bool:
        return self._status(self.ext_port, self._context(self.ext_ca, ca), extension.flunders_path("default")) == 200


def wait(check: Callable[[], bool], start: float, timeout: float = WAIT) -> float | None:
    """Seconds from ``start`` until ``check`` holds, or None if it did not within ``timeout``."""
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except (OSError, ssl.SSLError, http.client.HTTPException):
            pass
        time.sleep(POLL)
    return None


def watch(checks: dict[str, Callable[[], bool]], start: float, timeout: float = WAIT) -> dict[str, float | None]:
    """Poll every check together; for each, the seconds from ``start`` until it first held."""
    first: dict[str, float | None] = {name: None for name in checks}
    while time.monotonic() - start < timeout and any(v is None for v in first.values()):
        for name, check in checks.items():
            if first[name] is None:
                try:
                    if check():
                        first[name] = time.monotonic() - start
                except (OSError, ssl.SSLError, http.client.HTTPException):
                    pass
        time.sleep(POLL)
    return first


def fmt(seconds: float | None, timeout: float = WAIT) -> str:
    # An upper bound: the first poll after the write includes its own TLS handshake.
    return f"{seconds:.2f} s" if seconds is not None else f"not within {timeout:.0f} s"


def configmap_cas(client: _api.Client) -> list[str]:
    data = client.call("read", "GET", CONFIGMAP).get("data") or {}
    pem = data.get("requestheader-client-ca-file", "").encode()
    return [pki.fingerprint(c) for c in pki.load_certificates(pem, source="configmap")] if pem.strip() else []


def set_configmap_cas(client: _api.Client, cas: list[KeyPair]) -> None:
    bundle = b"".join(ca.cert_pem for ca in cas).decode()
    client.kube.patch(CONFIGMAP, {"data": {"requestheader-client-ca-file": bundle}})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running")
    parser.add_argument("--settle", type=float, default=70.0,
                        help="after step 3, how long to watch that the ConfigMap stays new-only (default 70 s)")
    parser.add_argument("--dwell", type=float, default=10.0,
                        help="after each step's changes are seen, how long the client keeps listing flunders "
                             "before the next step (default 10 s)")
    args = parser.parse_args(argv)
    scratch = None
    if not os.environ.get(ROOT_ENV):
        scratch = tempfile.mkdtemp(prefix="front-proxy-facts-")
        os.environ[ROOT_ENV] = scratch
    paths = SandboxPaths.named(NAME)
    rows: list[tuple[str, str, str]] = []
    started = time.monotonic()
    print(f"front-proxy-facts: starting sandbox {NAME!r} under {paths.directory.parent}", file=sys.stderr)
    info = sandbox.up(NAME, control_planes=1, workers=0, extension_apiserver=True)
    poller: Poller | None = None
    observer: Observer | None = None
    try:
        root = Path(info.nodes[0].root)
        files = {name: node_path(root, f"{kubeadm.PKI_DIR}/{name}") for name in
                 ("front-proxy-ca.crt", "front-proxy-ca.key", "front-proxy-client.crt", "front-proxy-client.key")}
        old = KeyPair(pki.load_certificates(files["front-proxy-ca.crt"].read_bytes(), source="ca")[0],
                      pki.load_private_key(files["front-proxy-ca.key"].read_bytes(), source="ca key"))
        new = pki.new_ca("front-proxy-ca", now=now(), key=KEY)
        new_client = pki.issue_leaf(new, LeafRequest(PROXY_CN, client=True, key=KEY), now=now())
        old_client_fp = pki.fingerprint(pki.load_certificates(files["front-proxy-client.crt"].read_bytes(),
                                                              source="client")[0])
        probes = Probes(info)
        admin = _api.Client(Path(info.kubeconfig))

        # The observer APIService, routed like the extension apiserver's.
        observer_ca = pki.new_ca("fp-observer-ca", now=now(), key=KEY)
        observer_serving = pki.issue_leaf(observer_ca, LeafRequest(
            OBSERVER_SERVICE, server=True, dns_names=(f"{OBSERVER_SERVICE}.kube-system.svc",), key=KEY), now=now())
        observer = Observer(observer_serving, old.cert_pem + new.cert_pem)
        admin.create("observer Service", "/api/v1/namespaces/kube-system/services", {
            "metadata": {"name": OBSERVER_SERVICE, "namespace": "kube-system"},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1"}})
        admin.create("observer APIService", "/apis/apiregistration.k8s.io/v1/apiservices", {
            "metadata": {"name": f"v1.{OBSERVER_GROUP}"},
            "spec": {"group": OBSERVER_GROUP, "version": "v1", "groupPriorityMinimum": 1000, "versionPriority": 15,
                     "service": {"namespace": "kube-system", "name": OBSERVER_SERVICE, "port": observer.port},
                     "caBundle": base64.b64encode(observer_ca.cert_pem).decode()}})
        t = time.monotonic()
        ready = wait(lambda: extension.available(admin.call(
            "get", "GET", f"/apis/apiregistration.k8s.io/v1/apiservices/v1.{OBSERVER_GROUP}")), t, 60)
        if ready is None:
            raise SystemExit("front-proxy-facts: the observer APIService did not become Available")
        assert probes.kube_trusts(old) and probes.ext_trusts(old), "the old CA should be trusted at start"
        assert not probes.kube_trusts(new) and not probes.ext_trusts(new), "the new CA should not be trusted yet"
        assert configmap_cas(admin) == [pki.fingerprint(old.cert)]
        poller = Poller(Path(info.kubeconfig))
        threading.Thread(target=poller.run, daemon=True).start()
        time.sleep(1)

        # 1. bundle ---------------------------------------------------------------------
        print("front-proxy-facts: step 1, front-proxy-ca.crt := old + new", file=sys.stderr)
        t1 = time.monotonic()
        atomic_write(files["front-proxy-ca.crt"], old.cert_pem + new.cert_pem)
        seen = watch({"kube": lambda: probes.kube_trusts(new),
                      "cm": lambda: pki.fingerprint(new.cert) in configmap_cas(admin),
                      "ext": lambda: probes.ext_trusts(new)}, t1)
        kube_new, cm_new = seen["kube"], seen["cm"]
        rows.append(("1 bundle", "kube-apiserver accepts the new CA's front-proxy client (requestheader file reload)",
                     fmt(kube_new)))
        rows.append(("1 bundle", "kube-apiserver adds the new CA to the ConfigMap's requestheader-client-ca-file "
                                 "itself", "yes, " + fmt(cm_new) if cm_new is not None else "no, " + fmt(cm_new)))
        if cm_new is None:
            set_configmap_cas(admin, [old, new])
        ext_new = seen["ext"] if cm_new is not None else wait(lambda: probes.ext_trusts(new), time.monotonic())
        rows.append(("1 bundle", "sample-apiserver accepts the new CA's front-proxy client (ConfigMap watch)"
                     + ("" if cm_new is None else ", from the file write"), fmt(ext_new)))
        rows.append(("1 bundle", "ConfigMap requestheader-client-ca-file after step 1",
                     describe(configmap_cas(admin), old, new)))
        rows.append(("1 bundle", "old CA still accepted by kube-apiserver / sample-apiserver",
                     f"{yes(probes.kube_trusts(old))} / {yes(probes.ext_trusts(old))}"))
        time.sleep(args.dwell)
        end1 = time.monotonic()
        rows.append(("1 bundle", "requests through the aggregator failed", ratio(poller.between(t1, end1))))

        # 2. client ---------------------------------------------------------------------
        print("front-proxy-facts: step 2, front-proxy-client := new pair", file=sys.stderr)
        t2 = time.monotonic()
        atomic_write(files["front-proxy-client.key"], new_client.key_pem, kubeadm.PRIVATE)
        atomic_write(files["front-proxy-client.crt"], new_client.cert_pem)
        new_fp = pki.fingerprint(new_client.cert)
        seen = watch({"proxied": lambda: observer.first_since(t2, new_fp, user_is_checker=False) is not None,
                      "checked": lambda: observer.first_since(t2, new_fp, user_is_checker=True) is not None}, t2)
        proxied, checked = seen["proxied"], seen["checked"]
        rows.append(("2 client", "kube-apiserver presents the new client certificate in proxied requests",
                     fmt(proxied)))
        rows.append(("2 client", "... and in its APIService availability checks", fmt(checked)))
        last_old = max((at for at, _, fp in observer.seen if fp == old_client_fp), default=None)
        rows.append(("2 client", "last request with the old client certificate, after the write",
                     "none" if last_old is None or last_old < t2 else f"{last_old - t2:.1f} s"))
        time.sleep(args.dwell)
        end2 = time.monotonic()
        rows.append(("2 client", "requests through the aggregator failed", ratio(poller.between(t2, end2))))

        # 3. new only -------------------------------------------------------------------
        print("front-proxy-facts: step 3, front-proxy-ca.crt := new; ConfigMap := new", file=sys.stderr)
        t3 = time.monotonic()
        atomic_write(files["front-proxy-ca.crt"], new.cert_pem)
        kube_old_gone = wait(lambda: not probes.kube_trusts(old), t3)
        rows.append(("3 new only", "kube-apiserver refuses the old CA's front-proxy client", fmt(kube_old_gone)))
        time.sleep(3)
        after_file = configmap_cas(admin)
        rows.append(("3 new only", "ConfigMap 3 s after the file holds only the new CA (does kube-apiserver remove "
                                   "the old CA?)", describe(after_file, old, new)))
        rows.append(("3 new only", "sample-apiserver still accepts the old CA then",
                     yes(probes.ext_trusts(old))))
        t3b = time.monotonic()
        set_configmap_cas(admin, [new])
        ext_old_gone = wait(lambda: not probes.ext_trusts(old), t3b)
        rows.append(("3 new only", "sample-apiserver refuses the old CA after the ConfigMap holds only the new one",
                     fmt(ext_old_gone)))
        time.sleep(args.settle)
        rows.append(("3 new only", f"ConfigMap {args.settle:.0f} s later (kube-apiserver's resync: puts the old "
                                   "CA back?)", describe(configmap_cas(admin), old, new)))
        rows.append(("3 new only", "new CA accepted by kube-apiserver / sample-apiserver; old by either",
                     f"{yes(probes.kube_trusts(new))} / {yes(probes.ext_trusts(new))}; "
                     f"{yes(probes.kube_trusts(old) or probes.ext_trusts(old))}"))
        end3 = time.monotonic()
        rows.append(("3 new only", "requests through the aggregator failed", ratio(poller.between(t3, end3))))
        ext = extension.available(admin.call(
            "get", "GET", f"/apis/apiregistration.k8s.io/v1/apiservices/{extension.APISERVICE}"))
        rows.append(("end", f"APIService {extension.APISERVICE} Available", yes(ext)))
        state = json.loads(paths.state.read_text())["components"]
        rows.append(("end", "restarts of kube-apiserver / extension-apiserver",
                     f"{state[f'{NAME}-control-plane-1/kube-apiserver']['restarts']} / "
                     f"{state[f'{NAME}-control-plane-1/extension-apiserver']['restarts']}"))
        log = paths.component_log(f"{NAME}-control-plane-1", "kube-apiserver").read_text(errors="replace")
        # The probes' refused requests log "Unable to authenticate"; these are the file loads.
        errors = [line for line in log.splitlines() if line.startswith("E") and
                  any(word in line for word in ("aggregator-proxy-cert", "private key does not match",
                                                "front-proxy-ca.crt", "front-proxy-client"))]
        rows.append(("end", "kube-apiserver log: errors loading the front-proxy files (the key is written "
                            "before the certificate)",
                     str(len(errors)) + (f": {errors[0][:150]}" if errors else "")))
        all_failures = poller.between(0, end3)[2]
        if all_failures:
            rows.append(("end", "first failures", "; ".join(all_failures)))
        admin.kube.close()
    finally:
        if poller is not None:
            poller.stopping.set()
        if observer is not None:
            observer.stop()
        if not args.keep:
            sandbox.down(paths)
            if scratch is not None:
                os.rmdir(scratch)
        # Also after a failure: what was measured up to it.
        print_table(rows, kubernetes=info.kubernetes_version, seconds=time.monotonic() - started)
    return 0


def yes(value: bool) -> str:
    return "yes" if value else "no"


def ratio(window: tuple[int, int, list[str]]) -> str:
    total, failed, _ = window
    return f"{failed} of {total}"


def describe(fingerprints: list[str], old: KeyPair, new: KeyPair) -> str:
    names = {pki.fingerprint(old.cert): "old", pki.fingerprint(new.cert): "new"}
    return " + ".join(names.get(f, "other") for f in fingerprints) or "(empty)"


def print_table(rows: list[tuple[str, str, str]], *, kubernetes: str, seconds: float) -> None:
    print(f"front-proxy CA replaced on disk, Kubernetes {kubernetes}, sample-apiserver of the same release "
          f"({seconds:.0f} s in all)\n")
    print("| step | what | observed |\n|---|---|---|")
    for step, what, value in rows:
        print(f"| {step} | {what} | {value} |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
