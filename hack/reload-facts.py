"""What the etcd CA's consumers pick up from disk without a restart, measured on the real
binaries (the pinned etcd and kube-apiserver in the binaries cache).

    .venv/bin/python hack/reload-facts.py

Everything runs on 127.0.0.1 in a temporary directory that is removed at the end; every
process it starts is stopped (and dies with this script if it is killed). Certificates
are made with reconciler.core.pki: an "old" and a "new" etcd CA with the same subject
(etcd-ca), as a rotation has them. A file is always replaced by an atomic rename, as
careconcile writes it. Prints a markdown table (component, file, reloads without a
restart, how it was checked) and the evidence behind each row; no private key is
printed. Exits 0 when every check came to an answer, 1 when a process would not start or
a step the checks rely on failed (a measurement that answers "no" is not a failure).

Three scenes, about 75 s in all on 2 cores:

1. one etcd member: its serving certificate (--cert-file/--key-file) and its client CA
   (--trusted-ca-file), checked with TLS handshakes from Python;
2. three members with peer TLS: the peer certificate (server side by a handshake on the
   peer port, client side by a Python listener standing in for a stopped member), the
   peer CA (--peer-trusted-ca-file), what a member that trusts only the old CA does with a
   peer presenting a new-CA certificate (etcd_network_active_peers), the health
   endpoint and the member list over the gRPC gateway, and /health without quorum;
3. one kube-apiserver on one etcd: --etcd-certfile/--etcd-keyfile and --etcd-cafile,
   checked by writing a ConfigMap after etcd is restarted (which makes the apiserver
   open new connections).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler.core import pki  # noqa: E402
from reconciler.core.pki import KeyPair, KeySpec, LeafRequest  # noqa: E402
from reconciler.sandbox.binaries import bin_dir  # noqa: E402

LOOPBACK = "127.0.0.1"
KEY = KeySpec("ECDSA", 256)  # fast to make; what is measured does not depend on the key type
NOW = dt.datetime.now(dt.timezone.utc)
# How long a "no" is watched before it is called one: the apiserver's etcd client retries
# with a growing back-off (1 s, 1.6 s, 2.6 s, ...), so this covers several new handshakes.
NO_RELOAD_WATCH_SECONDS = 15.0


class Failed(Exception):
    """A step the measurements rely on did not work: the run proves nothing."""


# --- certificates and files ---------------------------------------------------------------

def leaf(ca: KeyPair, cn: str, *, server: bool = False, client: bool = False,
         organizations: tuple[str, ...] = ()) -> KeyPair:
    return pki.issue_leaf(ca, LeafRequest(
        cn, organizations=organizations, server=server, client=client, key=KEY,
        dns_names=("localhost",) if server else (), ip_addresses=(LOOPBACK,) if server else ()), now=NOW)


def write(path: Path, content: bytes, mode: int = 0o644) -> None:
    """Atomically, as careconcile replaces a file: a temp file renamed over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    os.replace(tmp, path)


def write_pair(base: Path, pair: KeyPair) -> None:
    write(base.with_suffix(".key"), pair.key_pem, 0o600)
    write(base.with_suffix(".crt"), pair.cert_pem)


def bundle(*cas: KeyPair) -> bytes:
    return b"".join(ca.cert_pem for ca in cas)


def describe(cert: x509.Certificate, cas: dict[str, KeyPair]) -> str:
    """`CN=... from the old CA, sha256:abcd...`; never anything secret."""
    issuer = next((name for name, ca in cas.items() if pki.is_signed_by(cert, ca.cert)), "an unknown")
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    return f"CN={cn} from the {issuer} CA, {pki.fingerprint(cert)[:16]}"


def free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((LOOPBACK, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]


# --- processes ----------------------------------------------------------------------------

def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


@dataclass
class Process:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            log.write(f"=== {dt.datetime.now().isoformat()} starting\n".encode())
            log.flush()
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          preexec_fn=_die_with_parent, env=_clean_env())
        RUNNING.append(self)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.popen = None
        if self in RUNNING:
            RUNNING.remove(self)

    def restart(self) -> None:
        self.stop()
        self.start()

    def check_alive(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
            raise Failed(f"{self.name} is not running; last lines of {self.log}:\n{tail}")


RUNNING: list[Process] = []


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "KUBECONFIG"}


