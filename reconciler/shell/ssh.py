"""The ``ssh`` transport: a node's files over SFTP, with the same methods as ``local``.

One SSH connection and one SFTP session per node, opened on first use and reused for
every later call; a lock per node makes it safe to share between threads (work on
different nodes runs concurrently, each node's calls one after the other). A connection
that drops is opened again on the next call.

Host keys are never trusted on first use: the spec pins the node's key (``hostKey``) or
names a known_hosts file that holds it. Writes are atomic: a temp file beside the target,
created with the file's mode before any byte is written, given the old file's owner,
fsynced, then renamed over the target (OpenSSH's posix-rename), and removed on any
failure. Restarting a static pod is a write of its manifest; the one command it runs
(``run``, over the same connection) is the restart of the node's kubelet.

Paths stay inside the node's root as with ``local`` (:mod:`reconciler.shell.nodes`): no
``..``, links to files followed as node paths, and the directory a file is in resolved
on the node (SFTP realpath) and refused, as a :class:`NodePathError`, when a link on the
way leads outside the root.

Every other failure is a :class:`NodeUnreachableError` that names the node,
``user@host:port`` and what was being done, with the paramiko or OS error as its cause.
"""

from __future__ import annotations

import atexit
import base64
import collections
import contextlib
import errno
import hmac
import posixpath
import secrets
import shlex
import socket
import stat
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, TypeVar

import paramiko
from paramiko.sftp import (
    CMD_EXTENDED, CMD_HANDLE, CMD_NAMES, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_WRITE,
)
from paramiko.sftp_attr import SFTPAttributes
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey
from paramiko.sftp_file import SFTPFile

from reconciler._files import file_mode, read_limited
from reconciler.core.spec import HOST_KEY_TYPES, SSHAccess
from reconciler.errors import CareconcileError, NodeUnreachableError
from reconciler.shell.nodes import (
    MAX_LINKS, command_failed, inside, link_destination, node_path, outside_root, too_many_links,
)

CONNECT_TIMEOUT = 10.0  # TCP connect, SSH banner, authentication, opening the SFTP channel
OPERATION_TIMEOUT = 60.0  # one SFTP request without an answer: the connection is taken as lost
KEEPALIVE_SECONDS = 30  # phase checks may leave a connection idle for minutes

Result = TypeVar("Result")

# Connections still open when the process ends are closed then (the CLI commands end
# with the process; code that opens clusters in-process closes them with ClusterAccess.close).
_open: "weakref.WeakSet[SSHNodeFiles]" = weakref.WeakSet()


def close_all() -> None:
    for files in list(_open):
        files.close()


atexit.register(close_all)


class RequestCount:
    """The SFTP requests sent, by kind (``open``, ``lstat``, ``realpath``...), over every
    node's connection since the process started: each one is a round trip to a node, or
    part of one when several are sent before any answer is read. Thread-safe, and cheap
    (a lock and a dict update per request); benchmarks read it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def add(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def snapshot(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self._counts)


REQUESTS = RequestCount()


class _CountedSFTPClient(paramiko.SFTPClient):
    """paramiko's SFTP client, counting each request it sends in :data:`REQUESTS`."""

    def _async_request(self, fileobj, t, *args):  # type: ignore[no-untyped-def]
        REQUESTS.add(_request_name(t, args))
        return super()._async_request(fileobj, t, *args)


def _request_name(kind: int, args: tuple) -> str:
    name = CMD_NAMES.get(kind, str(kind))
    if kind == CMD_EXTENDED and args and isinstance(args[0], str):
        return args[0]  # posix-rename@openssh.com, fsync@openssh.com
    return name


def key_fingerprint(key: paramiko.PKey) -> str:
    """``ssh-ed25519 SHA256:...``, as OpenSSH shows a key."""
    return f"{key.get_name()} {key.fingerprint}"


