"""Loopback ports for sandbox components, reserved across processes for as long as the
sandbox that owns them exists.

Asking the kernel for an ephemeral port (bind to port 0) and closing it before the
component binds leaves the port free for anyone in between, and the kernel hands the same
ports to the next caller that asks: a second sandbox starting at the same moment (the
other pytest-xdist worker), or any outgoing connection. So the ports come from outside
the kernel's ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``), where the
kernel never hands one out by itself, and each is reserved in a file of its own under a
directory that every careconcile process of this user shares (:func:`reservations_dir`).
The file names its owner: the sandbox directory (or an sshd's directory). Taking a port
holds the file's ``flock`` while it checks that no live owner holds it and that nothing is
bound to it, then writes the new owner; two processes can therefore never both take it.
A reservation lasts while its owner directory exists: `sandbox down` releases its ports
(and removes the directory), and the ports of a sandbox whose directory is gone are free
again. Release truncates the file under the same lock and never unlinks it, so the lock
always guards one file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import socket
import stat
import tempfile
from pathlib import Path

from reconciler.errors import SandboxError

LOOPBACK = "127.0.0.1"
RESERVATIONS_ENV = "CARECONCILE_PORTS_DIR"
# Below this, ports are the well-known and registered services' (etcd's 2379, kubelet's
# 10250, ...); the sandbox keeps clear of them.
LOWEST = 20000
HIGHEST = 65535
EPHEMERAL_FALLBACK = (32768, 60999)  # Linux's default, when /proc does not say
OWNED = ".reserved-ports"  # in the owner directory: the ports it reserved, one a line


def reservations_dir() -> Path:
    """``$CARECONCILE_PORTS_DIR``, else one directory per user in the system's temp dir:
    every sandbox of this user on this machine, whatever its root, reserves there."""
    if os.environ.get(RESERVATIONS_ENV):
        return Path(os.environ[RESERVATIONS_ENV])
    return Path(tempfile.gettempdir()) / f"careconcile-ports-{os.getuid()}"


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    try:
        low, high = (int(value) for value in path.read_text().split())
        return low, high
    except (OSError, ValueError):
        return EPHEMERAL_FALLBACK


def candidates() -> list[int]:
    """The ports a sandbox may use: from LOWEST up, outside the ephemeral range."""
    low, high = ephemeral_range()
    return [port for port in range(LOWEST, HIGHEST + 1) if not low <= port <= high]


def _bindable(port: int) -> bool:
    """Nothing is bound to it (or lingers in TIME_WAIT) on 127.0.0.1 or the wildcard."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _held(content: bytes, owner: str) -> bool:
    """Whether a reservation file's content names a live owner other than ``owner``."""
    try:
        held_by = json.loads(content)["owner"]
    except (ValueError, KeyError, TypeError):
        return False  # empty (released) or unreadable: free
    return held_by != owner and Path(held_by).is_dir()


def _own_directory(directory: Path) -> Path:
    """Make ``directory`` (0700) or take the existing one only if it is a real directory of
    this user that nobody else may write: the default lies in the shared temp dir under a
    name anyone can guess, and another user's directory (or link) there could lead the
    writes below onto files of theirs choosing."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise SandboxError(f"{directory} (where sandboxes reserve their ports) is not a directory of this user "
                           "that only it may write", hint=f"remove it, or set {RESERVATIONS_ENV} to another directory")
    return directory


def _try(directory: Path, port: int, owner: str) -> bool:
    # O_NOFOLLOW: a link planted in place of a reservation file is refused, not written through.
    try:
        fd = os.open(directory / str(port), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False  # not ours to write: another port
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes
        if _held(os.pread(fd, 4096, 0), owner) or not _bindable(port):
            return False
        record = json.dumps({"owner": owner, "pid": os.getpid()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        return True
    finally:
        os.close(fd)


def reserve(count: int, owner: Path, *, rng: random.Random | None = None) -> list[int]:
    """``count`` distinct ports, reserved for ``owner`` (a directory that exists while the
    ports are in use) until :func:`release` or until ``owner`` is gone."""
    directory = _own_directory(reservations_dir())
    owner_name = str(owner.absolute())
    pool = candidates()
    (rng or random.Random()).shuffle(pool)  # seeded from os.urandom: each process its own order
    taken: list[int] = []
    for port in pool:
        if len(taken) == count:
            break
        if _try(directory, port, owner_name):
            taken.append(port)
    if len(taken) < count:
        release(owner, taken)
        raise SandboxError(f"only {len(taken)} of {count} free loopback ports outside the ephemeral range "
                           f"(reservations in {directory})")
    with open(owner / OWNED, "a") as listing:  # what release() frees, without reading every reservation
        listing.write("".join(f"{port}\n" for port in taken))
    return taken


def release(owner: Path, ports: list[int] | None = None) -> None:
    """Free ``owner``'s reservations: ``ports``, or every one :func:`reserve` listed in it."""
    directory = reservations_dir()
    owner_name = str(owner.absolute())
    if ports is None:
        try:
            ports = [int(line) for line in (owner / OWNED).read_text().split()]
        except (OSError, ValueError):
            return
    for name in (str(port) for port in ports):
        try:
            fd = os.open(directory / name, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EISDIR, errno.ELOOP):
                continue
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                mine = json.loads(os.pread(fd, 4096, 0))["owner"] == owner_name
            except (ValueError, KeyError, TypeError):
                mine = False
            if mine:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)