def wait_until(what: str, check, timeout: float, *processes: Process) -> float:
    """Poll ``check`` until it is true; returns the seconds it took."""
    start = time.monotonic()
    last: object = None
    while time.monotonic() - start < timeout:
        for process in processes:
            process.check_alive()
        try:
            if check():
                return time.monotonic() - start
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError) as exc:
            last = exc
        time.sleep(0.2)
    raise Failed(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last: {last})" if last else ""))


def holds_for(check, seconds: float, *processes: Process) -> bool:
    """True when ``check`` is true at every poll for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for process in processes:
            process.check_alive()
        if not check():
            return False
        time.sleep(0.5)
    return True


# --- TLS from Python ----------------------------------------------------------------------

@dataclass
class Reply:
    ok: bool  # the server answered an HTTP request: the handshake, client certificate included, passed
    presented: x509.Certificate | None = None
    status: int | None = None
    body: bytes = b""
    error: str = ""


def request(port: int, path: str, *, trust: bytes | None, client: Path | None, method: str = "GET",
            body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 5.0) -> Reply:
    """One HTTPS request on a new connection. ``client`` is the base path of a .crt/.key pair.
    With TLS 1.3 a server's refusal of the client certificate arrives after the handshake,
    so only an HTTP answer counts as accepted. ``trust=None`` skips verifying the server
    (used only to read the certificate it presents)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if trust is None:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=trust.decode())
    if client is not None:
        ctx.load_cert_chain(client.with_suffix(".crt"), client.with_suffix(".key"))
    conn = http.client.HTTPSConnection(LOOPBACK, port, context=ctx, timeout=timeout)
    reply = Reply(ok=False)
    try:
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)
        reply.presented = x509.load_der_x509_certificate(der) if der else None
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        reply.ok, reply.status, reply.body = True, response.status, response.read()
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        reply.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return reply


# --- etcd ---------------------------------------------------------------------------------

@dataclass
class Member:
    name: str
    dir: Path
    client_port: int
    peer_port: int
    process: Process = field(init=False)

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    def file(self, name: str) -> Path:
        return self.pki / name

    def configure(self, initial_cluster: str) -> None:
        client_url, peer_url = f"https://{LOOPBACK}:{self.client_port}", f"https://{LOOPBACK}:{self.peer_port}"
        self.process = Process(f"etcd {self.name}", [
            str(BIN / "etcd"), f"--name={self.name}", f"--data-dir={self.dir / 'data'}",
            f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={initial_cluster}", "--initial-cluster-state=new",
            f"--initial-cluster-token=reload-facts-{self.dir.parent.name}",
            "--client-cert-auth=true", f"--cert-file={self.file('server.crt')}",
            f"--key-file={self.file('server.key')}", f"--trusted-ca-file={self.file('ca.crt')}",
            "--peer-client-cert-auth=true", f"--peer-cert-file={self.file('peer.crt')}",
            f"--peer-key-file={self.file('peer.key')}", f"--peer-trusted-ca-file={self.file('peer-ca.crt')}",
            "--unsafe-no-fsync=true", "--heartbeat-interval=50", "--election-timeout=500",
            "--log-level=info",
        ], self.dir / "etcd.log")

    def health(self, client: Path, trust: bytes) -> dict:
        reply = request(self.client_port, "/health", trust=trust, client=client, timeout=3)
        if not reply.ok:
            return {"health": "unreachable", "reason": reply.error}
        return json.loads(reply.body)

    def healthy(self, client: Path, trust: bytes) -> bool:
        return self.health(client, trust).get("health") == "true"

    def member_list(self, client: Path, trust: bytes) -> list[dict]:
        reply = request(self.client_port, "/v3/cluster/member/list", trust=trust, client=client, method="POST",
                        body=b"{}", headers={"Content-Type": "application/json"})
        if not reply.ok or reply.status != 200:
            raise Failed(f"member list from {self.name}: {reply.error or reply.status} {reply.body[:200]!r}")
        return json.loads(reply.body)["members"]

    def active_peers(self, client: Path, trust: bytes) -> dict[str, float]:
        """etcd_network_active_peers by remote member id (hex), from /metrics."""
        reply = request(self.client_port, "/metrics", trust=trust, client=client)
        if not reply.ok:
            raise Failed(f"/metrics of {self.name}: {reply.error}")
        peers = {}
        for line in reply.body.decode().splitlines():
            if line.startswith("etcd_network_active_peers{"):
                labels, value = line[len("etcd_network_active_peers{"):].rsplit("} ", 1)
                remote = dict(part.split("=", 1) for part in labels.split(","))["Remote"].strip('"')
                peers[remote] = float(value)
        return peers


