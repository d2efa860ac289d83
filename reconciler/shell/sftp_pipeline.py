"""SFTP requests sent together, their answers read afterwards: one round trip for many.

paramiko's ``SFTPClient`` sends a request and waits for its answer before the next one, so
every request costs a round trip to the node. SFTP numbers its requests, and a server
(OpenSSH's ``sftp-server``) answers them in the order it got them, so a client may send
several before reading any answer. :class:`Pipeline` does that on a paramiko client: each
``send`` returns a request number at once, and :meth:`Pipeline.answer` reads until that
request's answer is in, keeping the answers of the others that come first. The
:mod:`reconciler.shell.ssh` transport uses it to read a node's files in a few round trips
whatever their number.

An answer that is an error status raises as paramiko's own calls do (``OSError`` with
``errno.ENOENT`` for a missing file, ``EOFError`` at the end of a file); a lost
connection raises ``paramiko.SSHException``, ``EOFError`` or ``socket.timeout``.
"""

from __future__ import annotations

from typing import Callable

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_ATTRS, CMD_CLOSE, CMD_DATA, CMD_EXTENDED, CMD_FSETSTAT, CMD_FSTAT, CMD_HANDLE, CMD_LSTAT, CMD_NAME,
    CMD_OPEN, CMD_READ, CMD_READLINK, CMD_REALPATH, CMD_RENAME, CMD_REMOVE, CMD_SETSTAT, CMD_STAT, CMD_STATUS,
    CMD_WRITE, SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_READ, SFTP_FLAG_WRITE, int64,
)
from paramiko.sftp_attr import SFTPAttributes


class Pipeline:
    """Requests on one SFTP session whose answers are read later, in any order asked.

    Not thread-safe beyond what paramiko's client is: the transport calls it under the
    node's lock, as every other call on the session."""

    def __init__(self, sftp: paramiko.SFTPClient, on_round_trip: Callable[[], None] = lambda: None) -> None:
        self.sftp = sftp
        self._answers: dict[int, tuple[int, Message]] = {}
        self._on_round_trip = on_round_trip  # called once per wave of requests waited for
        self._sent = False  # requests sent since the last wait

    # paramiko hands the answer of a request sent with a "file object" to that object.
    def _async_response(self, t: int, msg: Message, num: int) -> None:
        self._answers[num] = (t, msg)

    def _send(self, t: int, *args) -> int:  # type: ignore[no-untyped-def]
        self._sent = True
        return self.sftp._async_request(self, t, *args)

    def _wait(self, num: int) -> tuple[int, Message]:
        if num not in self._answers and self._sent:
            self._sent = False
            self._on_round_trip()
        while num not in self._answers:
            self.sftp._read_response()  # one packet, handed to us (or to whoever sent it)
        return self._answers.pop(num)

    def _status_or(self, num: int, expected: int) -> Message | None:
        """The answer of ``num``: None for an OK status, the message when it is of the
        ``expected`` kind; an error status raises."""
        t, msg = self._wait(num)
        if t == CMD_STATUS:
            self.sftp._convert_status(msg)  # raises unless OK
            return None
        if t != expected:
            raise paramiko.SFTPError(f"unexpected SFTP answer of type {t}")
        return msg

    # --- sending ----------------------------------------------------------------------

    def realpath(self, path: str) -> int:
        return self._send(CMD_REALPATH, path)

    def lstat(self, path: str) -> int:
        return self._send(CMD_LSTAT, path)

    def stat(self, path: str) -> int:
        return self._send(CMD_STAT, path)

    def readlink(self, path: str) -> int:
        return self._send(CMD_READLINK, path)

    def open_read(self, path: str) -> int:
        return self._send(CMD_OPEN, path, SFTP_FLAG_READ, SFTPAttributes())

    def create(self, path: str, mode: int) -> int:
        """Open a new file for writing, exclusively (it must not exist), with ``mode``."""
        attributes = SFTPAttributes()
        attributes.st_mode = mode
        return self._send(CMD_OPEN, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL, attributes)

    def read(self, handle: bytes, offset: int, length: int) -> int:
        return self._send(CMD_READ, handle, int64(offset), length)

    def write(self, handle: bytes, offset: int, data: bytes) -> int:
        return self._send(CMD_WRITE, handle, int64(offset), data)

    def fsetstat(self, handle: bytes, attributes: SFTPAttributes) -> int:
        return self._send(CMD_FSETSTAT, handle, attributes)

    def setstat(self, path: str, attributes: SFTPAttributes) -> int:
        return self._send(CMD_SETSTAT, path, attributes)

    def fstat(self, handle: bytes) -> int:
        return self._send(CMD_FSTAT, handle)

    def fsync(self, handle: bytes) -> int:
        return self._send(CMD_EXTENDED, "fsync@openssh.com", handle)

    def close(self, handle: bytes) -> int:
        return self._send(CMD_CLOSE, handle)

    def posix_rename(self, old: str, new: str) -> int:
        return self._send(CMD_EXTENDED, "posix-rename@openssh.com", old, new)

    def rename(self, old: str, new: str) -> int:
        return self._send(CMD_RENAME, old, new)

    def remove(self, path: str) -> int:
        return self._send(CMD_REMOVE, path)

    # --- answers ----------------------------------------------------------------------

    def name(self, num: int) -> str:
        """The one name a realpath or readlink answers."""
        msg = self._status_or(num, CMD_NAME)
        if msg is None or msg.get_int() != 1:
            raise paramiko.SFTPError("expected one name in the SFTP answer")
        return msg.get_text()

    def attributes(self, num: int) -> SFTPAttributes:
        msg = self._status_or(num, CMD_ATTRS)
        if msg is None:
            raise paramiko.SFTPError("expected attributes in the SFTP answer")
        return SFTPAttributes._from_msg(msg)

    def handle(self, num: int) -> bytes:
        msg = self._status_or(num, CMD_HANDLE)
        if msg is None:
            raise paramiko.SFTPError("expected a file handle in the SFTP answer")
        return msg.get_binary()

    def data(self, num: int) -> bytes:
        """The bytes a read answers; b"" at the end of the file."""
        try:
            msg = self._status_or(num, CMD_DATA)
        except EOFError:
            return b""
        if msg is None:
            raise paramiko.SFTPError("expected data in the SFTP answer")
        return msg.get_string()

    def done(self, num: int) -> None:
        """A request that answers with a status: raises unless it is OK."""
        self._status_or(num, CMD_STATUS)

    def outcome(self, num: int, read) -> object:  # type: ignore[no-untyped-def]
        """``read(num)``, or the OSError it raised (an SFTP status for one file); a lost
        connection still raises."""
        try:
            return read(num)
        except OSError as exc:
            if isinstance(exc, (ConnectionError, TimeoutError)):
                raise
            return exc
