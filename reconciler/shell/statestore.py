"""Where careconcile keeps a rotation's state: two Secrets in the cluster, or two files in a
workspace directory.

The state is split in two objects, so that a reader of the rotation's progress (drift and
its RBAC, a plan) never needs the right to read a CA key:

- the **public record** (``careconcile-state``): per authority ``<authority>.json`` (the
  rotation counters, the phase, timestamps, retired fingerprints) and, during a rotation,
  the two CA certificates ``<authority>.target.crt`` and ``<authority>.previous.crt``;
- the **keys** (``careconcile-keys``): during a rotation, the two CAs' private keys, each
  named by its certificate's fingerprint (``<authority>.<sha256 hex>.key``), so that
  swapping the two CAs (a rollback) changes only the public record.

The new CA's key is stored before any file uses it, so a CI runner that dies after phase 1
loses nothing; the old CA's key is kept until the rotation is final, so that a rollback can
sign with it again. ``finalize`` drops both keys.

A save writes the keys it adds before the public record that names them, and drops keys
only after the public record stopped naming them: a run killed between two writes leaves a
state that loads as the old one or the new one. A store written before the split (its
public record holding ``<authority>.target.key`` and ``.previous.key``) is read as it is,
and split on its next save.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509

from reconciler._files import atomic_write
from reconciler._time import micro_time, parse_time
from reconciler.core import pki
from reconciler.core.observed import StoredState
from reconciler.core.pki import KeyPair
from reconciler.errors import APINotFoundError, PKIError
from reconciler.shell.kube import KubeClient

MANAGED_BY = {"app.kubernetes.io/managed-by": "careconcile"}
ROLES = ("target", "previous")

Files = dict[str, bytes]


@dataclass(frozen=True)
class StoredKeys:
    target: KeyPair | None = None
    previous: KeyPair | None = None


@dataclass(frozen=True)
class Stored:
    state: StoredState
    keys: StoredKeys


class StateStore(Protocol):
    def describe(self) -> str:
        """The public record, as messages name it."""
        ...

    def describe_keys(self) -> str:
        """The keys object, as messages name it."""
        ...

    def load_state(self, authority: str) -> StoredState:
        """The public record alone: what drift and plan read, with no right to a key."""
        ...

    def load(self, authority: str) -> Stored:
        """The public record and the CA keys: what apply signs with."""
        ...

    def save(self, authority: str, stored: Stored) -> None: ...


# --- the two objects' contents ----------------------------------------------------------------

def key_name(authority: str, cert: x509.Certificate) -> str:
    """The keys object's entry of a CA's key: the authority and the certificate's fingerprint."""
    return f"{authority}.{pki.fingerprint(cert).removeprefix('sha256:')}.key"


def _legacy_key(authority: str, role: str) -> str:
    """Where a store written before the split kept a key: in the public record, by role."""
    return f"{authority}.{role}.key"


def public_files(authority: str, stored: Stored) -> Files:
    """The authority's entries of the public record: never a private key."""
    state = stored.state
    keys = {"target": stored.keys.target, "previous": stored.keys.previous}
    files = {f"{authority}.json": (json.dumps({
        "appliedRotation": state.applied_rotation, "rotation": state.rotation, "verifiedPhase": state.verified_phase,
        "rollingBack": state.rolling_back, "rolledBackRotation": state.rolled_back_rotation, "started": state.started,
        "retired": list(state.retired),
        "workloadsTrustedSince": micro_time(state.workloads_trusted_since) if state.workloads_trusted_since else None,
        "workloadsTrustedAlone": state.workloads_trusted_alone,
        # Which of the two CAs' keys the keys object holds, for a reader that may not read it.
        "keysStored": [role for role in ROLES if keys[role] is not None],
    }, sort_keys=True) + "\n").encode()}
    for role, cert in (("target", state.target), ("previous", state.previous)):
        if cert is not None:
            files[f"{authority}.{role}.crt"] = pki.cert_pem(cert)
    return files


def key_files(authority: str, stored: Stored) -> Files:
    """The authority's entries of the keys object."""
    return {key_name(authority, pair.cert): pair.key_pem
            for pair in (stored.keys.target, stored.keys.previous) if pair is not None}


