"""A real OpenSSH server for the SSH transport's tests.

Debian's sshd from the cache ``hack/install-sshd.sh`` fills (``make test`` runs it), on
127.0.0.1 on a free port, with a host key and a client key generated for the test and
public-key login only. Tests skip when it is missing, unless CI is set: then they fail.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from reconciler.errors import SandboxError
from reconciler.sandbox import sshd
from reconciler.sandbox.sshd import Server

from .helpers import missing_prerequisite

# As root, the server also logs in this user (SFTP only: its shell is nologin), so that a
# test can meet a real "permission denied", which root never does.
UNPRIVILEGED = "nobody"


def require_sshd() -> None:
    try:
        sshd.require_install()
    except SandboxError as exc:
        missing_prerequisite(f"{exc} (run `hack/install-sshd.sh`)")


@contextlib.contextmanager
def running_sshd(*, unprivileged: bool = False) -> Iterator[Server]:
    """Start an sshd in a fresh directory; stop it and remove the directory afterwards.

    With ``unprivileged`` (as root only), ``nobody`` may log in too: the directory is
    then world-traversable, since sshd reads authorized_keys as the user logging in."""
    require_sshd()
    directory = Path(tempfile.mkdtemp(prefix="careconcile-sshd-"))
    server = None
    try:
        if unprivileged:
            directory.chmod(0o755)
        server = sshd.start(directory, sftp_only_users=(UNPRIVILEGED,) if unprivileged else ())
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (just released by the kernel)."""
    with socket.socket() as sock:
        sock.bind((sshd.LOOPBACK, 0))
        return sock.getsockname()[1]


def ssh_access(server: Server, root: Path | str, **overrides: Any) -> dict[str, Any]:
    """The spec's ``access.ssh`` for a node whose '/' is ``root`` on ``server``."""
    access = {"host": sshd.LOOPBACK, "port": server.port, "user": server.user, "keyFile": str(server.client_key),
              "hostKey": server.host_key, "root": str(root)}
    access.update(overrides)
    return {key: value for key, value in access.items() if value is not None}


def other_host_key(directory: Path) -> str:
    """A host key the server does not have, as a spec would pin it."""
    return sshd.generate_key(directory / "other_host_key", "not-the-server")
