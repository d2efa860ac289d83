"""A real HTTP proxy for the tests: Debian's tinyproxy from the cache
``hack/install-tinyproxy.sh`` fills (``make test`` runs it), on a free port of 127.0.0.1
(reserved as the sandboxes reserve theirs, reconciler/sandbox/_ports.py), with Basic
authentication and a log of every connection and CONNECT request. Tests skip when it is
missing, unless CI is set: then they fail."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from reconciler.sandbox import _ports, _unpacked

from .helpers import missing_prerequisite

CACHE_ENV = "CARECONCILE_TINYPROXY_CACHE"
LOOPBACK = "127.0.0.1"
USER, PASSWORD = "careconcile", "proxy-s3cret"  # a throwaway test credential
START_SECONDS = 10


@dataclass(frozen=True)
class Proxy:
    port: int
    log: Path

    @property
    def url(self) -> str:
        """The proxy-url a kubeconfig names it by, with its credentials."""
        return f"http://{USER}:{PASSWORD}@{LOOPBACK}:{self.port}"

    def connects(self) -> list[str]:
        """The targets (host:port) of the CONNECT requests it logged, in order."""
        return re.findall(r"Request \(file descriptor \d+\): CONNECT (\S+) HTTP/", self.log.read_text(errors="replace"))


def cache() -> Path:
    return _unpacked.cache_dir(CACHE_ENV, "tinyproxy")


def binary() -> Path:
    return cache() / "root/usr/bin/tinyproxy"


def require_tinyproxy() -> None:
    if not os.access(binary(), os.X_OK):
        missing_prerequisite(f"no tinyproxy cached at {binary()} (run `hack/install-tinyproxy.sh`)")


def _config(directory: Path, port: int) -> str:
    return "\n".join([
        f"Port {port}", f"Listen {LOOPBACK}", "Timeout 600", "MaxClients 100", f"Allow {LOOPBACK}",
        f'LogFile "{directory / "tinyproxy.log"}"', "LogLevel Connect", f'PidFile "{directory / "tinyproxy.pid"}"',
        f"BasicAuth {USER} {PASSWORD}", "",
    ])


@contextlib.contextmanager
def running_tinyproxy() -> Iterator[Proxy]:
    """Start tinyproxy in a fresh directory; stop it, release its port and remove the
    directory afterwards (its log is read before the block ends)."""
    require_tinyproxy()
    directory = Path(tempfile.mkdtemp(prefix="careconcile-tinyproxy-"))
    process = None
    try:
        port = _ports.reserve(1, directory)[0]
        (directory / "tinyproxy.conf").write_text(_config(directory, port))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "LD_LIBRARY_PATH": _unpacked.library_path(cache())}
        with open(directory / "stdout.log", "ab") as output:
            # -d: stay in the foreground, as this process's child
            process = subprocess.Popen([str(binary()), "-d", "-c", str(directory / "tinyproxy.conf")],
                                       stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        deadline = time.monotonic() + START_SECONDS
        while process.poll() is None:
            with socket.socket() as probe:
                if probe.connect_ex((LOOPBACK, port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"tinyproxy did not listen on {LOOPBACK}:{port} in {START_SECONDS}s")
            time.sleep(0.05)
        else:
            raise AssertionError(f"tinyproxy exited at start: {(directory / 'stdout.log').read_text()[-500:]}")
        yield Proxy(port, directory / "tinyproxy.log")
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _ports.release(directory)
        shutil.rmtree(directory, ignore_errors=True)