def state_from(authority: str, public: Files, *, source: str) -> StoredState:
    """The authority's public record. Whether each key is stored is what the record says
    (or, written before the split, whether the record itself holds it)."""
    raw = public.get(f"{authority}.json")
    if raw is None:
        return StoredState()
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise PKIError(f"{source}: {authority}.json is not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise PKIError(f"{source}: {authority}.json holds {type(document).__name__}, not an object")

    def cert(role: str) -> x509.Certificate | None:
        pem = public.get(f"{authority}.{role}.crt")
        return pki.load_certificates(pem, source=f"{source} {authority}.{role}.crt")[0] if pem is not None else None

    target, previous = cert("target"), cert("previous")
    if (target is None) != (previous is None):
        raise PKIError(f"{source}: holds the {'target' if target is not None else 'previous'} CA of {authority} "
                       "without the other; a rotation's state needs both")
    recorded = document.get("keysStored")
    stored_roles = {role for role in ROLES if (role in recorded if isinstance(recorded, list)
                                               else _legacy_key(authority, role) in public)}

    def whole(field: str, *, optional: bool = False) -> int | None:
        """A counter of the record: a whole number (0 or None when absent), else an error
        naming the field, never quoting it (the record comes from the cluster)."""
        value = document.get(field)
        if value is None:
            return None if optional else 0
        if type(value) is not int or value < 0:
            raise PKIError(f"{source}: {authority}.json: {field} is not a whole number")
        return value

    retired = document.get("retired") or []
    if not isinstance(retired, list) or not all(isinstance(value, str) for value in retired):
        raise PKIError(f"{source}: {authority}.json: retired is not a list of fingerprints")
    started = document.get("started")
    if started is not None and not isinstance(started, str):
        raise PKIError(f"{source}: {authority}.json: started is not a time")
    return StoredState(
        applied_rotation=whole("appliedRotation"),
        rotation=whole("rotation", optional=True),
        target=target,
        previous=previous,
        has_target_key=target is not None and "target" in stored_roles,
        has_previous_key=previous is not None and "previous" in stored_roles,
        verified_phase=whole("verifiedPhase"),
        rolling_back=document.get("rollingBack") is True,
        rolled_back_rotation=whole("rolledBackRotation", optional=True),
        started=started,
        retired=tuple(retired),
        workloads_trusted_since=parse_time(document.get("workloadsTrustedSince")),
        workloads_trusted_alone=alone if isinstance(alone := document.get("workloadsTrustedAlone"), str) and alone
        else None,
    )


def stored_from(authority: str, public: Files, keys: Files, *, source: str, keys_source: str) -> Stored:
    """The authority's public record with the keys of its two CAs: from the keys object, or
    from the public record of a store written before the split."""
    state = state_from(authority, public, source=source)

    def pair(role: str, cert: x509.Certificate | None) -> KeyPair | None:
        if cert is None:
            return None
        name, where = key_name(authority, cert), keys_source
        if name not in keys:  # a store written before the split
            name, where = _legacy_key(authority, role), source
        pem = keys.get(name) if where == keys_source else public.get(name)
        if pem is None:
            return None
        key = pki.load_private_key(pem, source=f"{where} {name}")
        if not pki.key_matches_cert(key, cert):
            raise PKIError(f"{where}: {name} is not the key of the {role} CA of {authority} in {source}")
        return KeyPair(cert, key)

    target, previous = pair("target", state.target), pair("previous", state.previous)
    return Stored(replace(state, has_target_key=target is not None, has_previous_key=previous is not None),
                  StoredKeys(target, previous))


def split(authority: str, stored: Stored, public: Files, keys: Files) -> tuple[Files, Files, Files]:
    """The three writes of a save, in order: the keys object with every key still needed
    (the authority's new ones, and any a store written before the split kept in its public
    record), the public record with the authority's new entries and no key, and the keys
    object without the authority's keys that are no longer needed."""
    mine = f"{authority}."
    wanted = key_files(authority, stored)
    moved: Files = {}
    for name, value in public.items():
        if not name.endswith(".key"):
            continue
        owner, role = name.split(".", 2)[:2]
        if owner == authority:
            continue  # its keys that are still needed are ``wanted``
        cert = public.get(f"{owner}.{role}.crt")
        certs = pki.load_certificates(cert, source=f"{owner}.{role}.crt") if cert is not None else []
        moved[key_name(owner, certs[0]) if certs else name] = value
    grown = {**keys, **moved, **wanted}
    new_public = {name: value for name, value in public.items()
                  if not name.endswith(".key") and not name.startswith(mine)}
    new_public.update(public_files(authority, stored))
    final = {name: value for name, value in grown.items() if not name.startswith(mine) or name in wanted}
    return grown, new_public, final


class _SplitStore:
    """A save in up to three writes (see :func:`split`), each skipped when it changes nothing."""

    def describe(self) -> str:
        raise NotImplementedError

    def describe_keys(self) -> str:
        raise NotImplementedError

    def _read_public(self) -> tuple[Files, Any]:
        raise NotImplementedError

    def _read_keys(self) -> tuple[Files, Any]:
        raise NotImplementedError

    def _write_public(self, files: Files, version: Any) -> Any:
        raise NotImplementedError

    def _write_keys(self, files: Files, version: Any) -> Any:
        raise NotImplementedError

    def load_state(self, authority: str) -> StoredState:
        return state_from(authority, self._read_public()[0], source=self.describe())

    def load(self, authority: str) -> Stored:
        public, keys = self._read_public()[0], self._read_keys()[0]
        return stored_from(authority, public, keys, source=self.describe(), keys_source=self.describe_keys())

    def save(self, authority: str, stored: Stored) -> None:
        (public, public_version), (keys, keys_version) = self._read_public(), self._read_keys()
        grown, new_public, final = split(authority, stored, public, keys)
        if grown != keys:
            keys_version = self._write_keys(grown, keys_version)
        if new_public != public or public_version is None:
            self._write_public(new_public, public_version)
        if final != grown:
            self._write_keys(final, keys_version)


class SecretStateStore(_SplitStore):
    """Two Secrets in the cluster itself (kube-system/careconcile-state and
    kube-system/careconcile-keys by default)."""

    def __init__(self, client: KubeClient, *, namespace: str, name: str, keys_name: str) -> None:
        self.client = client
        self.namespace, self.name, self.keys_name = namespace, name, keys_name

    def describe(self) -> str:
        return f"Secret {self.namespace}/{self.name}"

    def describe_keys(self) -> str:
        return f"Secret {self.namespace}/{self.keys_name}"

    def _path(self, name: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{name}"

    def _read(self, name: str, source: str) -> tuple[Files, str | None]:
        try:
            secret = self.client.get(self._path(name))
        except APINotFoundError:
            return {}, None
        data = secret.get("data") if isinstance(secret, dict) else None
        if not isinstance(data or {}, dict):
            raise PKIError(f"{source}: its data is not an object")
        try:
            files = {key: base64.b64decode(value) for key, value in (data or {}).items()}
        except (TypeError, ValueError) as exc:
            raise PKIError(f"{source}: a data value is not base64") from exc
        version = (secret.get("metadata") or {}).get("resourceVersion") if isinstance(secret.get("metadata"), dict) \
            else None
        if not isinstance(version, str):
            raise PKIError(f"{source}: the answer has no metadata.resourceVersion")
        return files, version

    def _write(self, name: str, files: Files, version: str | None) -> str:
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": self.namespace, "labels": MANAGED_BY},
            "data": {key: base64.b64encode(value).decode() for key, value in sorted(files.items())}}
        if version is None:
            written = self.client.create(f"/api/v1/namespaces/{self.namespace}/secrets", body)
        else:
            # The resourceVersion makes a concurrent writer fail instead of losing an update.
            body["metadata"]["resourceVersion"] = version
            written = self.client.replace(self._path(name), body)
        return (written or {}).get("metadata", {}).get("resourceVersion", version)

    def _read_public(self) -> tuple[Files, str | None]:
        return self._read(self.name, self.describe())

    def _read_keys(self) -> tuple[Files, str | None]:
        return self._read(self.keys_name, self.describe_keys())

    def _write_public(self, files: Files, version: str | None) -> str:
        return self._write(self.name, files, version)

    def _write_keys(self, files: Files, version: str | None) -> str:
        return self._write(self.keys_name, files, version)


class WorkspaceStateStore(_SplitStore):
    """Two files in the local workspace, for clusters that cannot hold a Secret for careconcile.

    ``state.json`` holds what the public Secret's data would, ``keys.json`` (0600) what the
    keys Secret's would; each is replaced atomically, so a run killed while saving leaves
    the old file or the new, never half of each. Losing ``keys.json`` mid-rotation loses
    the rotation's keys."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"
        self.keys_path = directory / "keys.json"

    def describe(self) -> str:
        return f"workspace state {self.path}"

    def describe_keys(self) -> str:
        return f"workspace keys {self.keys_path}"

    @staticmethod
    def _read(path: Path, source: str) -> tuple[Files, bool | None]:
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            return {}, None
        except (OSError, ValueError) as exc:
            raise PKIError(f"{source}: unreadable ({exc})") from exc
        if not isinstance(document, dict):
            raise PKIError(f"{source}: holds {type(document).__name__}, not an object")
        try:
            return {key: base64.b64decode(value) for key, value in document.items()}, True
        except (TypeError, ValueError) as exc:
            raise PKIError(f"{source}: a value is not base64 ({exc})") from exc

    @staticmethod
    def _write(path: Path, files: Files, mode: int) -> bool:
        document = {key: base64.b64encode(value).decode() for key, value in sorted(files.items())}
        atomic_write(path, (json.dumps(document, indent=2) + "\n").encode(), mode)
        return True

    def _read_public(self) -> tuple[Files, bool | None]:
        return self._read(self.path, self.describe())

    def _read_keys(self) -> tuple[Files, bool | None]:
        return self._read(self.keys_path, self.describe_keys())

    def _write_public(self, files: Files, version: bool | None) -> bool:
        # A state.json written before the split was 0600 and held keys; this one holds none.
        return self._write(self.path, files, 0o644)

    def _write_keys(self, files: Files, version: bool | None) -> bool:
        return self._write(self.keys_path, files, 0o600)


def with_state(stored: Stored, **changes: Any) -> Stored:
    return Stored(replace(stored.state, **changes), stored.keys)