def etcd_cluster(base: Path, names: list[str]) -> list[Member]:
    ports = free_ports(2 * len(names))
    members = [Member(n, base / n, ports[2 * i], ports[2 * i + 1]) for i, n in enumerate(names)]
    initial = ",".join(f"{m.name}=https://{LOOPBACK}:{m.peer_port}" for m in members)
    for member in members:
        member.configure(initial)
    return members


# --- the table ----------------------------------------------------------------------------

@dataclass
class Row:
    component: str
    file: str
    answer: str
    how: str


ROWS: list[Row] = []
EVIDENCE: list[str] = []


def note(text: str) -> None:
    EVIDENCE.append(text)
    print(f"  {text}", flush=True)


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


# --- scene 1: one member, the client-facing side ------------------------------------------

def scene_client_side(base: Path, old: KeyPair, new: KeyPair) -> None:
    print("scene 1: one etcd member, its client-facing certificate and client CA", flush=True)
    cas = {"old": old, "new": new}
    (member,) = etcd_cluster(base, ["solo"])
    write(member.file("ca.crt"), bundle(old))
    write(member.file("peer-ca.crt"), bundle(old))
    write_pair(member.file("server"), leaf(old, "solo", server=True, client=True))
    write_pair(member.file("peer"), leaf(old, "solo", server=True, client=True))
    old_client, new_client = base / "hc-old", base / "hc-new"
    write_pair(old_client, leaf(old, "kube-etcd-healthcheck-client", client=True))
    write_pair(new_client, leaf(new, "kube-etcd-healthcheck-client", client=True))
    both = bundle(old, new)
    member.process.start()
    took = wait_until("etcd solo /health", lambda: member.healthy(old_client, both), 30, member.process)
    note(f"solo: /health true after {took:.1f} s")

    # --cert-file/--key-file: replace the pair with one from the new CA, handshake again.
    before = request(member.client_port, "/health", trust=both, client=old_client)
    write_pair(member.file("server"), leaf(new, "solo", server=True, client=True))
    after = request(member.client_port, "/health", trust=both, client=old_client)
    if not (before.ok and after.ok and before.presented and after.presented):
        raise Failed(f"solo: handshakes failed: {before.error} / {after.error}")
    reloaded = pki.is_signed_by(after.presented, new.cert) and not pki.is_signed_by(before.presented, new.cert)
    note(f"solo: presented before the replace: {describe(before.presented, cas)}; "
         f"after, same process: {describe(after.presented, cas)}")
    ROWS.append(Row("etcd", "`--cert-file`, `--key-file` (`etcd/server`)", yes_no(reloaded),
                    "replaced by a new CA's pair; the next handshake presents it (pid unchanged)"))

    # --trusted-ca-file: old+new in the file; is a new-CA client accepted before a restart?
    write(member.file("ca.crt"), both)
    time.sleep(1.0)  # give any file watch a chance; etcd has none for this file
    new_before = request(member.client_port, "/health", trust=both, client=new_client)
    old_before = request(member.client_port, "/health", trust=both, client=old_client)
    note(f"solo: file now old+new, no restart: new-CA client {'accepted' if new_before.ok else 'refused'}"
         f" ({new_before.error or new_before.status}); old-CA client "
         f"{'accepted' if old_before.ok else 'refused'}")
    member.process.restart()
    wait_until("etcd solo /health after restart", lambda: member.healthy(old_client, both), 30, member.process)
    new_after = request(member.client_port, "/health", trust=both, client=new_client)
    note(f"solo: after a restart: new-CA client {'accepted' if new_after.ok else 'refused'}"
         f" ({new_after.error or new_after.status})")
    if not (old_before.ok and new_after.ok):
        raise Failed("solo: the old+new bundle does not work even after a restart")
    ROWS.append(Row("etcd", "`--trusted-ca-file` (client CA, `etcd/ca.crt`): adding a CA", yes_no(new_before.ok),
                    "file becomes old+new: a new-CA client certificate is refused until etcd restarts, "
                    "accepted after"))

    # Dropping the old CA: does etcd stop trusting it before a restart?
    write(member.file("ca.crt"), bundle(new))
    time.sleep(1.0)
    old_still = request(member.client_port, "/health", trust=both, client=old_client)
    member.process.restart()
    wait_until("etcd solo /health after restart", lambda: member.healthy(new_client, both), 30, member.process)
    old_after = request(member.client_port, "/health", trust=both, client=old_client)
    note(f"solo: file now new only: old-CA client {'accepted' if old_still.ok else 'refused'} before a restart, "
         f"{'accepted' if old_after.ok else 'refused'} after ({old_after.error or old_after.status})")
    if old_after.ok:
        raise Failed("solo: an old-CA client is accepted by an etcd that trusts only the new CA")
    ROWS.append(Row("etcd", "`--trusted-ca-file`: removing a CA", yes_no(not old_still.ok),
                    "file becomes new only: the old-CA client is still accepted until etcd restarts, "
                    "refused after"))
    member.process.stop()


