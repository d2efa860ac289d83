"""Where careconcile keeps a rotation's state: a Secret in the cluster, or a workspace directory.

The new CA's key is stored here before any file uses it, so a CI runner that dies after
phase 1 loses nothing; the old CA's key is kept until the rotation is final, so that a
rollback can sign with it again. ``finalize`` drops both keys.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from reconciler._files import atomic_write
from reconciler._time import micro_time, parse_time
from reconciler.core import pki
from reconciler.core.observed import StoredState
from reconciler.core.pki import KeyPair
from reconciler.errors import APINotFoundError, PKIError
from reconciler.shell.kube import KubeClient

MANAGED_BY = {"app.kubernetes.io/managed-by": "careconcile"}


@dataclass(frozen=True)
class StoredKeys:
    target: KeyPair | None = None
    previous: KeyPair | None = None


@dataclass(frozen=True)
class Stored:
    state: StoredState
    keys: StoredKeys


class StateStore(Protocol):
    def describe(self) -> str: ...

    def load(self, authority: str) -> Stored: ...

    def save(self, authority: str, stored: Stored) -> None: ...


def _files_of(authority: str, stored: Stored) -> dict[str, bytes]:
    state = stored.state
    files = {f"{authority}.json": (json.dumps({
        "appliedRotation": state.applied_rotation, "rotation": state.rotation, "verifiedPhase": state.verified_phase,
        "rollingBack": state.rolling_back, "rolledBackRotation": state.rolled_back_rotation, "started": state.started,
        "retired": list(state.retired),
        "workloadsTrustedSince": micro_time(state.workloads_trusted_since) if state.workloads_trusted_since else None,
        "workloadsTrustedAlone": state.workloads_trusted_alone,
    }, sort_keys=True) + "\n").encode()}
    for role, pair in (("target", stored.keys.target), ("previous", stored.keys.previous)):
        if pair is not None:
            files[f"{authority}.{role}.crt"] = pair.cert_pem
            files[f"{authority}.{role}.key"] = pair.key_pem
    return files


def _stored_from(authority: str, files: dict[str, bytes], *, source: str) -> Stored:
    raw = files.get(f"{authority}.json")
    if raw is None:
        return Stored(StoredState(), StoredKeys())
    try:
        public = json.loads(raw)
    except ValueError as exc:
        raise PKIError(f"{source}: {authority}.json is not JSON ({exc})") from exc
    if not isinstance(public, dict):
        raise PKIError(f"{source}: {authority}.json holds {type(public).__name__}, not an object")

    def loaded(role: str) -> tuple[Any, Any]:
        cert, key = files.get(f"{authority}.{role}.crt"), files.get(f"{authority}.{role}.key")
        if cert is None:
            return None, None
        certificate = pki.load_certificates(cert, source=f"{source} {authority}.{role}.crt")[0]
        private = pki.load_private_key(key, source=f"{source} {authority}.{role}.key") if key else None
        return certificate, private

    (target, target_key), (previous, previous_key) = loaded("target"), loaded("previous")
    if (target is None) != (previous is None):
        raise PKIError(f"{source}: holds the {'target' if target is not None else 'previous'} CA of {authority} "
                       "without the other; a rotation's state needs both")
    state = StoredState(
        applied_rotation=int(public.get("appliedRotation") or 0),
        rotation=public.get("rotation"),
        target=target,
        previous=previous,
        has_target_key=target_key is not None,
        has_previous_key=previous_key is not None,
        verified_phase=int(public.get("verifiedPhase") or 0),
        rolling_back=bool(public.get("rollingBack")),
        rolled_back_rotation=public.get("rolledBackRotation"),
        started=public.get("started"),
        retired=tuple(str(value) for value in public.get("retired") or ()),
        workloads_trusted_since=parse_time(public.get("workloadsTrustedSince")),
        workloads_trusted_alone=alone if isinstance(alone := public.get("workloadsTrustedAlone"), str) and alone
        else None,
    )
    return Stored(state, StoredKeys(
        KeyPair(target, target_key) if target_key is not None else None,
        KeyPair(previous, previous_key) if previous_key is not None else None,
    ))


class SecretStateStore:
    """A Secret in the cluster itself (kube-system/careconcile-state by default)."""

    def __init__(self, client: KubeClient, *, namespace: str, name: str) -> None:
        self.client = client
        self.namespace, self.name = namespace, name

    def describe(self) -> str:
        return f"Secret {self.namespace}/{self.name}"

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{self.name}"

    def _read(self) -> dict[str, Any] | None:
        try:
            return self.client.get(self._path)
        except APINotFoundError:
            return None

    def load(self, authority: str) -> Stored:
        secret = self._read() or {}
        try:
            files = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
        except (TypeError, ValueError) as exc:
            raise PKIError(f"{self.describe()}: a data value is not base64 ({exc})") from exc
        return _stored_from(authority, files, source=self.describe())

    def save(self, authority: str, stored: Stored) -> None:
        secret = self._read()
        data = {key: value for key, value in ((secret or {}).get("data") or {}).items()
                if not key.startswith(f"{authority}.")}
        data.update({key: base64.b64encode(value).decode() for key, value in _files_of(authority, stored).items()})
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": MANAGED_BY}, "data": data}
        if secret is None:
            self.client.create(f"/api/v1/namespaces/{self.namespace}/secrets", body)
        else:
            # The resourceVersion makes a concurrent writer fail instead of losing an update.
            body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
            self.client.replace(self._path, body)


class WorkspaceStateStore:
    """A file in the local workspace, for clusters that cannot hold a Secret for careconcile.

    One JSON file (0600) holds what the Secret's data would, and is replaced atomically,
    so a run killed while saving leaves the old state or the new, never half of each.
    Losing this file mid-rotation loses the rotation's keys."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"

    def describe(self) -> str:
        return f"workspace state {self.path}"

    def _read(self) -> dict[str, bytes]:
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise PKIError(f"{self.describe()}: unreadable ({exc})") from exc
        if not isinstance(document, dict):
            raise PKIError(f"{self.describe()}: holds {type(document).__name__}, not an object")
        try:
            return {key: base64.b64decode(value) for key, value in document.items()}
        except (TypeError, ValueError) as exc:
            raise PKIError(f"{self.describe()}: a value is not base64 ({exc})") from exc

    def load(self, authority: str) -> Stored:
        return _stored_from(authority, self._read(), source=self.describe())

    def save(self, authority: str, stored: Stored) -> None:
        files = {key: value for key, value in self._read().items() if not key.startswith(f"{authority}.")}
        files.update(_files_of(authority, stored))
        document = {key: base64.b64encode(value).decode() for key, value in sorted(files.items())}
        atomic_write(self.path, (json.dumps(document, indent=2) + "\n").encode(), 0o600)


def with_state(stored: Stored, **changes: Any) -> Stored:
    return Stored(replace(stored.state, **changes), stored.keys)
