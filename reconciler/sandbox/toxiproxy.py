"""Shopify's toxiproxy on 127.0.0.1: TCP proxies that add latency in front of a sandbox's
servers (its sshd, its apiservers), for the latency benchmarks.

The server is built by ``hack/build-toxiproxy.sh`` (``make toxiproxy``) into the binaries
cache. :class:`Toxiproxy` starts one, its HTTP API on a reserved loopback port
(:mod:`reconciler.sandbox._ports`), and :meth:`Toxiproxy.delay` adds a proxy that listens
on another reserved loopback port, forwards to a loopback address and delays the data of
both directions (a ``latency`` toxic on the upstream and on the downstream stream): a round
trip through it costs twice the latency more. Everything listens and connects on
127.0.0.1 only. ``stop`` ends the server and frees its ports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from reconciler.errors import BinariesMissingError, SandboxError
from reconciler.sandbox import _ports
from reconciler.sandbox._ports import LOOPBACK

CACHE_ENV = "CARECONCILE_K8S_CACHE"
VERSION = "v2.5.0"  # the version hack/toxiproxy/go.mod requires
SERVER = "toxiproxy-server"
START_TIMEOUT = 10.0


def server_path() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "careconcile" / "k8s"
    return Path(root) / "toxiproxy" / VERSION / "bin" / SERVER


def require_server() -> Path:
    path = server_path()
    if not os.access(path, os.X_OK):
        raise BinariesMissingError(f"toxiproxy {VERSION} is missing: no executable {path}",
                                   hint="run `hack/build-toxiproxy.sh` (or `make toxiproxy`) to build it from Go modules")
    return path


class Toxiproxy:
    """A running toxiproxy server; a context manager that stops it."""

    def __init__(self) -> None:
        binary = require_server()
        self.directory = Path(tempfile.mkdtemp(prefix="careconcile-toxiproxy-"))
        [self.api_port] = _ports.reserve(1, self.directory)
        self._log = open(self.directory / "toxiproxy.log", "wb")
        self.process = subprocess.Popen([str(binary), "-host", LOOPBACK, "-port", str(self.api_port)],
                                        stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self._call("GET", "/version")
                break
            except (OSError, urllib.error.URLError) as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SandboxError(f"toxiproxy did not answer on {LOOPBACK}:{self.api_port}: {exc}") from exc
                time.sleep(0.05)

    def _call(self, method: str, path: str, body: dict | None = None) -> object:
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{self.api_port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an HTTP proxy
        with opener.open(request, timeout=5) as response:
            raw = response.read()
        return json.loads(raw) if raw.strip().startswith((b"{", b"[")) else raw.decode()

    def delay(self, name: str, upstream_port: int, latency_ms: int) -> int:
        """A proxy named ``name`` to 127.0.0.1:``upstream_port`` that delays the data of each
        direction by ``latency_ms``; returns the loopback port it listens on."""
        [port] = _ports.reserve(1, self.directory)
        self._call("POST", "/proxies", {"name": name, "listen": f"{LOOPBACK}:{port}",
                                        "upstream": f"{LOOPBACK}:{upstream_port}", "enabled": True})
        for stream in ("upstream", "downstream"):
            if latency_ms:
                self._call("POST", f"/proxies/{name}/toxics",
                           {"name": f"latency-{stream}", "type": "latency", "stream": stream, "toxicity": 1.0,
                            "attributes": {"latency": latency_ms, "jitter": 0}})
        return port

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        _ports.release(self.directory)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "Toxiproxy":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
