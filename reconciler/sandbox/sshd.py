"""An OpenSSH server on 127.0.0.1, for `sandbox up --ssh` and the tests.

The server is Debian's ``sshd``, unpacked (not installed) into a cache by
``hack/install-sshd.sh``. Each server gets a directory of its own holding a freshly
generated host key, the client key it accepts, its config, pid file and log; it listens on
127.0.0.1 only, on a free port, and takes public keys only.

Run as root, sshd needs its privilege-separation user ``sshd`` and ``/run/sshd`` (compiled
into Debian's build; the install script creates both). Run as another user, it needs
neither, and can log in only that user.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from reconciler._process import process_alive
from reconciler.errors import SandboxError
from reconciler.sandbox import _ports, _unpacked

CACHE_ENV = "CARECONCILE_SSHD_CACHE"
LOOPBACK = "127.0.0.1"
INSTALL_HINT = "run `hack/install-sshd.sh` (`make test` and `make integration` run it too)"
START_TIMEOUT_SECONDS = 15.0

_started: list[subprocess.Popen] = []  # servers this process started, reaped by stop()


def cache_dir() -> Path:
    """``$CARECONCILE_SSHD_CACHE``, by default ~/.cache/careconcile/sshd."""
    return _unpacked.cache_dir(CACHE_ENV, "sshd")


@dataclass(frozen=True)
class Install:
    """The cached server: its binaries and the library path they run with."""

    sshd: Path
    sftp_server: Path
    library_path: str


def require_install() -> Install:
    """The cached sshd, or an error that says how to get it."""
    root = cache_dir() / "root"
    sshd, sftp_server = root / "usr/sbin/sshd", root / "usr/lib/openssh/sftp-server"
    missing = [str(path) for path in (sshd, sftp_server) if not os.access(path, os.X_OK)]
    if missing:
        raise SandboxError(f"no OpenSSH server cached in {cache_dir()} (missing {', '.join(missing)})",
                           hint=INSTALL_HINT)
    if os.geteuid() == 0:
        problems = []
        try:
            pwd.getpwnam("sshd")
        except KeyError:
            problems.append("the user sshd does not exist")
        if not Path("/run/sshd").is_dir():
            problems.append("/run/sshd does not exist")
        if problems:
            raise SandboxError(f"sshd runs as root here and needs its privilege-separation user and directory: "
                               f"{'; '.join(problems)}", hint=INSTALL_HINT)
    return Install(sshd, sftp_server, _unpacked.library_path(cache_dir()))


def login_user() -> str:
    """The user sshd logs in: the one it runs as (root logs in root)."""
    return pwd.getpwuid(os.geteuid()).pw_name


def generate_key(path: Path, comment: str) -> str:
    """A new ed25519 key pair at ``path`` (private, 0600) and ``path``.pub; returns the public
    key as ``ssh-ed25519 AAAA...`` (no comment), the form a spec pins."""
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return public_key(path)


def public_key(path: Path) -> str:
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


@dataclass
class Server:
    """A running sshd and what a client needs to reach it."""

    directory: Path
    port: int
    pid: int
    user: str
    host_key: str  # "ssh-ed25519 AAAA...", to pin
    client_key: Path  # the private key it accepts

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def config(self) -> Path:
        return self.directory / "sshd_config"

    def known_hosts_line(self, host: str = LOOPBACK) -> str:
        return f"[{host}]:{self.port} {self.host_key}"

    def accepted_logins(self) -> int:
        """How many connections have logged in so far, from sshd's log."""
        try:
            return self.log.read_text(errors="replace").count("Accepted publickey for ")
        except FileNotFoundError:
            return 0

    def stop(self, timeout: float = 10.0) -> None:
        stop(self.pid, self.directory, timeout=timeout)


