"""Reaching a node's files: the transport seam between careconcile and the nodes.

A transport reads, writes and removes files by their absolute path on the node. ``local``
maps them under a root directory (the sandbox's node directories, or "/" on the node
itself); SSH is a second transport with the same three methods.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Protocol

from reconciler._files import atomic_write
from reconciler.core.spec import NodeSpec
from reconciler.errors import NodeUnreachableError


class NodeFiles(Protocol):
    node: str

    def describe(self) -> str: ...

    def check(self) -> None:
        """Raise NodeUnreachableError when the node's files cannot be reached at all."""

    def read(self, path: str) -> bytes | None:
        """The file's bytes, None when it does not exist."""

    def mode(self, path: str) -> int | None: ...

    def write(self, path: str, content: bytes, mode: int) -> None:
        """Replace the file atomically: a reader sees the old bytes or the new, never half."""

    def remove(self, path: str) -> None: ...

    def remove_directory(self, path: str) -> None:
        """Remove a directory careconcile made, once it is empty; a non-empty one stays."""


class LocalNodeFiles:
    def __init__(self, node: str, root: str) -> None:
        self.node = node
        self.root = Path(root)

    def describe(self) -> str:
        return f"node {self.node} (local root {self.root})"

    def _where(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def check(self) -> None:
        if not self.root.is_dir():
            raise NodeUnreachableError(f"{self.describe()}: the root directory does not exist",
                                       hint="check spec.clusters[].nodes[].access.local.root")

    def read(self, path: str) -> bytes | None:
        try:
            return self._where(path).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NodeUnreachableError(f"{self.describe()}: cannot read {path}: {exc.strerror}") from exc

    def mode(self, path: str) -> int | None:
        try:
            return self._where(path).stat().st_mode & 0o777
        except FileNotFoundError:
            return None

    def write(self, path: str, content: bytes, mode: int) -> None:
        try:
            atomic_write(self._where(path), content, mode)
        except OSError as exc:
            raise NodeUnreachableError(f"{self.describe()}: cannot write {path}: {exc.strerror}") from exc

    def remove(self, path: str) -> None:
        try:
            os.unlink(self._where(path))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise NodeUnreachableError(f"{self.describe()}: cannot remove {path}: {exc.strerror}") from exc

    def remove_directory(self, path: str) -> None:
        try:
            os.rmdir(self._where(path))
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise NodeUnreachableError(f"{self.describe()}: cannot remove {path}: {exc.strerror}") from exc


def node_files(node: NodeSpec) -> NodeFiles:
    if node.access.local is not None:
        return LocalNodeFiles(node.name, node.access.local.root)
    raise NodeUnreachableError(f"node {node.name}: no supported access transport")