class _UnknownHostKey(Exception):
    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__(key_fingerprint(key))
        self.key = key


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """A host key the spec does not know is refused, never added."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(key)


def _lost(exc: BaseException) -> bool:
    """Whether an error means the connection is gone (rather than an SFTP status for one file)."""
    return isinstance(exc, (paramiko.SSHException, EOFError, socket.timeout, ConnectionError))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.EACCES:
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
        return "no such file or directory"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class SSHNodeFiles:
    """A node's files over SSH; paths are the node's absolute paths, mapped under ``root``."""

    def __init__(self, node: str, access: SSHAccess, *, key_file: Path, known_hosts_file: Path | None,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.node = node
        self.host = access.host
        self.port = access.port
        self.user = access.user
        self.root = access.root
        self.key_file = key_file
        self.known_hosts_file = known_hosts_file
        self.pinned_host_key = access.host_key
        self.connect_timeout = connect_timeout
        self.connections = 0  # how often this node was connected to (reuse keeps it at 1)
        self._lock = threading.RLock()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._orphans: set[str] = set()  # temp files a dropped connection kept us from removing
        self._real_root: str | None = None  # the root, resolved on the node (per connection)

    # --- describing and connecting ------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def describe(self) -> str:
        root = f", root {self.root}" if self.root != "/" else ""
        return f"node {self.node} (ssh {self.address}{root})"

    def _fail(self, message: str, *, hint: str | None = None) -> NodeUnreachableError:
        return NodeUnreachableError(f"{self.describe()}: {message}", hint=hint)

    def _where(self, sftp: paramiko.SFTPClient, path: str) -> str:
        """Where the node path ``path`` is under the root, once its directory is known to be
        inside the root: the node resolves the links on the way (SFTP's realpath, of the
        deepest directory that exists; a missing one is made later, inside it), and the
        result must stay in the root. The last component is not resolved (a link to a file is
        followed as a node path by :meth:`_through_links`)."""
        path = node_path(self.describe(), path)
        where = posixpath.join(self.root, path.lstrip("/"))
        if path == "/" or self.root == "/":  # nothing on the node is outside "/"
            return where
        if self._real_root is None:
            self._real_root = sftp.normalize(self.root)
        directory = posixpath.dirname(where)
        while True:
            try:
                real = sftp.normalize(directory)
                break
            except OSError as exc:
                if exc.errno != errno.ENOENT or _lost(exc):
                    raise
            # Missing, or a link that leads nowhere: such a link is refused, whatever it names.
            if stat.S_ISLNK(_lstat_or_none(sftp, directory)):
                raise outside_root(self.describe(), path, str(sftp.readlink(directory)), dangling=True)
            directory = posixpath.dirname(directory)
        if not inside(real, self._real_root):
            raise outside_root(self.describe(), path, real)
        return where

    def _host_key_name(self) -> str:
        # How known_hosts names a host (OpenSSH and paramiko alike).
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _private_key(self) -> paramiko.PKey:
        # The key's one source today; a key from a Secret (keySecret) becomes another here.
        try:
            read_limited(self.key_file, KEY_FILE_MAX_BYTES)  # a regular file, so that reading it cannot hang
            return paramiko.PKey.from_path(self.key_file)
        except paramiko.PasswordRequiredException as exc:
            raise self._fail(f"the key file {self.key_file} is encrypted; careconcile needs a key without a "
                             "passphrase") from exc
        except OSError as exc:
            raise self._fail(f"cannot read the key file {self.key_file}: {_reason(exc)}",
                             hint="check keyFile (relative paths are relative to the spec file's directory)") from exc
        except (paramiko.SSHException, ValueError) as exc:
            raise self._fail(f"the key file {self.key_file} is not a private key careconcile can read ({exc})") from exc

    def _expected_host_keys(self, client: paramiko.SSHClient) -> str:
        """Load the keys the node may offer into ``client``; returns where they came from."""
        keys = client.get_host_keys()
        if self.pinned_host_key is not None:
            kind, data = self.pinned_host_key.split()[:2]
            keys.add(self._host_key_name(), kind, paramiko.PKey.from_type_string(kind, base64.b64decode(data)))
            return "the spec's hostKey"
        assert self.known_hosts_file is not None
        try:
            raw = read_limited(self.known_hosts_file, KNOWN_HOSTS_MAX_BYTES)
        except OSError as exc:
            raise self._fail(f"cannot read the known_hosts file {self.known_hosts_file}: {_reason(exc)}",
                             hint="check knownHostsFile (relative paths are relative to the spec file's "
                                  "directory)") from exc
        try:
            entries = known_hosts_entries(raw)
        except ValueError as exc:
            raise self._fail(f"the known_hosts file {self.known_hosts_file}: {exc}") from None
        # Only this node's keys: a file of thousands of hosts costs no more than one (paramiko's
        # add scans every entry), and a malformed hashed name never reaches paramiko's lookup.
        name = self._host_key_name()
        for entry in entries:
            if any(_names(written, name) for written in entry.hostnames):
                keys.add(name, entry.key.get_name(), entry.key)
        return f"the known_hosts file {self.known_hosts_file}"

    def _connect(self) -> paramiko.SFTPClient:
        key = self._private_key()
        client = paramiko.SSHClient()
        expected_from = self._expected_host_keys(client)
        client.set_missing_host_key_policy(_RejectUnknown())
        where = f"{self.host}:{self.port}"
        timeout = self.connect_timeout
        try:
            client.connect(self.host, self.port, username=self.user, pkey=key, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
                           allow_agent=False, look_for_keys=False)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise self._fail(
                f"wrong host key: {where} offered {key_fingerprint(exc.key)}, but {expected_from} expects "
                f"{key_fingerprint(exc.expected_key)}; not connecting",
                hint="if the node's host key changed on purpose, check the new key out of band "
                     f"(ssh-keyscan -p {self.port} {self.host}) and update the spec") from exc
        except _UnknownHostKey as exc:
            client.close()
            raise self._fail(
                f"unknown host key: {where} offered {exc}, and {expected_from} holds no key for "
                f"{self._host_key_name()}; careconcile never trusts a host key on first use; not connecting",
                hint="add the node's host key to the known_hosts file, or pin it with hostKey") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise self._fail(f"{where} refused the key {self.key_file} ({key_fingerprint(key)}) for user "
                             f"{self.user}: {exc}",
                             hint=f"add the key's public half to {self.user}'s authorized_keys on the node") from exc
        except paramiko.ssh_exception.NoValidConnectionsError as exc:
            client.close()
            raise self._fail(f"cannot connect to {where}: connection refused",
                             hint="is sshd running there, on that port?") from exc
        except socket.timeout as exc:
            client.close()
            raise self._fail(f"cannot connect to {where}: no answer within {timeout:.0f}s") from exc
        except (paramiko.SSHException, EOFError) as exc:
            client.close()
            raise self._fail(f"SSH handshake with {where} failed: {exc or type(exc).__name__}") from exc
        except OSError as exc:
            client.close()
            raise self._fail(f"cannot connect to {where}: {_reason(exc)}") from exc
        try:
            transport = client.get_transport()
            assert transport is not None
            sftp = _CountedSFTPClient.from_transport(transport)
            if sftp is None:
                raise paramiko.SSHException("the SFTP channel could not be opened")
        except (paramiko.SSHException, EOFError, OSError) as exc:
            client.close()
            raise self._fail(f"{where} offers no SFTP subsystem: {exc or type(exc).__name__}",
                             hint="careconcile reaches node files over SFTP; enable sshd's sftp Subsystem") from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(KEEPALIVE_SECONDS)
        sftp.get_channel().settimeout(OPERATION_TIMEOUT)
        self._client, self._sftp = client, sftp
        self.connections += 1
        _open.add(self)
        for orphan in sorted(self._orphans):  # left by a connection that dropped mid-write
            with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
                sftp.remove(orphan)
            self._orphans.discard(orphan)
        return sftp

    def _session(self) -> paramiko.SFTPClient:
        if self._sftp is not None and self._client is not None:
            transport = self._client.get_transport()
            if transport is not None and transport.is_active():
                return self._sftp
            self.close()
        return self._connect()

    def _run(self, doing: str, work: Callable[[paramiko.SFTPClient], Result]) -> Result:
        """``work`` on this node's SFTP session, one call at a time; errors name the node."""
        with self._lock:
            sftp = self._session()
            try:
                return work(sftp)
            except CareconcileError:
                raise
            except Exception as exc:
                if _lost(exc):
                    self.close()
                    raise self._fail(f"lost the connection while trying to {doing}: {exc or type(exc).__name__}") from exc
                raise self._fail(f"cannot {doing}: {_reason(exc)}") from exc

    def close(self) -> None:
        with self._lock:
            client, self._client, self._sftp = self._client, None, None
            self._real_root = None
            _open.discard(self)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    # --- the NodeFiles methods -----------------------------------------------------------

    def check(self) -> None:
        def root_is_directory(sftp: paramiko.SFTPClient) -> None:
            try:
                attributes = sftp.stat(self.root)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise self._fail(f"the root directory {self.root} does not exist on the node",
                                     hint="check spec.clusters[].nodes[].access.ssh.root") from None
                raise
            if not stat.S_ISDIR(attributes.st_mode or 0):
                raise self._fail(f"the root {self.root} is not a directory on the node")
        self._run(f"read the root directory {self.root}", root_is_directory)

    def read(self, path: str) -> bytes | None:
        def read(sftp: paramiko.SFTPClient) -> bytes | None:
            try:
                with sftp.open(self._through_links(sftp, path), "rb") as handle:
                    return handle.read()
            except OSError as exc:
                if exc.errno == errno.ENOENT and not _lost(exc):
                    return None
                raise
        return self._run(f"read {path}", read)

    def mode(self, path: str) -> int | None:
        def mode(sftp: paramiko.SFTPClient) -> int | None:
            try:
                return (sftp.stat(self._through_links(sftp, path)).st_mode or 0) & 0o777
            except OSError as exc:
                if exc.errno == errno.ENOENT and not _lost(exc):
                    return None
                raise
        return self._run(f"read the mode of {path}", mode)

    def write(self, path: str, content: bytes, mode: int) -> None:
        mode = file_mode(content, mode)  # at most 0600 for a key, as a local write

        def write(sftp: paramiko.SFTPClient) -> None:
            target = self._through_links(sftp, path)
            directory, name = posixpath.split(target)
            temp = posixpath.join(directory, f".{name}.careconcile-{secrets.token_hex(4)}.tmp")
            _make_directories(sftp, directory)
            try:
                existing = sftp.stat(target)
            except OSError as exc:
                if exc.errno != errno.ENOENT or _lost(exc):
                    raise
                existing = None
            handle = _create(sftp, temp, mode)
            try:
                with handle:
                    handle.chmod(mode)  # exactly the mode: the server's umask may have taken bits away
                    if existing is not None:
                        mine = handle.stat()
                        if (mine.st_uid, mine.st_gid) != (existing.st_uid, existing.st_gid):
                            handle.chown(existing.st_uid, existing.st_gid)  # root may; others fail here
                    handle.write(content)
                    handle.flush()
                    _fsync(sftp, handle)
                sftp.posix_rename(temp, target)
            except BaseException as exc:
                try:
                    sftp.remove(temp)
                except Exception:
                    if _lost(exc):
                        self._orphans.add(temp)  # removed when the node is reached again
                raise
        self._run(f"write {path}", write)

    def _through_links(self, sftp: paramiko.SFTPClient, path: str) -> str:
        """Where a read or write of ``path`` goes: the file a symbolic link there points to,
        followed as a path on the node, so inside the root."""
        asked = path
        for _ in range(MAX_LINKS + 1):  # a chain of links, but not a loop
            where = self._where(sftp, path)
            if not stat.S_ISLNK(_lstat_or_none(sftp, where)):
                return where
            path = link_destination(path, sftp.readlink(where))
        raise too_many_links(self.describe(), asked)

    def remove(self, path: str) -> None:
        def remove(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.remove(self._where(sftp, path))
            except OSError as exc:
                if exc.errno != errno.ENOENT or _lost(exc):
                    raise
        self._run(f"remove {path}", remove)

    def remove_directory(self, path: str) -> None:
        def remove_directory(sftp: paramiko.SFTPClient) -> None:
            where = self._where(sftp, path)
            try:
                sftp.rmdir(where)
            except OSError as exc:
                if _lost(exc) or exc.errno not in (errno.ENOENT, None):
                    raise
                if exc.errno is None and not sftp.listdir(where):
                    raise  # SFTP says only "Failure": the directory is empty, so it was something else
        self._run(f"remove the directory {path}", remove_directory)

    def run(self, argv: list[str], timeout: float) -> None:
        """Run a command on the node (the restart of its kubelet) in a session channel of the
        node's connection, the arguments quoted for the login shell; wait at most ``timeout``
        seconds for it to end. A failure names the command, its exit status and the last
        lines of its stderr; its stdout is not kept."""
        command = shlex.join(argv)

        def run(sftp: paramiko.SFTPClient) -> None:
            transport = self._client.get_transport() if self._client is not None else None
            if transport is None or not transport.is_active():
                raise paramiko.SSHException("the connection is closed")
            channel = transport.open_session(timeout=self.connect_timeout)
            stderr = bytearray()
            try:
                channel.exec_command(command)
                channel.shutdown_write()  # nothing on its stdin
                deadline = time.monotonic() + timeout
                while True:
                    busy = False
                    while channel.recv_ready():
                        channel.recv(65536)
                        busy = True
                    while channel.recv_stderr_ready():
                        stderr += channel.recv_stderr(65536)
                        busy = True
                    if not busy and channel.exit_status_ready():
                        break
                    if time.monotonic() > deadline:
                        raise command_failed(self.describe(), argv, f"did not finish within {timeout:.0f}s",
                                             bytes(stderr))
                    if not busy:
                        time.sleep(0.02)
                status = channel.recv_exit_status()
            finally:
                channel.close()
            if status == -1 and not transport.is_active():
                raise paramiko.SSHException("the connection closed before the command ended")
            if status != 0:
                how = "ended without an exit status (killed by a signal?)" if status == -1 \
                    else f"failed with exit status {status}"
                raise command_failed(self.describe(), argv, how, bytes(stderr))
        self._run(f"run `{command}`", run)


# OpenSSH's known_hosts for thousands of hosts stays far below this; an RSA 16384 key is 13 KiB.
KNOWN_HOSTS_MAX_BYTES = 4 * 1024 * 1024
KEY_FILE_MAX_BYTES = 64 * 1024


def _names(written: str, host: str) -> bool:
    """Whether a known_hosts host name stands for ``host``: the same, or hashed (|1|salt|hash)
    from it, as OpenSSH matches it."""
    if not written.startswith("|1|"):
        return written == host
    try:
        return hmac.compare_digest(paramiko.HostKeys.hash_host(host, written), written)
    except (AssertionError, ValueError, TypeError):  # a salt that is not 20 bytes of base64
        return False


def known_hosts_entries(raw: bytes) -> list[HostKeyEntry]:
    """The host keys of a known_hosts file. Lines with a marker are left out: careconcile
    does not verify host certificates (``@cert-authority``), and a ``@revoked`` key is never
    trusted since only unmarked lines are. A line that is not a known_hosts entry is a
    ValueError naming its number and never quoting it; a line with a key type paramiko
    cannot use is passed over, as paramiko itself does."""
    entries = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        line = line.strip()
        if not line or line.startswith(b"#") or line.startswith(b"@"):
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"line {number} is not UTF-8 text") from None
        fields = text.split()
        try:
            entry = HostKeyEntry.from_line(text, number) if len(fields) >= 3 else None
        except (InvalidHostKey, paramiko.SSHException, ValueError, TypeError, IndexError):
            entry = None
        if entry is None and len(fields) >= 3 and fields[1] not in HOST_KEY_TYPES:
            continue  # a key type paramiko cannot use (sk-ssh-ed25519@openssh.com, ssh-dss): as before, passed over
        if entry is None or entry.key is None:
            raise ValueError(f"line {number} is not a known_hosts entry careconcile can read "
                             "(HOSTS KEYTYPE BASE64-KEY, with a key type of ssh-ed25519, ecdsa-sha2-nistp256/384/521 "
                             "or ssh-rsa)")
        entries.append(entry)
    return entries


