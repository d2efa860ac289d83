"""Kubeconfigs read as kubectl reads them: which files, how they merge, and the server and
credentials of one context.

Which files (:func:`kubeconfig_paths`): ``--kubeconfig`` (or a spec's ``kubeconfig:``) alone
when given; else the files ``KUBECONFIG`` lists (``:``-separated, empty entries and files
that do not exist skipped, a file listed twice read once); else ``~/.kube/config``.

How they merge (:func:`merge`): per named cluster, user and context, and for
``current-context``, the first file that sets it wins; later files never change it. A
relative path in a file (a certificate, a key, a tokenFile, an exec command with a ``/``)
is relative to that file's directory.

Every field of the context, cluster and user careconcile uses is known to it or refused by
name, with the file and the entry: nothing that changes how careconcile connects, or whom
it acts as, is dropped silently. Messages never quote a value: values are keys and tokens.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote, urlsplit

from reconciler._files import read_limited
from reconciler.core import kubeconfig, yamldoc
from reconciler.errors import ClusterUnreachableError, PKIError
from reconciler.shell import proxy

# A certificate, key or token file a kubeconfig names: a PEM bundle of many CAs fits.
REFERENCED_FILE_MAX_BYTES = 1024 * 1024

EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
INTERACTIVE_MODES = ("Never", "IfAvailable", "Always")

# The fields of each entry careconcile reads; ``extensions`` is data for other tools.
_CLUSTER_FIELDS = {"server", "certificate-authority", "certificate-authority-data", "insecure-skip-tls-verify",
                   "tls-server-name", "proxy-url", "disable-compression", "extensions"}
_USER_FIELDS = {"client-certificate", "client-certificate-data", "client-key", "client-key-data", "token",
                "tokenFile", "as", "as-uid", "as-groups", "as-user-extra", "exec", "extensions"}
_CONTEXT_FIELDS = {"cluster", "user", "namespace", "extensions"}
_EXEC_FIELDS = {"command", "args", "env", "apiVersion", "installHint", "provideClusterInfo", "interactiveMode"}
# Fields kubectl knows and careconcile does not use, with why.
_REFUSED = {
    "auth-provider": "auth-provider plugins were removed from kubectl in 1.26; use an exec plugin (kubelogin, "
                     "gke-gcloud-auth-plugin and the like)",
    "username": "basic authentication: API servers no longer accept it (since Kubernetes 1.19)",
    "password": "basic authentication: API servers no longer accept it (since Kubernetes 1.19)",
    "impersonate": "use as",
}


@dataclass(frozen=True)
class ExecConfig:
    """A user's ``exec`` credential plugin, checked, with its command resolved."""

    command: str
    args: tuple[str, ...] = field(repr=False)  # may hold a secret (kubelogin's --oidc-client-secret)
    env: tuple[tuple[str, str], ...] = field(repr=False)
    api_version: str
    install_hint: str | None
    interactive_mode: str
    # What KUBERNETES_EXEC_INFO's spec.cluster holds, when provideClusterInfo is true.
    cluster: dict[str, Any] | None = field(default=None, repr=False)
    where: str = ""

    def describe(self) -> str:
        return f"the exec credential plugin {self.command!r} of {self.where}"


@dataclass(frozen=True)
class KubeTarget:
    """One API server and the credentials for it. ``name`` is for messages, e.g.
    ``kubeconfig /path context admin@c``. Key material and token are left out of repr.

    ``token_file`` and ``exec`` are credential sources that change while careconcile runs:
    the client reads the file again when it changes, and runs the plugin when its credential
    expired (:mod:`._credentials`)."""

    name: str
    server: str
    context: str | None = None  # the kubeconfig context it came from
    ca_pem: bytes | None = field(default=None, repr=False)
    cert_pem: bytes | None = field(default=None, repr=False)
    key_pem: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    # Sent with every request: a front proxy's X-Remote-User, impersonation (Impersonate-*).
    headers: tuple[tuple[str, str], ...] = ()
    token_file: Path | None = None
    exec: ExecConfig | None = None
    # The cluster's tls-server-name and proxy-url (reconciler.shell.proxy); a proxy URL may hold a password.
    tls_server_name: str | None = None
    proxy_url: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        return f"{self.name} ({self.server})"


