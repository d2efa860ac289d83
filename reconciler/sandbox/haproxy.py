"""The cached HAProxy that balances the apiservers of an HA sandbox (reconciler/core/loadbalancer.py).

Debian's ``haproxy``, unpacked (not installed) into a cache by ``hack/install-haproxy.sh``.
The supervisor runs it as a static pod of the first control-plane node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import SandboxError
from reconciler.sandbox import _unpacked

CACHE_ENV = "CARECONCILE_HAPROXY_CACHE"
INSTALL_HINT = "run `hack/install-haproxy.sh` (`make test` and `make integration` run it too)"


def cache_dir() -> Path:
    """``$CARECONCILE_HAPROXY_CACHE``, by default ~/.cache/careconcile/haproxy."""
    return _unpacked.cache_dir(CACHE_ENV, "haproxy")


@dataclass(frozen=True)
class Install:
    bin_dir: Path  # holds `haproxy`
    library_path: str


def require_install() -> Install:
    """The cached haproxy, or an error that says how to get it."""
    root = cache_dir() / "root"
    binary = root / "usr/sbin/haproxy"
    if not os.access(binary, os.X_OK):
        raise SandboxError(f"no HAProxy cached in {cache_dir()} (missing {binary}); a sandbox with "
                           f"2 or more control planes puts it in front of the apiservers", hint=INSTALL_HINT)
    return Install(binary.parent, _unpacked.library_path(cache_dir()))
