"""Where a client's credentials come from, and when to read them again.

A credential source has two methods: :meth:`current`, called before every request, which is
cheap (a ``stat``) and reads again only what changed or expired; and :meth:`refresh`,
called once after a 401 (or a failed certificate check), which reads everything again and
runs the exec plugin again. Both return a :class:`KubeTarget` whose token or client
certificate is filled in.

- :class:`TargetCredentials`: one target's own sources: a ``tokenFile`` read again when it
  changes, an exec plugin run again when its credential expired.
- :class:`KubeconfigCredentials`: kubeconfig files, read again when one of them changes (a
  rotation rewrites the CA and client certificate); the context is pinned.
- :class:`InClusterCredentials`: the pod's ServiceAccount token and CA, which the kubelet
  swaps.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Callable, Protocol

from reconciler._time import parse_time, utcnow
from reconciler.errors import ClusterUnreachableError, CredentialPluginError
from reconciler.shell.kube._kubeconfig import (ExecConfig, KubeTarget, check_token, describe_paths, read_files,
                                               read_token_file, refuse_moved, target_of)

Log = Callable[[str], None]


class Credentials(Protocol):
    name: str

    def current(self, log: Log) -> KubeTarget: ...

    def refresh(self, log: Log) -> KubeTarget: ...


# --- exec credential plugins --------------------------------------------------------------

# How long a plugin may take: a plugin that logs in through a browser would wait forever,
# and careconcile gives it no terminal.
EXEC_TIMEOUT_SECONDS = 60.0
# A credential this close to its expirationTimestamp is treated as expired: a request sent
# with it could arrive after it.
EXPIRY_MARGIN = dt.timedelta(seconds=10)
EXEC_OUTPUT_MAX_BYTES = 1024 * 1024


def _plugin_failed(config: ExecConfig, what: str) -> CredentialPluginError:
    hint = config.install_hint.strip() if config.install_hint else None
    return CredentialPluginError(f"{config.describe()}: {what}", hint=hint)


def exec_info(config: ExecConfig) -> str:
    """KUBERNETES_EXEC_INFO: never interactive (careconcile gives a plugin no terminal)."""
    spec: dict = {"interactive": False}
    if config.cluster is not None:
        spec["cluster"] = config.cluster
    return json.dumps({"apiVersion": config.api_version, "kind": "ExecCredential", "spec": spec})


# After a plugin's group is killed, how long its pipes may stay open before they are let go.
PIPES_CLOSE_SECONDS = 5.0


def run_plugin(config: ExecConfig, log: Log, *, timeout: float = EXEC_TIMEOUT_SECONDS
               ) -> tuple[str | None, bytes | None, bytes | None, dt.datetime | None]:
    """Run the plugin: (token, client certificate PEM, client key PEM, expiry). Its stderr
    goes to ``log`` line by line; its stdout is read as an ExecCredential and never quoted."""
    env = dict(os.environ)
    env.update(config.env)
    env["KUBERNETES_EXEC_INFO"] = exec_info(config)
    try:  # a session of its own: on a timeout its whole process group goes, children too
        process = subprocess.Popen([config.command, *config.args], env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        raise _plugin_failed(config, "the command was not found") from None
    except PermissionError:
        raise _plugin_failed(config, "the command cannot be run (permission denied)") from None
    except OSError as exc:
        raise _plugin_failed(config, f"cannot be run: {exc.strerror}") from None
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        try:
            _, stderr = process.communicate(timeout=PIPES_CLOSE_SECONDS)
        except subprocess.TimeoutExpired:  # a child in a session of its own still holds the pipes
            stderr = b""
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        _log_stderr(config, stderr, log)
        raise _plugin_failed(config, f"gave no credential within {timeout:g} s (careconcile gives it no "
                                     "terminal: a plugin that asks for a login waits forever)") from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    _log_stderr(config, stderr, log)
    if process.returncode != 0:
        lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        tail = f" (its stderr is in the log; last line: {lines[-1].strip()[:200]})" if lines else ""
        raise _plugin_failed(config, f"exited with status {process.returncode}{tail}")
    return _credential(config, stdout)


def _log_stderr(config: ExecConfig, stderr: bytes, log: Log) -> None:
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.strip():
            log(f"exec plugin {config.command}: {line.rstrip()}")


def _credential(config: ExecConfig, output: bytes) -> tuple[str | None, bytes | None, bytes | None,
                                                            dt.datetime | None]:
    if len(output) > EXEC_OUTPUT_MAX_BYTES:
        raise _plugin_failed(config, f"printed more than {EXEC_OUTPUT_MAX_BYTES:,} bytes")
    try:
        document = json.loads(output)
    except ValueError:
        raise _plugin_failed(config, "did not print an ExecCredential (its output is not JSON)") from None
    if not isinstance(document, dict) or document.get("kind") != "ExecCredential":
        raise _plugin_failed(config, "did not print an ExecCredential (kind ExecCredential missing)")
    if document.get("apiVersion") != config.api_version:
        raise _plugin_failed(config, f"printed an ExecCredential of apiVersion {str(document.get('apiVersion'))[:80]!r}; "
                                     f"the kubeconfig asks for {config.api_version}")
    status = document.get("status")
    if not isinstance(status, dict):
        raise _plugin_failed(config, "printed an ExecCredential without status")
    token = status.get("token") or None
    cert, key = status.get("clientCertificateData") or None, status.get("clientKeyData") or None
    if token is not None and not isinstance(token, str) or any(v is not None and not isinstance(v, str)
                                                               for v in (cert, key)):
        raise _plugin_failed(config, "printed an ExecCredential whose status fields are not text")
    if (cert is None) != (key is None):
        raise _plugin_failed(config, "printed clientCertificateData without clientKeyData, or the other way round")
    if token is None and cert is None:
        raise _plugin_failed(config, "printed an ExecCredential with neither a token nor a client certificate")
    if token is not None:
        check_token(token, config.describe())
    expiry = None
    if status.get("expirationTimestamp") is not None:
        expiry = parse_time(status["expirationTimestamp"]) if isinstance(status["expirationTimestamp"], str) else None
        if expiry is None:
            raise _plugin_failed(config, "printed an expirationTimestamp that is not an RFC 3339 time")
    return token, cert.encode() if cert else None, key.encode() if key else None, expiry


# --- a target's own sources: tokenFile, exec ----------------------------------------------

def _signature(path: Path | None) -> tuple[int, int, int, int] | None:
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_ino, stat.st_dev, stat.st_size


class TargetCredentials:
    """One target, with its token file read again when it changes and its exec plugin run
    when there is no credential yet or it expired (and again on :meth:`refresh`)."""

    def __init__(self, target: KubeTarget, *, now: Callable[[], dt.datetime] = utcnow) -> None:
        self.target = target
        self.name = target.name
        self._now = now
        self._token_signature = _signature(target.token_file)
        self._resolved: KubeTarget | None = None if target.exec else target
        self._expiry: dt.datetime | None = None
        self._lock = threading.Lock()

    def _run(self, log: Log) -> KubeTarget:
        token, cert, key, expiry = run_plugin(self.target.exec, log)  # type: ignore[arg-type]
        self._expiry = expiry
        # A plugin's certificate replaces the kubeconfig's; its token is sent with it, as kubectl does.
        # The result is static (no exec): a copy of it (a probe's target) does not run the plugin again.
        # Everything else (the CA, headers, tls-server-name, proxy-url) stays as the kubeconfig says.
        resolved = dataclasses.replace(
            self.target, cert_pem=cert or self.target.cert_pem, key_pem=key if cert else self.target.key_pem,
            token=token or self.target.token, token_file=None, exec=None)
        log(f"{self.target.exec.describe()}: gave a " + ("client certificate" if cert else "token")  # type: ignore[union-attr]
            + (f", valid until {expiry.isoformat()}" if expiry else ""))
        return resolved

    def current(self, log: Log) -> KubeTarget:
        with self._lock:
            if self.target.token_file is not None:
                signature = _signature(self.target.token_file)
                if signature != self._token_signature:
                    self._token_signature = signature
                    self._reread_token(log)
            if self.target.exec is not None and (
                    self._resolved is None
                    or self._expiry is not None and self._now() >= self._expiry - EXPIRY_MARGIN):
                self._resolved = self._run(log)
            assert self._resolved is not None
            return self._resolved

    def _reread_token(self, log: Log) -> None:
        token = read_token_file(self.target.token_file, self.target.name)  # type: ignore[arg-type]
        check_token(token, self.target.name)
        log(f"{self.target.name}: tokenFile {self.target.token_file} changed; using its new token")
        self.target = _with_token(self.target, token)
        if self.target.exec is None:
            self._resolved = self.target

    def refresh(self, log: Log) -> KubeTarget:
        with self._lock:
            if self.target.token_file is not None:
                self._token_signature = _signature(self.target.token_file)
                self._reread_token(log)
            if self.target.exec is not None:
                self._resolved = self._run(log)
            return self._resolved or self.target


def _with_token(target: KubeTarget, token: str) -> KubeTarget:
    return dataclasses.replace(target, token=token)


# --- kubeconfig files -----------------------------------------------------------------------

class KubeconfigCredentials:
    """Kubeconfig files (one, or several merged by kubectl's rules) that careconcile follows:
    when one changes (a rotation rewrites the CA and client certificate), the next request
    uses what they hold now. The context is pinned: a ``kubectl config use-context`` during a
    run must not move careconcile to another cluster."""

    def __init__(self, paths: list[Path], context: str | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.name = describe_paths(self.paths)
        self._signatures = self._stat()
        merged = read_files(self.paths)
        self._inner = TargetCredentials(target_of(merged, context))
        self.context = self._inner.target.context
        # The one file that holds the context, its cluster and its user (None: spread over several).
        home = merged.home_of(self.context) if self.context else None
        self.home = Path(home) if home is not None else None
        self._lock = threading.Lock()

    def _stat(self) -> list[tuple[int, int] | None]:
        signatures = []
        for path in self.paths:
            try:
                stat = path.stat()
            except OSError:
                signatures.append(None)
                continue
            signatures.append((stat.st_mtime_ns, stat.st_ino))
        return signatures

    def _reload(self) -> None:
        reloaded = target_of(read_files(self.paths), self.context)
        refuse_moved(self._inner.target, reloaded)
        if reloaded != self._inner.target:
            self._inner = TargetCredentials(reloaded)

    def current(self, log: Log) -> KubeTarget:
        with self._lock:
            signatures = self._stat()
            if signatures != self._signatures:
                self._signatures = signatures
                self._reload()
            inner = self._inner
        return inner.current(log)

    def refresh(self, log: Log) -> KubeTarget:
        with self._lock:
            self._signatures = self._stat()
            self._reload()
            inner = self._inner
        return inner.refresh(log)


# --- in a pod: the ServiceAccount's token -------------------------------------------------

SERVICEACCOUNT_DIR_ENV = "CARECONCILE_SERVICEACCOUNT_DIR"
# Where the kubelet mounts a pod's ServiceAccount token, CA and namespace; tests point
# CARECONCILE_SERVICEACCOUNT_DIR at a directory of their own.
SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def serviceaccount_dir() -> Path:
    return Path(os.environ.get(SERVICEACCOUNT_DIR_ENV) or SERVICEACCOUNT_DIR)


def _read_mounted(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ClusterUnreachableError(
            f"inCluster: cannot read the ServiceAccount {what} {path}: {exc.strerror}",
            hint="inCluster: true works in a pod with a ServiceAccount token mounted "
                 f"(automountServiceAccountToken); elsewhere use a kubeconfig, or set {SERVICEACCOUNT_DIR_ENV}") \
            from exc


def load_in_cluster(directory: Path | None = None) -> KubeTarget:
    """The API server and ServiceAccount credentials of the pod careconcile runs in: the
    server from KUBERNETES_SERVICE_HOST/PORT, the bearer token and the CA from the
    ServiceAccount directory (:func:`serviceaccount_dir`)."""
    directory = Path(directory) if directory is not None else serviceaccount_dir()
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ClusterUnreachableError(
            "inCluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set; careconcile is not "
            "running in a pod", hint="outside a cluster, give the cluster a kubeconfig instead of inCluster: true")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    token = _read_mounted(directory / "token", "token").decode("utf-8", "replace").strip()
    if not token:
        raise ClusterUnreachableError(f"inCluster: the ServiceAccount token {directory / 'token'} is empty")
    return KubeTarget(name=f"in-cluster ServiceAccount ({directory})", server=server,
                      ca_pem=_read_mounted(directory / "ca.crt", "CA"), token=token)


class InClusterCredentials:
    """The pod's ServiceAccount. The kubelet rotates a bound token (and replaces ``ca.crt``
    when the cluster's root CA changes) by swapping the mounted files: when either file
    changes, the next request uses what it holds now."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else serviceaccount_dir()
        self._signatures = self._stat()
        self.target = load_in_cluster(self.directory)
        self.name = self.target.name
        self._lock = threading.Lock()

    def _stat(self) -> dict[str, tuple[int, int, int, int] | None]:
        # stat follows the kubelet's ..data symlinks
        return {name: _signature(self.directory / name) for name in ("token", "ca.crt")}

    def current(self, log: Log) -> KubeTarget:
        with self._lock:
            signatures = self._stat()
            if signatures != self._signatures:
                self.target = load_in_cluster(self.directory)
                self._signatures = signatures
            return self.target

    def refresh(self, log: Log) -> KubeTarget:
        with self._lock:
            self._signatures = self._stat()
            self.target = load_in_cluster(self.directory)
            return self.target
