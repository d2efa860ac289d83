"""Writing files so that a reader never sees half of one and keys are never world-readable;
reading a file given on the command line or in a spec so that it can neither hang nor
exhaust memory."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any


# What marks content as holding a private key: a PEM or OpenSSH private key, or a
# kubeconfig's embedded client key.
_KEY_MARKERS = (b"PRIVATE KEY-----", b"client-key-data")


def holds_key(content: bytes) -> bool:
    return any(marker in content for marker in _KEY_MARKERS)


def file_mode(content: bytes, mode: int) -> int:
    """The mode to write ``content`` with: ``mode``, but never readable or writable by group or
    others when the content holds a private key, whatever mode the file had before (a 0644
    kubeconfig that gets a client key becomes 0600)."""
    return mode & ~0o077 if holds_key(content) else mode


def atomic_write(path: Path, content: bytes, mode: int = 0o644, *, owner: tuple[int, int] | None = None) -> None:
    """Write ``content`` to a temp file beside ``path``, fsync, then rename over it.

    The temp file gets ``mode`` (and ``owner``, when rewriting someone's file) before any
    byte is written, so a private key is never readable by others, not even for an instant;
    content with a key gets at most 0600 (:func:`file_mode`).
    """
    mode = file_mode(content, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        if owner is not None and owner != (os.getuid(), os.getgid()):
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, document: Any, mode: int = 0o644) -> None:
    atomic_write(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode(), mode)


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


class FileRefused(OSError):
    """A file that is not read: not a regular file, or larger than its limit. ``strerror``
    says why, as callers print an OSError's."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(0, reason, str(path))


def read_limited(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    Opened with O_NONBLOCK, so a FIFO opens without waiting for a writer, and checked with
    fstat before any byte is read: a FIFO, a device (``/dev/zero`` never ends) or a directory
    is refused, and so is a file over the limit, without reading it. Raises OSError
    (:class:`FileRefused` for those)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(path, f"not a regular file but {_KINDS.get(stat.S_IFMT(info.st_mode), 'a special file')}")
        if info.st_size > max_bytes:
            raise FileRefused(path, f"{info.st_size:,} bytes; at most {max_bytes:,} are read")
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while size <= max_bytes:  # one more than the limit: a file that grew since fstat
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise FileRefused(path, f"more than {max_bytes:,} bytes; at most {max_bytes:,} are read")
        return b"".join(chunks)
    finally:
        os.close(fd)
