"""The ``ssh`` transport: a node's files over SFTP, with the same methods as ``local``.

One SSH connection and one SFTP session per node, opened on first use and reused for
every later call; a lock per node makes it safe to share between threads (work on
different nodes runs concurrently, each node's calls one after the other). A connection
that drops is opened again on the next call.

Host keys are never trusted on first use: the spec pins the node's key (``hostKey``) or
names a known_hosts file that holds it. Writes are atomic: a temp file beside the target,
created with the file's mode (at most 0600 when created ahead), its exact mode set before
any byte is written, given the old file's owner,
fsynced, then renamed over the target (OpenSSH's posix-rename), and removed on any
failure. Restarting a static pod is a write of its manifest; the one command it runs
(``run``, over the same connection) is the restart of the node's kubelet.

Paths stay inside the node's root as with ``local`` (:mod:`reconciler.shell.nodes`): no
``..``, links to files followed as node paths, and the directory a file is in resolved
on the node (SFTP realpath) and refused, as a :class:`NodePathError`, when a link on the
way leads outside the root.

Round trips: requests that do not wait on each other's answers are sent together
(:class:`~reconciler.shell.sftp_pipeline.Pipeline`). An observation of a node is a batch
(:meth:`SSHNodeFiles.batch`) that reads the files the node's previous observation read
(the first time, those its caller expects) in three round trips for them all
(:meth:`SSHNodeFiles.read_many`; two with the root "/"); a read outside a batch takes the
same three (it was six), ``mode`` one (three), ``write`` three (ten or more; four in a
directory the connection has not found yet). Which paths need the ``lstat``: with a root
other than "/", every
one, since any file of a hostile node may be a link, and a link the node followed itself
could lead out of the root; it costs no round trip of its own, sent with the realpath of
the directories. With the root "/", reads skip it: a link, followed by the node, leads
where it would as a node path, and nothing is outside "/". Writes keep it there too: a
write goes through a link (kubeadm's kubelet-client-current.pem) to replace the file it
names, which needs to know the link. A path that is a link, or in a directory that does
not exist, is read and written the one-by-one way, as before. :data:`REQUESTS` counts the
requests by kind and the round trips.

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
from typing import Callable, Iterable, Iterator, TypeVar

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_NAMES
from paramiko.sftp_attr import SFTPAttributes
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey
from paramiko.sftp_file import SFTPFile

from reconciler._files import file_mode, read_limited
from reconciler.core.spec import HOST_KEY_TYPES, SSHAccess
from reconciler.errors import CareconcileError, NodeUnreachableError
from reconciler.shell.nodes import (
    MAX_LINKS, command_failed, inside, link_destination, node_path, outside_root, too_many_links,
)
from reconciler.shell.sftp_pipeline import Pipeline

CONNECT_TIMEOUT = 10.0  # TCP connect, SSH banner, authentication, opening the SFTP channel
OPERATION_TIMEOUT = 60.0  # one SFTP request without an answer: the connection is taken as lost
KEEPALIVE_SECONDS = 30  # phase checks may leave a connection idle for minutes
# What one pipelined read asks for: a whole certificate, key, kubeconfig or manifest (the
# files careconcile reads are a few KiB); a larger file is read on one by one.
READ_CHUNK = 32768
# Write requests of one file sent before the first answer is read: their answers must fit
# in the SSH channel's window (paramiko's 2 MiB), or neither side could go on.
WRITES_IN_FLIGHT = 64

Result = TypeVar("Result")

# Connections still open when the process ends are closed then (the CLI commands end
# with the process; code that opens clusters in-process closes them with ClusterAccess.close).
_open: "weakref.WeakSet[SSHNodeFiles]" = weakref.WeakSet()


def close_all() -> None:
    for files in list(_open):
        files.close()


atexit.register(close_all)


class RequestCount:
    """The SFTP requests sent, by kind (``open``, ``lstat``, ``realpath``...), and the round
    trips they took, over every node's connection since the process started. A request
    sent alone is a round trip of its own; requests sent together (a
    :class:`~reconciler.shell.sftp_pipeline.Pipeline`) share one, counted when the first
    answer is waited for. Thread-safe, and cheap (a lock and a dict update per request);
    benchmarks read it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def add(self, kind: str, *, round_trip: bool) -> None:
        with self._lock:
            self._counts[kind] += 1
            if round_trip:
                self._counts[ROUND_TRIPS] += 1

    def round_trip(self) -> None:
        with self._lock:
            self._counts[ROUND_TRIPS] += 1

    def snapshot(self) -> collections.Counter[str]:
        """Requests by kind, and the round trips under ROUND_TRIPS."""
        with self._lock:
            return collections.Counter(self._counts)


