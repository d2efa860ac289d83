"""Writing files so that a reader never sees half of one and keys are never world-readable."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: Path, content: bytes, mode: int = 0o644, *, owner: tuple[int, int] | None = None) -> None:
    """Write ``content`` to a temp file beside ``path``, fsync, then rename over it.

    The temp file gets ``mode`` (and ``owner``, when rewriting someone's file) before any
    byte is written, so a private key is never readable by others, not even for an instant.
    """
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