def _config(directory: Path, port: int, install: Install, *, users: tuple[str, ...],
            sftp_only_users: tuple[str, ...]) -> str:
    lines = [
        f"# written by careconcile for {directory}",
        "AddressFamily inet",
        f"ListenAddress {LOOPBACK}",
        f"Port {port}",
        f"HostKey {directory / 'host_key'}",
        f"PidFile {directory / 'sshd.pid'}",
        f"AuthorizedKeysFile {directory / 'authorized_keys'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",  # a key, never a password
        "UsePAM no",
        # The key files live under temporary directories whose parents are group- or
        # world-writable (/tmp); sshd's ownership checks would refuse them.
        "StrictModes no",
        "PrintMotd no",
        "UseDNS no",
        "MaxStartups 64",  # careconcile connects to many nodes of one sandbox at once
        f"AllowUsers {' '.join(users + sftp_only_users)}",
        f"Subsystem sftp {install.sftp_server}",
    ]
    for user in sftp_only_users:  # such users have no login shell: sshd serves SFTP itself
        lines += [f"Match User {user}", "    ForceCommand internal-sftp"]
    return "\n".join(lines) + "\n"


def start(directory: Path, *, sftp_only_users: tuple[str, ...] = (), port: int | None = None) -> Server:
    """Start an sshd whose files live in ``directory`` (created if needed), on a free port
    of 127.0.0.1 unless ``port`` is given, and return once it accepts connections.

    It logs in the user it runs as, plus ``sftp_only_users`` (root only: other accounts
    such as ``nobody``, restricted to SFTP), all with the one client key it generates."""
    install = require_install()
    directory.mkdir(parents=True, exist_ok=True)
    host_key = generate_key(directory / "host_key", f"careconcile-sshd-host@{directory.name}")
    client_public = generate_key(directory / "client_key", f"careconcile-client@{directory.name}")
    authorized = directory / "authorized_keys"
    authorized.write_text(client_public + "\n")
    # sshd reads authorized_keys as the user logging in.
    authorized.chmod(0o644)
    if sftp_only_users:
        directory.chmod(0o755)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LD_LIBRARY_PATH": install.library_path}
    last_error = ""
    for _ in range(3):  # a port reserved outside the ephemeral range, free when checked (_ports.py)
        if port is None:
            _ports.release(directory)  # the one a failed attempt took
        chosen = port or _ports.reserve(1, directory)[0]
        (directory / "sshd_config").write_text(
            _config(directory, chosen, install, users=(login_user(),), sftp_only_users=sftp_only_users))
        log = directory / "sshd.log"
        with open(log, "ab") as output:
            # -D: stay in the foreground (this is its parent, and reaps it); -e: log to the file.
            process = subprocess.Popen([str(install.sshd), "-D", "-e", "-f", str(directory / "sshd_config")],
                                       stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True)
        _started.append(process)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            with socket.socket() as probe:
                probe.settimeout(0.5)
                if probe.connect_ex((LOOPBACK, chosen)) == 0:
                    return Server(directory=directory, port=chosen, pid=process.pid, user=login_user(),
                                  host_key=host_key, client_key=directory / "client_key")
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait()
            raise SandboxError(f"sshd in {directory} did not accept connections on {LOOPBACK}:{chosen} "
                               f"within {START_TIMEOUT_SECONDS:.0f}s; see {log}")
        last_error = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        last_error = last_error[0]
        if port is not None or "Address already in use" not in last_error:
            break
    raise SandboxError(f"sshd in {directory} exited at start: {last_error}", hint=f"its log is {directory / 'sshd.log'}")


def stop(pid: int, directory: Path, timeout: float = 10.0) -> None:
    """Stop the sshd ``pid`` started for ``directory`` (and the sessions it forked), and
    release its port."""
    try:
        _stop(pid, directory, timeout)
    finally:
        _ports.release(directory)


def _stop(pid: int, directory: Path, timeout: float) -> None:
    _reap(pid)
    if not _is_sshd_of(pid, directory):
        return
    # sshd puts each connection's processes in a session of their own, and leaves them
    # running when the listener stops; they go too.
    sessions = _descendants(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for target in [pid, *sessions]:
            try:
                os.kill(target, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(pid)
            if not any(process_alive(target) for target in [pid, *sessions]):
                return
            time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect the exit of a server this process started (it would stay a zombie otherwise)."""
    for process in [p for p in _started if p.pid == pid]:
        if process.poll() is not None:
            _started.remove(process)


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _is_sshd_of(pid: int, directory: Path) -> bool:
    """Guards against a stale pid: the process must be an sshd started with this directory's config."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return process_alive(pid) and b"sshd" in cmdline and str(directory / "sshd_config").encode() in cmdline


def running(pid: int, directory: Path) -> bool:
    return _is_sshd_of(pid, directory)