def refuse_moved(before: KubeTarget, after: KubeTarget) -> None:
    """Raise when re-read credentials lead elsewhere: another server, another name checked in
    its certificate, or another proxy. careconcile never follows a kubeconfig there mid-run
    (a rewritten file or Secret could send the token through a proxy to another host)."""
    for what, old, new in (("server", before.server, after.server),
                           ("tls-server-name", before.tls_server_name, after.tls_server_name),
                           ("proxy-url", before.proxy_url, after.proxy_url)):
        if old != new:
            shown = (old, new) if what != "proxy-url" else ("one proxy", "another")  # a URL may hold a password
            raise ClusterUnreachableError(
                f"{after.name}: the {what} changed from {shown[0]} to {shown[1]} while careconcile was using it; "
                "not following it to another cluster")


# --- which files, and how they merge ------------------------------------------------------

KUBECONFIG_ENV = "KUBECONFIG"


def kubeconfig_paths(explicit: Path | None = None, environ: Mapping[str, str] | None = None) -> list[Path]:
    """The kubeconfig files to read, as kubectl picks them: ``explicit`` alone; else the
    existing files of ``KUBECONFIG``; else ``~/.kube/config``. Raises when there is none."""
    if explicit is not None:
        return [Path(explicit)]
    environ = os.environ if environ is None else environ
    listed = environ.get(KUBECONFIG_ENV)
    if listed:
        paths: list[Path] = []
        for entry in listed.split(os.pathsep):
            if entry and Path(entry).expanduser() not in paths:
                paths.append(Path(entry).expanduser())
        existing = [path for path in paths if path.exists()]
        if not existing:
            raise ClusterUnreachableError(f"{KUBECONFIG_ENV} names no kubeconfig file that exists "
                                          f"({', '.join(map(str, paths)) or 'none'})",
                                          hint="give --kubeconfig, or set KUBECONFIG to existing files")
        return existing
    home = Path(environ.get("HOME") or Path.home()) / ".kube" / "config"
    if not home.exists():
        raise ClusterUnreachableError(f"no kubeconfig: --kubeconfig not given, {KUBECONFIG_ENV} not set and "
                                      f"{home} does not exist", hint="give --kubeconfig")
    return [home]


def describe_paths(paths: list[Path]) -> str:
    return f"kubeconfig {paths[0]}" if len(paths) == 1 else f"kubeconfig {os.pathsep.join(map(str, paths))}"


@dataclass(frozen=True)
class Merged:
    """Kubeconfig files merged by kubectl's rules. Each entry remembers the file it came
    from (``base``: its directory, None for a kubeconfig that is not a file). Only read:
    careconcile rewrites no kubeconfig of a merged list."""

    source: str
    entries: dict[str, dict[str, tuple[dict[str, Any], str, Path | None]]]  # section -> name -> (body, file, base)
    current_context: str | None
    files: tuple[str, ...] = ()

    def where(self, file: str) -> str:
        """`` (in FILE)`` when several files merged, for messages about one entry."""
        return f" (in {file})" if len(self.files) > 1 else ""

    def home_of(self, context: str) -> str | None:
        """The one file that holds ``context`` and its cluster and user entries, or None when
        they are spread over several files: a spec that names one kubeconfig file can name
        that one alone."""
        found = self.entries["contexts"].get(context)
        if found is None:
            return None
        details, home, _ = found
        for section, name in (("clusters", details.get("cluster")), ("users", details.get("user"))):
            if name and (self.entries[section].get(name) or (None, None, None))[1] != home:
                return None
        return home


_SECTIONS = {"clusters": "cluster", "users": "user", "contexts": "context"}


def merge(documents: list[tuple[dict[str, Any], str, Path | None]], source: str) -> Merged:
    """``documents`` (parsed, with their file name and base directory) merged: the first
    file to set an entry or current-context wins."""
    entries: dict[str, dict[str, tuple[dict[str, Any], str, Path | None]]] = {s: {} for s in _SECTIONS}
    current = None
    for document, name, base in documents:
        if current is None and document.get("current-context"):
            current = document["current-context"]
        for section, inner in _SECTIONS.items():
            for entry in document.get(section) or []:
                entries[section].setdefault(entry["name"], (entry.get(inner) or {}, name, base))
    return Merged(source, entries, current, tuple(name for _, name, _ in documents))


