"""Where sandboxes live on disk and what each one's directory holds."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import UsageError

ROOT_ENV = "CARECONCILE_SANDBOX_ROOT"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


def sandboxes_root() -> Path:
    """``$CARECONCILE_SANDBOX_ROOT``, else ``$XDG_STATE_HOME/careconcile/sandboxes``."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).absolute()
    state_home = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state_home) / "careconcile" / "sandboxes"


def check_name(name: str) -> str:
    """Sandbox names become node names, so they must be short DNS labels."""
    if not _NAME.match(name):
        raise UsageError(
            f"sandbox name {name!r} is not valid: use 1-32 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class SandboxPaths:
    directory: Path

    @classmethod
    def named(cls, name: str) -> "SandboxPaths":
        return cls(sandboxes_root() / check_name(name))

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def record(self) -> Path:
        return self.directory / "sandbox.json"

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def spec(self) -> Path:
        return self.directory / "spec.yaml"

    @property
    def nodes(self) -> Path:
        return self.directory / "nodes"

    def node_root(self, node: str) -> Path:
        return self.nodes / node

    @property
    def logs(self) -> Path:
        return self.directory / "logs"

    def component_log(self, node: str, component: str) -> Path:
        return self.logs / node / f"{component}.log"

    @property
    def run(self) -> Path:
        return self.directory / "run"

    @property
    def state(self) -> Path:
        return self.run / "state.json"

    @property
    def supervisor_pid(self) -> Path:
        return self.run / "supervisor.pid"

    @property
    def supervisor_log(self) -> Path:
        return self.logs / "supervisor.log"

    @property
    def ssh(self) -> Path:
        """With `up --ssh`: the sshd's config, host key, client key, pid file and log."""
        return self.directory / "ssh"


def node_path(root: Path, absolute: str) -> Path:
    """Where a node's absolute path (``/etc/kubernetes/pki/ca.crt``) is under its root dir."""
    return root / absolute.lstrip("/")
