"""Debian packages unpacked (not installed) into a cache by ``hack/unpack-debian.sh``: the
test sshd (``sshd.py``) and the HA sandboxes' HAProxy (``haproxy.py``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(env: str, name: str) -> Path:
    """``$env``, by default ~/.cache/careconcile/``name``."""
    return Path(os.environ.get(env) or Path.home() / ".cache" / "careconcile" / name)


def library_path(cache: Path) -> str:
    """The unpacked tree's library directories, as LD_LIBRARY_PATH: the script records them
    in ``lib-path``, relative to ``root``; none when it is missing."""
    try:
        relative = (cache / "lib-path").read_text().split()
    except OSError:
        relative = []
    return ":".join(str(cache / "root" / part) for part in relative)