def read_files(paths: list[Path]) -> Merged:
    """The kubeconfig files ``paths``, read within :data:`yamldoc.KUBECONFIG`'s limits (regular
    files only) and merged."""
    source = describe_paths(paths)
    documents = []
    for path in paths:
        try:
            raw = read_limited(path, yamldoc.KUBECONFIG.max_bytes)
        except OSError as exc:
            raise ClusterUnreachableError(f"kubeconfig {path}: cannot read it: {exc.strerror}") from exc
        documents.append((kubeconfig.parse(raw, source=f"kubeconfig {path}"), str(path), path.resolve().parent))
    return merge(documents, source)


# --- one context's server and credentials -------------------------------------------------

def _refuse_unknown(body: dict[str, Any], known: set[str], where: str) -> None:
    for name in body:
        if name in known:
            continue
        why = _REFUSED.get(name, "careconcile does not know this field")
        raise PKIError(f"{where}: {name} is not supported ({why}); careconcile refuses it rather than ignore it")


def _file(base: Path | None, value: str, key: str, where: str) -> Path:
    if base is None:
        raise PKIError(f"{where}: {key} names a file; a kubeconfig that is not a file must embed it")
    return base / Path(value).expanduser()


def _data_or_file(section: dict[str, Any], key: str, base: Path | None, where: str) -> bytes | None:
    """``KEY-data`` (base64, line-wrapped or not) or ``KEY`` (a path, relative to the
    kubeconfig's directory, as kubectl resolves it)."""
    data = section.get(f"{key}-data")
    if data:
        return kubeconfig.decode_data(data, f"{where}: {key}-data")
    path = section.get(key)
    if path:
        resolved = _file(base, path, key, where)
        try:
            return read_limited(resolved, REFERENCED_FILE_MAX_BYTES)
        except OSError as exc:
            raise PKIError(f"{where}: cannot read {key} {resolved}: {exc.strerror}") from exc
    return None


def check_server(server: str, where: str) -> None:
    """An https:// URL with a host and a valid port, and no user name or password in it:
    everything the transport needs to be able to use it, checked where the kubeconfig is
    read, so that the error names the kubeconfig. The URL is not quoted: it may hold a
    password."""
    try:
        url = urlsplit(server)
        port = url.port
    except ValueError:  # a bad IPv6 literal, a port out of range or not a number (its message quotes it)
        raise ClusterUnreachableError(f"{where}: the server is not a URL careconcile can use (a malformed host "
                                      "or port)") from None
    if url.username is not None or url.password is not None:
        raise ClusterUnreachableError(f"{where}: the server URL holds a user name or password; careconcile does "
                                      "not use them (authenticate with a client certificate or a token)")
    if url.scheme != "https" or not url.hostname or port == 0:
        raise ClusterUnreachableError(f"{where}: the server must be an https:// URL with a host; careconcile "
                                      "talks to https:// servers only")
    if any(ord(char) < 0x21 or ord(char) == 0x7f for char in server):
        raise ClusterUnreachableError(f"{where}: the server URL holds a space or a control character")


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise PKIError(f"{where}: {what} must be text")
    if any(ord(char) < 0x20 or ord(char) == 0x7f for char in value):  # it goes into a header
        raise PKIError(f"{where}: {what} holds a control character")
    return value