def _create(sftp: paramiko.SFTPClient, path: str, mode: int) -> SFTPFile:
    """Create ``path`` exclusively, with ``mode`` from the start: SFTP's open carries the new
    file's permissions, which paramiko's ``open`` does not expose."""
    attributes = SFTPAttributes()
    attributes.st_mode = mode
    kind, message = sftp._request(CMD_OPEN, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL, attributes)
    if kind != CMD_HANDLE:
        raise paramiko.SFTPError(f"expected a file handle from the server opening {path}")
    return SFTPFile(sftp, message.get_binary(), "wb")


def _fsync(sftp: paramiko.SFTPClient, handle: SFTPFile) -> None:
    """OpenSSH's fsync@openssh.com, when the server has it."""
    try:
        sftp._request(CMD_EXTENDED, "fsync@openssh.com", handle.handle)
    except OSError as exc:
        if exc.errno is not None or "unsupported" not in str(exc).lower():
            raise


def _lstat_or_none(sftp: paramiko.SFTPClient, path: str) -> int:
    """The mode of ``path`` itself (not of what a link there names); 0 when it does not exist."""
    try:
        return sftp.lstat(path).st_mode or 0
    except OSError as exc:
        if exc.errno != errno.ENOENT or _lost(exc):
            raise
        return 0


def _make_directories(sftp: paramiko.SFTPClient, directory: str) -> None:
    missing = []
    while directory not in ("", "/"):
        try:
            sftp.stat(directory)
            break
        except OSError as exc:
            if exc.errno != errno.ENOENT or _lost(exc):
                raise
            missing.append(directory)
            directory = posixpath.dirname(directory)
    for path in reversed(missing):
        try:
            sftp.mkdir(path, 0o755)
        except OSError as exc:
            if _lost(exc) or not _is_directory(sftp, path):  # else another writer made it meanwhile
                raise


def _is_directory(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        return stat.S_ISDIR(sftp.stat(path).st_mode or 0)
    except OSError:
        return False