ROUND_TRIPS = "round trips"
REQUESTS = RequestCount()


class _CountedSFTPClient(paramiko.SFTPClient):
    """paramiko's SFTP client, counting each request it sends in :data:`REQUESTS`."""

    def _async_request(self, fileobj, t, *args):  # type: ignore[no-untyped-def]
        # paramiko's own calls wait for each answer; a Pipeline counts its round trips itself.
        REQUESTS.add(_request_name(t, args), round_trip=not isinstance(fileobj, Pipeline))
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

    remote = True

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
        # Directories a batch found on this connection: their files are not asked whether
        # the directory is missing (a directory that goes away takes the one-by-one way once).
        self._directories_found: set[str] = set()
        # Directories this connection found to be themselves (no link on the way) and inside
        # the root: a write creates its temp file there without waiting to be told so.
        self._real_directories: set[str] = set()
        # The session on which check() found the root a directory (once per connection).
        self._root_checked: paramiko.SFTPClient | None = None
        # What the last batch for each caller's expectation read, read ahead by the next one:
        # the observations of the different authorities of one node read different files.
        self._learned: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._batches = threading.local()  # per thread: the open batch's files, read ahead

    # --- describing and connecting ------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def place(self) -> tuple[str, ...]:
        return ("ssh", self.host, str(self.port), self.root)

    def abort(self) -> None:
        # Not under self._lock, which the call under way holds: closing the transport makes
        # its wait fail as a lost connection, and its temp file becomes an orphan.
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

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

    def _connected(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return self._sftp is not None and transport is not None and transport.is_active()

    def _session(self) -> paramiko.SFTPClient:
        if self._connected():
            assert self._sftp is not None
            return self._sftp
        self.close()  # whatever is left of a dropped connection
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
            self._root_checked = None
            self._directories_found = set()
            self._real_directories = set()
            _open.discard(self)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    # --- the NodeFiles methods -----------------------------------------------------------

    def check(self) -> None:
        """Once per connection: a root that goes away while connected makes each file under
        it missing, which the reader of a required file reports; a new connection checks again."""
        if self._root_checked is self._sftp and self._connected():  # connected: neither is None
            return

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
            self._root_checked = sftp
        self._run(f"read the root directory {self.root}", root_is_directory)

    def read(self, path: str) -> bytes | None:
        ahead = getattr(self._batches, "files", None)
        if ahead is not None:
            self._batches.asked.append(path)
            if path in ahead:
                found = ahead[path]
                if isinstance(found, CareconcileError):
                    raise found
                if isinstance(found, BaseException):
                    raise self._fail(f"cannot read {path}: {_reason(found)}") from found
                return found
        # Alone, the same pipelined way: 3 round trips (2 with the root "/") instead of 6.
        found = self._run(f"read {path}", lambda sftp: self._read_many(sftp, [path]))[path]
        if isinstance(found, CareconcileError):
            raise found
        if isinstance(found, BaseException):
            raise self._fail(f"cannot read {path}: {_reason(found)}") from found
        return found

    def _read_one(self, sftp: paramiko.SFTPClient, path: str) -> bytes | None:
        try:
            with sftp.open(self._through_links(sftp, path), "rb") as handle:
                return handle.read()
        except OSError as exc:
            if exc.errno == errno.ENOENT and not _lost(exc):
                return None
            raise

    @contextlib.contextmanager
    def batch(self, expected: Iterable[str] = ()) -> Iterator[None]:
        """Reads in this block (in this thread) of the files the node's previous batch with
        the same ``expected`` read (the first time: ``expected``, the files the caller
        expects to read) come from one
        pipelined read of them all at its start (:meth:`read_many`): a few round trips for
        the node instead of several per file. Phase checks observe the same files of every
        node each second, so every observation of a node is read this way. A file not read
        ahead is read as outside a batch, and so is every file once the block wrote or
        removed one."""
        if getattr(self._batches, "files", None) is not None:
            yield  # nested: the outer batch's
            return
        ahead: dict[str, bytes | None | BaseException] = {}
        key = tuple(expected)
        paths = self._learned.get(key) or key
        if paths:
            with contextlib.suppress(CareconcileError):  # then each read fails (or not) on its own
                ahead = self.read_many(paths)
        self._batches.files, self._batches.asked = ahead, []
        try:
            yield
        finally:
            asked = self._batches.asked
            self._batches.files = self._batches.asked = None
            if asked:
                self._learned[key] = tuple(dict.fromkeys(asked))

    def _forget_batch(self) -> None:
        if getattr(self._batches, "files", None):
            self._batches.files = {}

    def read_many(self, paths: Iterable[str]) -> dict[str, bytes | None | BaseException]:
        """The files at ``paths``, read with their requests pipelined: what ``read`` would
        return for each (None for a missing file), or the error it would raise.

        Round trips for the node, whatever the number of files: (1) each directory resolved
        on the node (realpath) and each file's own lstat, sent together; (2) the files
        opened; (3) for each a read of up to READ_CHUNK bytes and its close. The
        confinement is that of ``read``: a directory that resolves outside the root is
        refused before anything is opened, and a path that is a symbolic link, or whose
        directory does not exist, is read one by one through the links (:meth:`_read_one`).
        With the root "/", every path on the node is inside it and a link followed by the
        node leads where it would as a node path, so (1) is not needed and the files are
        opened at once, and (3) asks each one's size (fstat) too. A file is whole when its
        bytes are as many as its lstat (or fstat) said; otherwise (larger than READ_CHUNK, or
        replaced in between) it is read one by one."""
        return self._run("read files", lambda sftp: self._read_many(sftp, list(dict.fromkeys(paths))))

    def _read_many(self, sftp: paramiko.SFTPClient, paths: list[str]) -> dict[str, bytes | None | BaseException]:
        pipe = Pipeline(sftp, REQUESTS.round_trip)
        found: dict[str, bytes | None | BaseException] = {}
        wheres: dict[str, str] = {}
        for path in paths:
            try:
                wheres[path] = posixpath.join(self.root, node_path(self.describe(), path).lstrip("/"))
            except CareconcileError as exc:
                found[path] = exc
        one_by_one = []
        sizes: dict[str, int | None] = {}
        if self.root == "/":
            to_open = dict(wheres)
        else:
            root = pipe.realpath(self.root) if self._real_root is None else None
            directories = {directory: pipe.realpath(directory)
                           for directory in sorted({posixpath.dirname(where) for where in wheres.values()})}
            # For a directory that may turn out missing (not found there before on this
            # connection): whether it is no entry at all, in a parent that really is inside
            # the root (then its files are simply missing). Asked with the rest, so no round
            # trip of its own, and only for those, so no request for the directories that are.
            absent = {directory: (pipe.lstat(directory), pipe.realpath(posixpath.dirname(directory)))
                      for directory in directories if directory not in self._directories_found}
            lstats = {path: pipe.lstat(where) for path, where in wheres.items()}
            if root is not None:
                self._real_root = pipe.name(root)
            real = {directory: pipe.outcome(number, pipe.name) for directory, number in directories.items()}
            missing = {directory: self._missing_directory(pipe, *numbers) for directory, numbers in absent.items()}
            self._directories_found.update(directory for directory, answer in real.items() if isinstance(answer, str))
            for directory, answer in real.items():
                if answer == directory and inside(directory, self._real_root):
                    self._real_directories.add(directory)
                else:
                    self._real_directories.discard(directory)
            attributes = {path: pipe.outcome(number, pipe.attributes) for path, number in lstats.items()}
            to_open = {}
            for path, where in wheres.items():
                directory, own = real[posixpath.dirname(where)], attributes[path]
                if isinstance(directory, BaseException) and missing.get(posixpath.dirname(where)):
                    found[path] = None  # in a directory that is not there (a signer's before staging)
                elif isinstance(directory, BaseException):  # a link that leads nowhere, or deeper missing
                    one_by_one.append(path)
                elif not inside(directory, self._real_root):
                    found[path] = outside_root(self.describe(), node_path(self.describe(), path), directory)
                elif isinstance(own, BaseException):
                    found[path] = None if own.errno == errno.ENOENT else own
                elif stat.S_ISLNK(own.st_mode or 0):
                    one_by_one.append(path)  # followed as a node path, link by link
                else:
                    to_open[path] = where
                    sizes[path] = own.st_size
        opened = {path: pipe.open_read(where) for path, where in to_open.items()}
        handles = {}
        for path, number in opened.items():
            handle = pipe.outcome(number, pipe.handle)
            if isinstance(handle, BaseException):
                found[path] = None if handle.errno == errno.ENOENT else handle
            else:
                handles[path] = handle
        # The size the file had: its lstat's (of the file itself, not a link), else its fstat.
        asked = {path: (sizes[path] if path in sizes else pipe.fstat(handle), pipe.read(handle, 0, READ_CHUNK),
                        pipe.close(handle))
                 for path, handle in handles.items()}
        for path, (size, data, closed) in asked.items():
            if path not in sizes:
                attributes = pipe.outcome(size, pipe.attributes)
                size = None if isinstance(attributes, BaseException) else attributes.st_size
            content = pipe.outcome(data, pipe.data)
            pipe.outcome(closed, pipe.done)  # a file read whole is read, closed or not
            if isinstance(content, BaseException):
                found[path] = content
            elif size != len(content):  # larger than one read, or replaced meanwhile: read it again
                one_by_one.append(path)
            else:
                found[path] = content
        for path in one_by_one:
            try:
                found[path] = self._read_one(sftp, path)
            except CareconcileError as exc:
                found[path] = exc
            except OSError as exc:
                if _lost(exc):
                    raise
                found[path] = exc
        return found

    def _missing_directory(self, pipe: Pipeline, own: int, parent: int) -> bool:
        """Whether a directory is no entry at all (its lstat: missing) in a parent that
        resolves inside the root: its files are then missing, as the one-by-one way finds
        them, without its round trips. Anything else (a dangling link, a missing parent)
        goes the one-by-one way, which refuses what it must."""
        own_attributes = pipe.outcome(own, pipe.attributes)
        real_parent = pipe.outcome(parent, pipe.name)
        return (isinstance(own_attributes, OSError) and own_attributes.errno == errno.ENOENT
                and isinstance(real_parent, str) and self._real_root is not None
                and inside(real_parent, self._real_root))

    def _locate(self, pipe: Pipeline, path: str) -> tuple[str, SFTPAttributes | None] | None:
        """Where ``path`` is under the root and the attributes of the file there (None: it
        does not exist), in one round trip: its directory resolved on the node, its lstat and
        its stat sent together. None when it needs the one-by-one way (:meth:`_through_links`):
        the path is a symbolic link, or its directory does not exist. Refused, as
        :meth:`_where` refuses it, when the directory resolves outside the root."""
        _, answer = self._ask_location(pipe, path)
        return answer()

    def _ask_location(self, pipe: Pipeline, path: str
                      ) -> tuple[str, Callable[[], tuple[str, SFTPAttributes | None] | None]]:
        """:meth:`_locate` in two steps: sends its requests and returns the path under the
        root with a function that reads their answers, so that the caller may send requests
        of its own in the same round trip in between."""
        path = node_path(self.describe(), path)
        where = posixpath.join(self.root, path.lstrip("/"))
        confine = path != "/" and self.root != "/"
        root = pipe.realpath(self.root) if confine and self._real_root is None else None
        directory = pipe.realpath(posixpath.dirname(where)) if confine else None
        # OpenSSH resolves a path whose last component is missing: whether the directory is
        # there, its stat says.
        made = pipe.stat(posixpath.dirname(where))
        own, followed = pipe.lstat(where), pipe.stat(where)

        def answer() -> tuple[str, SFTPAttributes | None] | None:
            if root is not None:
                self._real_root = pipe.name(root)
            real = pipe.outcome(directory, pipe.name) if directory is not None else None
            there = pipe.outcome(made, pipe.attributes)
            own_attributes = pipe.outcome(own, pipe.attributes)
            attributes = pipe.outcome(followed, pipe.attributes)
            if real is not None and real != posixpath.dirname(where):
                # A link now, or gone: the next write there waits for the answers again.
                self._real_directories.discard(posixpath.dirname(where))
            for found in (real, there):
                if isinstance(found, OSError):
                    if found.errno != errno.ENOENT:
                        raise found
                    return None  # a directory to make (or a link that leads nowhere): the one-by-one way
            if real is not None and not inside(real, self._real_root or "/"):
                raise outside_root(self.describe(), path, real)
            if real == posixpath.dirname(where):
                self._real_directories.add(real)
            if isinstance(own_attributes, OSError):
                if own_attributes.errno != errno.ENOENT:
                    raise own_attributes
                return where, None
            if stat.S_ISLNK(own_attributes.st_mode or 0):
                return None
            if isinstance(attributes, OSError):
                if attributes.errno != errno.ENOENT:
                    raise attributes
                return where, None  # removed in between
            return where, attributes
        return where, answer

    def mode(self, path: str) -> int | None:
        def mode(sftp: paramiko.SFTPClient) -> int | None:
            located = self._locate(Pipeline(sftp, REQUESTS.round_trip), path)
            if located is not None:
                _, attributes = located
                return None if attributes is None else (attributes.st_mode or 0) & 0o777
            try:
                return (sftp.stat(self._through_links(sftp, path)).st_mode or 0) & 0o777
            except OSError as exc:
                if exc.errno == errno.ENOENT and not _lost(exc):
                    return None
                raise
        return self._run(f"read the mode of {path}", mode)

    def write(self, path: str, content: bytes, mode: int, *, keep_mode: bool = False) -> None:
        """Atomically, as the module says, in three round trips: where the file is, its mode
        and its owner (:meth:`_locate`), with the exclusive create of the temp file beside it
        when its directory is known (see below; else the create is a round trip of its own),
        with the mode (at most 0600 when sent ahead; a server's umask can only take bits
        away); then, sent together, its
        exact mode, the old file's owner (a chown to one's own owner is allowed to anyone, so
        it is asked whenever there is an old file), the bytes, the fsync and the close; the
        rename, sent only once all of those succeeded. The server carries out requests on one
        handle in the order sent, so the mode is the temp file's before any byte is in it. A
        path that is a link, or in a directory not made yet, goes the one-by-one way
        (:meth:`_through_links`, then the directories made), its temp file made ahead
        removed."""
        mode = file_mode(content, mode)  # at most 0600 for a key, as a local write
        self._forget_batch()

        def write(sftp: paramiko.SFTPClient) -> None:
            pipe = Pipeline(sftp, REQUESTS.round_trip)
            where, location = self._ask_location(pipe, path)
            early: tuple[str, int] | None = None
            # The temp file is created in the location's round trip, before its answers say
            # whether the file is there: only in a directory this connection found inside the
            # root with no link on the way (any directory when the root is "/"). Should the
            # node have made it a link out of the root since, the temp file is created there
            # empty and removed at once, and nothing is written (the answers refuse the path).
            if self.root == "/" or posixpath.dirname(where) in self._real_directories:
                temp = _temp_path(where)
                self._orphans.add(temp)  # until it is renamed or removed, whatever comes between
                # At most 0600 until the exact mode is set, which comes before any byte: a
                # kept mode may be narrower than ``mode``, and is not known yet.
                early = (temp, pipe.create(temp, mode & 0o600))
            try:
                located = location()
            except Exception as exc:
                if early is not None and not _lost(exc):
                    with contextlib.suppress(Exception):  # the refusal is what to report
                        self._discard(pipe, *early)
                raise
            except BaseException:
                if early is not None:
                    self._drop_session()
                raise
            if located is None and early is not None:
                self._discard(pipe, *early)  # a link, or a directory to make: the one-by-one way
                early = None
            if located is None:
                target = self._through_links(sftp, path)
                _make_directories(sftp, posixpath.dirname(target))
                try:
                    existing = sftp.stat(target)
                except OSError as exc:
                    if exc.errno != errno.ENOENT or _lost(exc):
                        raise
                    existing = None
            else:
                target, existing = located
            wanted = mode
            if keep_mode and existing is not None:
                wanted = file_mode(content, (existing.st_mode or 0) & 0o777 or mode)
            if early is not None:
                temp, created = early
                try:
                    handle = SFTPFile(sftp, pipe.handle(created), "wb")
                except OSError as exc:
                    if not _lost(exc):
                        self._orphans.discard(temp)  # not created
                    raise
                except BaseException:
                    self._drop_session()
                    raise
            else:
                temp = _temp_path(target)
                handle = _create(sftp, temp, wanted)
            try:
                exact = SFTPAttributes()
                exact.st_mode = wanted  # exactly the mode: the server's umask may have taken bits away
                sent = [pipe.fsetstat(handle.handle, exact)]
                if existing is not None:  # the old file's owner (root may; others only their own)
                    owner = SFTPAttributes()
                    owner.st_uid, owner.st_gid = existing.st_uid, existing.st_gid
                    sent.append(pipe.fsetstat(handle.handle, owner))
                for offset in range(0, len(content), READ_CHUNK):
                    if len(sent) == WRITES_IN_FLIGHT:  # a large file: a window of requests at a time
                        pipe.done(sent.pop(0))
                    sent.append(pipe.write(handle.handle, offset, content[offset:offset + READ_CHUNK]))
                synced, closed = pipe.fsync(handle.handle), pipe.close(handle.handle)
                handle._closed = True  # closed by the request above: paramiko must not close it again
                for number in sent:
                    pipe.done(number)
                try:
                    pipe.done(synced)
                except OSError as exc:
                    if exc.errno is not None or "unsupported" not in str(exc).lower():
                        raise  # a server without fsync@openssh.com says "unsupported"
                pipe.done(closed)
                pipe.done(pipe.posix_rename(temp, target))
                self._orphans.discard(temp)
            except OSError as exc:
                if _lost(exc):
                    self._orphans.add(temp)  # removed when the node is reached again
                    raise
                # An SFTP status: the session is sound, and the temp file goes at once.
                if not handle._closed:
                    with contextlib.suppress(Exception):
                        handle.close()
                try:
                    sftp.remove(temp)
                    self._orphans.discard(temp)
                except Exception as again:
                    if _lost(again):
                        self._orphans.add(temp)
                raise
            except BaseException:
                # Ctrl-C, SIGTERM or a lost connection, maybe in the middle of sending a
                # request of the pipeline: the session may hold half a packet, so it is
                # dropped, and a new connection removes the temp file (as an orphan).
                # The interrupted request may hold the dropped client's lock: the handle
                # must not try to close itself on it when collected (that waited forever).
                handle._closed = True
                self._orphans.add(temp)
                self._drop_session()
                raise
        self._run(f"write {path}", write)

    def _drop_session(self) -> None:
        """After Ctrl-C, SIGTERM or a lost connection in the middle of a write: the session
        may hold half a packet, so it is dropped, and a new connection at once removes the
        temp file (an orphan)."""
        self.close()
        with contextlib.suppress(Exception):
            self._session()

    def _discard(self, pipe: Pipeline, temp: str, created: int) -> None:
        """A temp file created ahead that the write does not use after all: closed and
        removed in one round trip (if it was created); an orphan if the connection drops."""
        handle = pipe.outcome(created, pipe.handle)
        if isinstance(handle, BaseException):
            self._orphans.discard(temp)  # not created (its directory is missing, or not writable)
            return
        closed, removed = pipe.close(handle), pipe.remove(temp)
        pipe.outcome(closed, pipe.done)
        if not isinstance(pipe.outcome(removed, pipe.done), BaseException):
            self._orphans.discard(temp)

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
        self._forget_batch()

        def remove(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.remove(self._where(sftp, path))
            except OSError as exc:
                if exc.errno != errno.ENOENT or _lost(exc):
                    raise
        self._run(f"remove {path}", remove)

    def remove_directory(self, path: str) -> None:
        self._forget_batch()

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


def _temp_path(target: str) -> str:
    """A new name beside ``target`` for the file that replaces it."""
    directory, name = posixpath.split(target)
    return posixpath.join(directory, f".{name}.careconcile-{secrets.token_hex(4)}.tmp")


def _create(sftp: paramiko.SFTPClient, path: str, mode: int) -> SFTPFile:
    """Create ``path`` exclusively, with ``mode`` from the start (:meth:`Pipeline.create`,
    alone: one round trip): SFTP's open carries the new file's permissions, which
    paramiko's ``open`` does not expose."""
    pipe = Pipeline(sftp, REQUESTS.round_trip)
    return SFTPFile(sftp, pipe.handle(pipe.create(path, mode)), "wb")


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