# --- scene 2: three members, peer TLS -------------------------------------------------------

class Listener:
    """A TLS server on a stopped member's peer port: records each client certificate that
    the other members present when they dial it, then hangs up."""

    def __init__(self, port: int, server: Path, trust: bytes) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(server.with_suffix(".crt"), server.with_suffix(".key"))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(cadata=trust.decode())
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.seen: list[tuple[float, x509.Certificate]] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            try:
                conn.settimeout(2)
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    der = tls.getpeercert(binary_form=True)
                    if der:
                        self.seen.append((time.monotonic(), x509.load_der_x509_certificate(der)))
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


def scene_peers(base: Path, old: KeyPair, new: KeyPair) -> None:
    print("scene 2: three etcd members with peer TLS", flush=True)
    cas = {"old": old, "new": new}
    members = etcd_cluster(base, ["m1", "m2", "m3"])
    m1, m2, m3 = members
    hc = base / "hc-old"
    write_pair(hc, leaf(old, "kube-etcd-healthcheck-client", client=True))
    new_peer_client = base / "peer-client-new"
    write_pair(new_peer_client, leaf(new, "m9", client=True))
    old_peer_client = base / "peer-client-old"
    write_pair(old_peer_client, leaf(old, "m9", client=True))
    both = bundle(old, new)
    for m in members:
        write(m.file("ca.crt"), bundle(old))
        write(m.file("peer-ca.crt"), bundle(old))
        write_pair(m.file("server"), leaf(old, m.name, server=True, client=True))
        write_pair(m.file("peer"), leaf(old, m.name, server=True, client=True))
    for m in members:
        m.process.start()
    procs = [m.process for m in members]
    took = wait_until("3 healthy members", lambda: all(m.healthy(hc, both) for m in members), 60, *procs)
    listed = m1.member_list(hc, both)
    note(f"cluster: every /health true after {took:.1f} s; member list has {len(listed)} members: "
         + ", ".join(sorted(x["name"] for x in listed)))
    if len(listed) != 3:
        raise Failed("the member list does not have 3 members")
    ids = {m["name"]: format(int(m["ID"]), "x") for m in listed}

    # Peer serving side: replace m1's peer pair, then handshake on its peer port.
    before = request(m1.peer_port, "/version", trust=both, client=old_peer_client)
    write_pair(m1.file("peer"), leaf(old, "m1", server=True, client=True))  # same CA, a new certificate
    after = request(m1.peer_port, "/version", trust=both, client=old_peer_client)
    if not (before.ok and after.ok and before.presented and after.presented):
        raise Failed(f"m1 peer port: {before.error} / {after.error}")
    on_disk = x509.load_pem_x509_certificate(m1.file("peer.crt").read_bytes())
    served_new = pki.fingerprint(after.presented) == pki.fingerprint(on_disk) != pki.fingerprint(before.presented)
    note(f"m1 peer port: before {describe(before.presented, cas)}; after the replace {describe(after.presented, cas)}")
    ROWS.append(Row("etcd", "`--peer-cert-file`, `--peer-key-file` (`etcd/peer`), as a server", yes_no(served_new),
                    "replaced; the next handshake on the peer port presents the new file"))

    # Peer trust: old+new in m1's file. Is a new-CA peer certificate accepted before a restart?
    write(m1.file("peer-ca.crt"), both)
    time.sleep(1.0)
    refused = request(m1.peer_port, "/version", trust=both, client=new_peer_client)
    note(f"m1 peer port, file old+new, no restart: new-CA peer certificate "
         f"{'accepted' if refused.ok else 'refused'} ({refused.error or refused.status})")
    m1.process.restart()
    wait_until("m1 healthy after restart", lambda: m1.healthy(hc, both), 30, *procs)
    accepted = request(m1.peer_port, "/version", trust=both, client=new_peer_client)
    note(f"m1 peer port after a restart: new-CA peer certificate "
         f"{'accepted' if accepted.ok else 'refused'} ({accepted.error or accepted.status})")
    if not accepted.ok:
        raise Failed("m1 refuses a new-CA peer certificate even after a restart with old+new")
    ROWS.append(Row("etcd", "`--peer-trusted-ca-file` (peer CA, `etcd/ca.crt`)", yes_no(refused.ok),
                    "file becomes old+new: a new-CA peer certificate is refused on the peer port until the "
                    "member restarts, accepted after"))

    # Peer client side: stop m3, listen on its peer port, and see which certificate m1
    # presents when it dials m3 again, before and after m1's peer pair is replaced.
    m3.process.stop()
    listener = Listener(m3.peer_port, m3.file("peer"), both)
    try:
        def m1_dialed(issuer: KeyPair, since: float) -> bool:
            return any(t > since and "CN=m1 " in describe(c, cas) and pki.is_signed_by(c, issuer.cert)
                       for t, c in listener.seen)
        since = time.monotonic()
        wait_until("m1 dialing the stopped m3's peer port", lambda: m1_dialed(old, since), 20, m1.process)
        write_pair(m1.file("peer"), leaf(new, "m1", server=True, client=True))
        since = time.monotonic()
        try:
            took = wait_until("m1 dialing with the new certificate", lambda: m1_dialed(new, since), 10, m1.process)
            dialed_new = True
            note(f"m1 dials m3's peer port with its replaced, new-CA peer certificate {took:.1f} s after the "
                 "replace, no restart")
        except Failed:
            dialed_new = False
            note("m1 still dials with its old peer certificate 10 s after the replace")
    finally:
        listener.close()
    ROWS.append(Row("etcd", "`--peer-cert-file`, `--peer-key-file`, as a client", yes_no(dialed_new),
                    "replaced; a listener on a stopped member's peer port sees the new certificate on "
                    "m1's next dial"))

    # m1 now presents the new CA's certificate; m3 trusts only the old CA. Start m3 again.
    m3.process.start()
    wait_until("m3 healthy", lambda: m3.healthy(hc, both), 30, *procs)
    time.sleep(2.0)
    peers = m3.active_peers(hc, both)
    healthy = {m.name: m.healthy(hc, both) for m in members}
    m3_to_m1 = peers.get(ids["m1"], 0.0)
    note(f"m3 (trusts the old CA only) with m1 on a new-CA peer certificate: /health {healthy}; "
         f"m3's etcd_network_active_peers: m1 {m3_to_m1:.0f}, m2 {peers.get(ids['m2'], 0.0):.0f}")
    m3_log = m3.process.log.read_text(errors="replace")
    if "unknown authority" in m3_log or "unknown certificate authority" in m3_log:
        note("m3's log: TLS errors naming an unknown certificate authority")
    # Spread the trust (old+new) to m2 and m3 and restart them, one at a time.
    for m in (m2, m3):
        write(m.file("peer-ca.crt"), both)
        m.process.restart()
        wait_until(f"{m.name} healthy", lambda m=m: m.healthy(hc, both), 30, *procs)
    wait_until("m3 connected to m1", lambda: m3.active_peers(hc, both).get(ids["m1"]) == 1.0, 20, *procs)
    note("after m2 and m3 restarted with old+new: m3's etcd_network_active_peers for m1 is 1, every /health true")
    ROWS.append(Row("etcd", "peers: a member that loaded only the old CA, a peer on a new-CA pair",
                    "connected" if m3_to_m1 else "not connected",
                    "m3 started trusting the old CA; m1 on a new-CA peer pair; etcd_network_active_peers "
                    "and /health (true on all three: quorum hides the broken link)"))

    # Health and quorum: stop m2 and m3; m1 answers health false once it has no leader.
    m2.process.stop()
    m3.process.stop()
    took = wait_until("m1 /health false without quorum", lambda: not m1.healthy(hc, both), 30, m1.process)
    lost = m1.health(hc, both)
    note(f"with m2 and m3 stopped, m1's /health answers {json.dumps(lost)} ({took:.1f} s)")
    ROWS.append(Row("etcd", "`/health` with `healthcheck-client`", "n/a",
                    "`GET /health` on each client URL answers `{\"health\":\"true\"}`; with 2 of 3 members "
                    f"stopped the third answers `{json.dumps(lost, separators=(',', ':'))}`; "
                    "`POST /v3/cluster/member/list` (body `{}`) lists the members"))
    m1.process.stop()


