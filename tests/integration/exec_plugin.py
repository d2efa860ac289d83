"""A real exec credential plugin for the sandboxes: a script that prints an ExecCredential
(client.authentication.k8s.io/v1) holding the client certificate and key a kubeconfig
embeds (a node's admin.conf: when a rotation reissues it, the plugin hands out the new
one), and a kubeconfig whose user runs it instead of embedding credentials."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reconciler.core import kubeconfig

INSTALL_HINT = "the sandbox plugin is written by the test (tests/integration/exec_plugin.py)"

SCRIPT = '''#!{python}
import json, sys
from pathlib import Path
from reconciler.core import kubeconfig
source = {source!r}
with open({runs!r}, "a") as runs:
    runs.write("run\\n")
if {fail!r}:
    print("sandbox-plugin: no credential for you", file=sys.stderr)
    sys.exit(1)
document = kubeconfig.parse(Path(source).read_bytes(), source=source)
(user, cert, key), *_ = kubeconfig.embedded_credentials(document)
print(f"sandbox-plugin: handing out the client certificate of {{user}} in {{source}}", file=sys.stderr)
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {{"clientCertificateData": cert.decode(), "clientKeyData": key.decode()}}}}))
'''


def plugin_kubeconfig(kubeconfig_path: Path, credentials_from: Path, directory: Path, *, fail: bool = False,
                      name: str = "exec-kubeconfig", user_fields: dict | None = None) -> Path:
    """A copy of ``kubeconfig_path`` (its clusters, contexts and CA data) whose users run a
    plugin in ``directory`` that hands out the credentials ``credentials_from`` embeds (and
    hold ``user_fields`` besides, e.g. ``as``). Each run appends a line to
    ``directory / (name + '.runs')``."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / f"{name}-plugin"
    runs = directory / f"{name}.runs"
    script.write_text(SCRIPT.format(python=sys.executable, source=str(credentials_from), runs=str(runs), fail=fail))
    script.chmod(0o700)
    document = kubeconfig.parse(kubeconfig_path.read_bytes(), source=str(kubeconfig_path))
    exec_spec = {"apiVersion": "client.authentication.k8s.io/v1", "command": f"./{script.name}",
                 "interactiveMode": "Never", "installHint": INSTALL_HINT}
    document["users"] = [{"name": entry["name"], "user": {"exec": exec_spec, **(user_fields or {})}}
                         for entry in document["users"]]
    path = directory / name
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    return path


def runs(path: Path) -> int:
    """How often the plugin of kubeconfig ``path`` ran."""
    counted = path.parent / f"{path.name}.runs"
    return len(counted.read_text().splitlines()) if counted.exists() else 0