def _impersonation(user: dict[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    """The Impersonate-* headers of ``as``, ``as-uid``, ``as-groups`` and ``as-user-extra``,
    as kubectl sends them. Without ``as``, the others are refused, as kubectl refuses them."""
    headers: list[tuple[str, str]] = []
    if user.get("as"):
        headers.append(("Impersonate-User", _text(user["as"], "as", where)))
    elif any(user.get(key) for key in ("as-uid", "as-groups", "as-user-extra")):
        raise PKIError(f"{where}: as-uid, as-groups and as-user-extra need as (the user to impersonate), as in kubectl")
    if user.get("as-uid"):
        headers.append(("Impersonate-Uid", _text(user["as-uid"], "as-uid", where)))
    groups = user.get("as-groups") or []
    if not isinstance(groups, list):
        raise PKIError(f"{where}: as-groups must be a list of group names")
    headers += [("Impersonate-Group", _text(group, "as-groups", where)) for group in groups]
    extra = user.get("as-user-extra") or {}
    if not isinstance(extra, dict):
        raise PKIError(f"{where}: as-user-extra must be a mapping of keys to lists of values")
    for key, values in extra.items():
        if not isinstance(values, list):
            raise PKIError(f"{where}: as-user-extra {key!r} must be a list of values")
        headers += [(f"Impersonate-Extra-{quote(_text(key, 'as-user-extra', where), safe='')}",
                     _text(value, "as-user-extra", where)) for value in values]
    return tuple(headers)


def _exec_config(spec: Any, cluster: dict[str, Any], server: str, ca_pem: bytes, base: Path | None,
                 where: str) -> ExecConfig:
    where = f"{where}: exec"
    if base is None:  # a Secret's kubeconfig must not run a command on this machine
        raise PKIError(f"{where}: a kubeconfig that is not a file (one held in a Secret) may not run an exec plugin")
    if not isinstance(spec, dict):
        raise PKIError(f"{where} must be a mapping")
    _refuse_unknown(spec, _EXEC_FIELDS, where)
    command = spec.get("command")
    if not isinstance(command, str) or not command:
        raise PKIError(f"{where}: command is missing")
    api_version = spec.get("apiVersion")
    if api_version not in EXEC_API_VERSIONS:
        raise PKIError(f"{where}: apiVersion must be one of {', '.join(EXEC_API_VERSIONS)} "
                       "(v1alpha1 is no longer supported, by kubectl either)")
    mode = spec.get("interactiveMode")
    if mode is None:
        if api_version.endswith("/v1"):
            raise PKIError(f"{where}: interactiveMode must be set for {api_version} (Never or IfAvailable)")
        mode = "IfAvailable"
    if mode not in INTERACTIVE_MODES:
        raise PKIError(f"{where}: interactiveMode must be one of {', '.join(INTERACTIVE_MODES)}")
    if mode == "Always":
        raise PKIError(f"{where}: interactiveMode Always needs a terminal, and careconcile never gives a plugin "
                       "one", hint="set interactiveMode: Never (or IfAvailable) and let the plugin log in "
                                   "without asking, e.g. from a cached login or a CI identity")
    args = spec.get("args") or []
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise PKIError(f"{where}: args must be a list of text")
    env: list[tuple[str, str]] = []
    for index, entry in enumerate(spec.get("env") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"] \
                or not isinstance(entry.get("value"), str) or set(entry) - {"name", "value"}:
            raise PKIError(f"{where}: env[{index}] must be a mapping with name and value, both text")
        env.append((entry["name"], entry["value"]))
    hint = spec.get("installHint")
    if hint is not None and not isinstance(hint, str):
        raise PKIError(f"{where}: installHint must be text")
    if "/" in command:  # as kubectl: a path with a separator is relative to the kubeconfig's directory
        command = str(base / Path(command).expanduser())
    info = None
    if spec.get("provideClusterInfo"):
        info = {"server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}
        for name in ("tls-server-name", "proxy-url", "insecure-skip-tls-verify", "disable-compression"):
            if cluster.get(name) is not None:
                info[name] = cluster[name]
        extensions = cluster.get("extensions") or []
        if not isinstance(extensions, list):
            raise PKIError(f"{where}: provideClusterInfo reads the cluster's extensions, which must be a list")
        extension = next((e.get("extension") for e in extensions
                          if isinstance(e, dict) and e.get("name") == "client.authentication.k8s.io/exec"), None)
        if extension is not None:
            info["config"] = extension
    return ExecConfig(command=command, args=tuple(args), env=tuple(env), api_version=api_version,
                      install_hint=hint, interactive_mode=mode, cluster=info, where=where.removesuffix(": exec"))


def target_of(merged: Merged, context: str | None = None) -> KubeTarget:
    """The server and credentials of ``context`` (default: current-context)."""
    source = merged.source
    context_name = context or merged.current_context
    if not context_name:
        raise ClusterUnreachableError(f"{source}: no context given and no current-context set")
    where = f"{source} context {context_name}"
    found = merged.entries["contexts"].get(context_name)
    if found is None:
        known = ", ".join(merged.entries["contexts"]) or "none"
        raise ClusterUnreachableError(f"{where}: no such context (contexts: {known})")
    details, context_file, _ = found
    _refuse_unknown(details, _CONTEXT_FIELDS, f"{where}{merged.where(context_file)}")
    cluster_found = merged.entries["clusters"].get(details.get("cluster"))
    if cluster_found is None:
        raise ClusterUnreachableError(f"{where}: no cluster named {details.get('cluster')!r}")
    cluster, cluster_file, cluster_base = cluster_found
    cluster_where = f"{where}: cluster {details['cluster']!r}{merged.where(cluster_file)}"
    _refuse_unknown(cluster, _CLUSTER_FIELDS, cluster_where)
    server = cluster.get("server")
    if not server:
        raise ClusterUnreachableError(f"{cluster_where} has no server")
    check_server(server, cluster_where)
    tls_server_name = _text(cluster["tls-server-name"], "tls-server-name", cluster_where) \
        if cluster.get("tls-server-name") else None
    if tls_server_name is not None and not _SERVER_NAME.fullmatch(tls_server_name):
        raise ClusterUnreachableError(f"{cluster_where}: tls-server-name is not a host name")
    proxy_url = _text(cluster["proxy-url"], "proxy-url", cluster_where) if cluster.get("proxy-url") else None
    proxy.choose(server, proxy_url, cluster_where)  # refuses what is unusable
    ca_pem = _data_or_file(cluster, "certificate-authority", cluster_base, cluster_where)
    insecure = cluster.get("insecure-skip-tls-verify")
    if insecure not in (None, False):
        if ca_pem is not None:  # kubectl refuses the pair too
            raise PKIError(f"{cluster_where}: insecure-skip-tls-verify: true with a certificate-authority is "
                           "contradictory; kubectl refuses it too (specify a root certificate authority or "
                           "insecure, not both)")
        raise PKIError(f"{cluster_where}: insecure-skip-tls-verify is set; careconcile does not talk to a cluster "
                       "it cannot verify: give certificate-authority(-data)")
    if ca_pem is None:
        raise PKIError(f"{cluster_where} has no certificate-authority(-data); "
                       f"careconcile does not talk to a cluster it cannot verify")
    user: dict[str, Any] = {}
    user_base: Path | None = cluster_base
    user_where = where
    if details.get("user"):
        user_found = merged.entries["users"].get(details["user"])
        if user_found is None:
            raise ClusterUnreachableError(f"{where}: no user named {details['user']!r}")
        user, user_file, user_base = user_found
        user_where = f"{where}: user {details['user']!r}{merged.where(user_file)}"
        _refuse_unknown(user, _USER_FIELDS, user_where)
    token = user.get("token") or None
    token_file = None
    if not token and user.get("tokenFile"):
        token_file = _file(user_base, user["tokenFile"], "tokenFile", user_where)
        token = read_token_file(token_file, user_where)
    if token is not None:
        check_token(token, user_where)
    exec_config = None
    if user.get("exec") is not None:
        exec_config = _exec_config(user["exec"], cluster, server, ca_pem, user_base, user_where)
    return KubeTarget(
        name=where,
        server=server,
        context=context_name,
        ca_pem=ca_pem,
        cert_pem=_data_or_file(user, "client-certificate", user_base, user_where),
        key_pem=_data_or_file(user, "client-key", user_base, user_where),
        token=token,
        headers=_impersonation(user, user_where),
        token_file=token_file,
        exec=exec_config,
        tls_server_name=tls_server_name,
        proxy_url=proxy_url,
    )


def read_token_file(path: Path, where: str) -> str:
    try:
        return read_limited(path, REFERENCED_FILE_MAX_BYTES).decode().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PKIError(f"{where}: cannot read tokenFile {path}: {reason}") from exc


_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
# A kubeconfig's tls-server-name: a DNS name or an IP address, as TLS's SNI and certificate check take it.
_SERVER_NAME = re.compile(r"[A-Za-z0-9.:_-]+")


def check_token(token: str, where: str) -> None:
    """RFC 6750's b64token: what a bearer token may hold. A token with a line break would add
    a header to every request (http.client refuses it, quoting the token in its error)."""
    if not _TOKEN.fullmatch(token):  # it goes into a header: never quoted, never sent
        raise PKIError(f"{where}: the token holds characters a bearer token cannot have (only letters, "
                       "digits and -._~+/=); check the kubeconfig")


def load_kubeconfig(path: Path | list[Path], context: str | None = None) -> KubeTarget:
    """The server and credentials of ``context`` (default: current-context) in ``path``, or in
    the files ``path`` lists merged by kubectl's rules."""
    paths = [Path(p) for p in path] if isinstance(path, list) else [Path(path)]
    return target_of(read_files(paths), context)


def kubeconfig_target(text: str | bytes, *, source: str, context: str | None = None,
                      base: Path | None = None) -> KubeTarget:
    """The server and credentials of ``context`` (default: current-context) in a kubeconfig's
    text; ``source`` names it in errors. ``base`` is the directory file references are relative
    to; None (a kubeconfig held in a Secret) refuses them, and exec plugins."""
    document = kubeconfig.parse(text, source=source)
    return target_of(merge([(document, source, base)], source), context)