# --- scene 3: kube-apiserver's etcd client ----------------------------------------------

def scene_apiserver(base: Path, old: KeyPair, new: KeyPair) -> None:
    print("scene 3: kube-apiserver on one etcd member", flush=True)
    (member,) = etcd_cluster(base, ["api-etcd"])
    both = bundle(old, new)
    write(member.file("ca.crt"), both)  # etcd trusts both CAs' clients from the start
    write(member.file("peer-ca.crt"), bundle(old))
    write_pair(member.file("server"), leaf(old, "api-etcd", server=True, client=True))
    write_pair(member.file("peer"), leaf(old, "api-etcd", server=True, client=True))
    hc = base / "hc-api"
    write_pair(hc, leaf(new, "kube-etcd-healthcheck-client", client=True))
    old_client_probe = base / "etcd-client-old-probe"
    write_pair(old_client_probe, leaf(old, "probe", client=True))

    k8s = base / "apiserver"
    cluster_ca = pki.new_ca("kubernetes", now=NOW, key=KEY)
    write(k8s / "ca.crt", cluster_ca.cert_pem)
    write_pair(k8s / "apiserver", leaf(cluster_ca, "kube-apiserver", server=True))
    write_pair(k8s / "admin", leaf(cluster_ca, "reload-facts", client=True, organizations=("system:masters",)))
    sa = pki.generate_key(KEY)
    write(k8s / "sa.key", pki.private_key_pem(sa), 0o600)
    write(k8s / "sa.pub", pki.public_key_pem(sa))
    write(k8s / "etcd-ca.crt", bundle(old))
    write_pair(k8s / "apiserver-etcd-client", leaf(old, "kube-apiserver-etcd-client", client=True))
    (port,) = free_ports(1)
    apiserver = Process("kube-apiserver", [
        str(BIN / "kube-apiserver"), f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}",
        f"--secure-port={port}", f"--tls-cert-file={k8s / 'apiserver.crt'}",
        f"--tls-private-key-file={k8s / 'apiserver.key'}", f"--client-ca-file={k8s / 'ca.crt'}",
        "--authorization-mode=RBAC", f"--etcd-servers=https://{LOOPBACK}:{member.client_port}",
        f"--etcd-cafile={k8s / 'etcd-ca.crt'}", f"--etcd-certfile={k8s / 'apiserver-etcd-client.crt'}",
        f"--etcd-keyfile={k8s / 'apiserver-etcd-client.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={k8s / 'sa.pub'}", f"--service-account-signing-key-file={k8s / 'sa.key'}",
        "--service-cluster-ip-range=10.96.0.0/12", "--endpoint-reconciler-type=none",
        f"--cert-dir={k8s / 'certs'}",
    ], base / "kube-apiserver.log")
    counter = iter(range(1_000_000))

    def write_configmap() -> Reply:
        """A ConfigMap create goes to etcd (a read might be answered from the watch cache)."""
        name = f"probe-{next(counter)}"
        body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                           "data": {"k": "v"}}).encode()
        return request(port, "/api/v1/namespaces/default/configmaps?timeout=3s", trust=cluster_ca.cert_pem,
                       client=k8s / "admin", method="POST", body=body,
                       headers={"Content-Type": "application/json"}, timeout=6)

    def writes() -> bool:
        return write_configmap().status == 201

    member.process.start()
    wait_until("api-etcd /health", lambda: member.healthy(hc, both), 30, member.process)
    apiserver.start()
    took = wait_until("kube-apiserver writes a ConfigMap", writes, 90, apiserver, member.process)
    note(f"kube-apiserver: first ConfigMap written {took:.1f} s after start")

    # --etcd-certfile/--etcd-keyfile: replace them with a new-CA pair, make etcd trust only
    # the new CA and restart it (the apiserver must connect again).
    write_pair(k8s / "apiserver-etcd-client", leaf(new, "kube-apiserver-etcd-client", client=True))
    still = writes()
    write(member.file("ca.crt"), bundle(new))
    member.process.restart()
    wait_until("api-etcd /health", lambda: member.healthy(hc, both), 30, member.process)
    probe = request(member.client_port, "/health", trust=both, client=old_client_probe)
    if probe.ok:
        raise Failed("api-etcd still accepts an old-CA client after a restart trusting only the new CA")
    try:
        took = wait_until("kube-apiserver writing with its replaced etcd client certificate", writes, 45,
                          apiserver, member.process)
        reloaded = True
        note(f"kube-apiserver: writes again {took:.1f} s after etcd came back trusting only the new CA "
             f"(an old-CA client is refused: {probe.error}); no apiserver restart")
    except Failed as exc:
        reloaded = False
        note(f"kube-apiserver: {exc}")
    note(f"kube-apiserver: right after the replace, before etcd's restart, writes {'worked' if still else 'failed'}")
    ROWS.append(Row("kube-apiserver", "`--etcd-certfile`, `--etcd-keyfile` (`apiserver-etcd-client`)",
                    yes_no(reloaded),
                    "replaced by a new CA's pair (writes go on: etcd trusts both), then etcd restarted trusting "
                    "only the new CA: ConfigMap writes work again once the apiserver reconnects"))

    # --etcd-cafile: old+new in the apiserver's file; etcd presents a new-CA serving
    # certificate and is restarted. Does the running apiserver trust it?
    write(k8s / "etcd-ca.crt", both)
    write_pair(member.file("server"), leaf(new, "api-etcd", server=True, client=True))
    member.process.restart()
    wait_until("api-etcd /health", lambda: member.healthy(hc, both), 30, member.process)
    time.sleep(1.0)
    failing = holds_for(lambda: not writes(), NO_RELOAD_WATCH_SECONDS, apiserver, member.process)
    note(f"kube-apiserver: with old+new in --etcd-cafile and etcd on a new-CA serving certificate, writes "
         f"{'fail for ' + format(NO_RELOAD_WATCH_SECONDS, '.0f') + ' s' if failing else 'work'} without a restart")
    apiserver.restart()
    took = wait_until("kube-apiserver writing after its restart", writes, 90, apiserver, member.process)
    note(f"kube-apiserver: after a restart, writes work ({took:.1f} s after the start)")
    ROWS.append(Row("kube-apiserver", "`--etcd-cafile` (`etcd/ca.crt`)", yes_no(not failing),
                    f"file becomes old+new, etcd restarted on a new-CA serving certificate: ConfigMap writes fail "
                    f"for {NO_RELOAD_WATCH_SECONDS:.0f} s, work after an apiserver restart"))
    apiserver.stop()
    member.process.stop()


# --- main ---------------------------------------------------------------------------------

BIN = bin_dir()


def main() -> int:
    missing = [b for b in ("etcd", "kube-apiserver") if not os.access(BIN / b, os.X_OK)]
    if missing:
        print(f"missing {', '.join(missing)} in {BIN}: run hack/build-binaries.sh", file=sys.stderr)
        return 1
    version = subprocess.run([str(BIN / "etcd"), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    apiserver_version = subprocess.run([str(BIN / "kube-apiserver"), "--version"], capture_output=True,
                                       text=True).stdout.strip()
    print(f"{version}; {apiserver_version}", flush=True)
    started = time.monotonic()
    old = pki.new_ca("etcd-ca", now=NOW, key=KEY)
    new = pki.new_ca("etcd-ca", now=NOW, key=KEY)
    base = Path(tempfile.mkdtemp(prefix="reload-facts-"))
    code = 0
    try:
        scene_client_side(base / "s1", old, new)
        scene_peers(base / "s2", old, new)
        scene_apiserver(base / "s3", old, new)
    except Failed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        print(f"logs kept in {base}", file=sys.stderr)
        code = 1
    finally:
        for process in list(RUNNING):
            process.stop()
        if code == 0:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print("| component | file | reloads without a restart | how checked |")
    print("|---|---|---|---|")
    for row in ROWS:
        print(f"| {row.component} | {row.file} | {row.answer} | {row.how} |")
    print(f"\n{version}; {apiserver_version}; {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
