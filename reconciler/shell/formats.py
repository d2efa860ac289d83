"""The formats careconcile reads from nodes and objects and writes back, each in one place:
static-pod manifests (and the annotations that record a restart), the restart marker of a
node service, and the caBundle fields of webhooks, APIServices and CRDs. Observation reads
them with the functions here; the writers write them with their counterparts."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML, YAMLError

from reconciler._time import micro_time, parse_time
from reconciler.core import kubeconfig
from reconciler.core.authorities import manifest_path
from reconciler.errors import PKIError
from reconciler.shell.nodes import NodeFiles

RESTARTED_FOR = "careconcile.dev/restarted-for"
RESTARTED_AT = "careconcile.dev/restarted-at"
# When the process the restart replaced had started (its process_start_time_seconds, by the
# node's clock), so that the check of a later run compares the new one's on the same clock:
# "<start> for <restarted-at>", so that one an older careconcile left beside a restart of
# its own (it keeps annotations it does not know) is not taken for that restart's.
REPLACED_START = "careconcile.dev/replaced-process-started"
# The start times a process may have: after 1970, before the year 10000 (what a datetime
# can show). Anything else, NaN and infinities included, is not a time.
LATEST_START = 253402300799.0


# --- static-pod manifests ----------------------------------------------------------------

def load_manifest(files: NodeFiles, component: str) -> dict[str, Any] | None:
    raw = files.read(manifest_path(component))
    if raw is None:
        return None
    try:
        document = YAML(typ="safe", pure=True).load(raw)
    except YAMLError as exc:
        raise PKIError(f"{files.describe()}: {manifest_path(component)} is not YAML ({exc})") from exc
    if not isinstance(document, dict):
        raise PKIError(f"{files.describe()}: {manifest_path(component)} is not a Pod manifest")
    return document


def manifest_flags(manifest: dict[str, Any]) -> dict[str, str]:
    containers = ((manifest.get("spec") or {}).get("containers") or [{}])
    flags = {}
    for argument in (containers[0].get("command") or []) + (containers[0].get("args") or []):
        if argument.startswith("--") and "=" in argument:
            name, value = argument.split("=", 1)
            flags[name] = value
    return flags


def inputs_digest(files: NodeFiles, inputs: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for path in inputs:
        content = files.read(path) or b""
        digest.update(f"{path}\0{hashlib.sha256(content).hexdigest()}\n".encode())
    return "sha256:" + digest.hexdigest()


def dump_manifest(manifest: dict[str, Any]) -> bytes:
    """A manifest as the sandbox and kubeadm write them (the kubelet reads any YAML)."""
    return kubeconfig.dump(manifest).encode()


def with_restart(manifest: dict[str, Any], restarted_for: str, restarted_at: dt.datetime,
                 replaced_start: float | None = None) -> dict[str, Any]:
    """The manifest with a restart recorded: the kubelet restarts a static pod whose manifest
    changed, and observation reads back what it restarted for."""
    metadata = manifest.setdefault("metadata", {})
    annotations = metadata.get("annotations") or {}
    annotations[RESTARTED_FOR] = restarted_for
    annotations[RESTARTED_AT] = micro_time(restarted_at)
    if replaced_start is None:
        annotations.pop(REPLACED_START, None)
    else:
        annotations[REPLACED_START] = f"{replaced_start!r} for {annotations[RESTARTED_AT]}"
    metadata["annotations"] = annotations
    return manifest


def replaced_start(annotations: dict[str, Any]) -> float | None:
    """The start of the process the recorded restart replaced; None when unknown, or
    recorded for another restart than the one the manifest records now."""
    value, restarted_at = annotations.get(REPLACED_START), annotations.get(RESTARTED_AT)
    if not isinstance(value, str) or not isinstance(restarted_at, str):
        return None
    start, _, recorded_for = value.partition(" for ")
    return start_time(start) if recorded_for == restarted_at else None


def start_time(value: object) -> float | None:
    """A process start time (Unix seconds) as written in text; None when it is not one."""
    try:
        started = float(value) if isinstance(value, str) else -1.0
    except ValueError:
        return None
    return started if 0 < started < LATEST_START else None  # False for NaN too


def with_flags(manifest: dict[str, Any], flags: dict[str, str]) -> dict[str, Any]:
    """The manifest with these ``--flag=value`` arguments of its first container replaced."""
    container = manifest["spec"]["containers"][0]
    container["command"] = [
        next((f"{flag}={value}" for flag, value in flags.items() if arg.startswith(flag + "=")), arg)
        for arg in container["command"]
    ]
    return manifest


# --- node services' restart markers ------------------------------------------------------

@dataclass(frozen=True)
class RestartMarker:
    """What careconcile wrote on a node when it last restarted a node service (the kubelet)."""

    restarted_for: str | None = None
    restarted_at: dt.datetime | None = None
    lease_renew_time: dt.datetime | None = None  # the node's Lease renewTime read just after the restart
    server_time: dt.datetime | None = None  # the API server's clock just after the restart (its Date header)


def read_restart_marker(files: NodeFiles, path: str) -> RestartMarker:
    """The marker file as careconcile wrote it. One that is missing or unreadable counts as
    no restart recorded: during a rotation the next plan restarts the service, which
    writes it again."""
    raw = files.read(path)
    if raw is None:
        return RestartMarker()
    try:
        document = json.loads(raw)
        restarted_for = document.get("restartedFor")
        return RestartMarker(restarted_for=restarted_for if isinstance(restarted_for, str) else None,
                             restarted_at=parse_time(document.get("restartedAt")),
                             lease_renew_time=parse_time(document.get("leaseRenewTime")),
                             server_time=parse_time(document.get("apiserverTime")))
    except (ValueError, TypeError, AttributeError):
        return RestartMarker()


def restart_marker(restarted_for: str, restarted_at: dt.datetime, lease_renew_time: dt.datetime | None,
                   server_time: dt.datetime | None = None) -> bytes:
    return (json.dumps({"restartedFor": restarted_for, "restartedAt": micro_time(restarted_at),
                        "leaseRenewTime": micro_time(lease_renew_time) if lease_renew_time else None,
                        "apiserverTime": micro_time(server_time) if server_time else None},
                       indent=2) + "\n").encode()


# --- caBundle fields -----------------------------------------------------------------------

# Objects that carry a caBundle for the apiserver to verify a webhook or an aggregated
# apiserver with: (kind for ids, list path, where in each item the caBundles are).
CA_BUNDLE_OWNERS = (
    ("validatingwebhookconfiguration", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"),
    ("mutatingwebhookconfiguration", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"),
    ("apiservice", "/apis/apiregistration.k8s.io/v1/apiservices"),
    ("customresourcedefinition", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
)


def ca_bundle_fields(kind: str, item: dict[str, Any]) -> list[tuple[str, str]]:
    """(id suffix, base64 caBundle) of every caBundle field in one object."""
    spec = item.get("spec") or {}
    if kind.endswith("webhookconfiguration"):
        return [(f"/webhooks/{hook.get('name')}", (hook.get("clientConfig") or {}).get("caBundle") or "")
                for hook in item.get("webhooks") or []]
    if kind == "apiservice":
        return [("", spec.get("caBundle") or "")]
    webhook = ((spec.get("conversion") or {}).get("webhook") or {})
    return [("/conversion", (webhook.get("clientConfig") or {}).get("caBundle") or "")]


def set_ca_bundle(kind: str, item: dict[str, Any], suffix: str, bundle: str) -> None:
    """Write one caBundle field of an object (``suffix`` as :func:`ca_bundle_fields` names it)."""
    if kind.endswith("webhookconfiguration"):
        hook_name = suffix.removeprefix("/webhooks/")
        for hook in item.get("webhooks") or []:
            if hook.get("name") == hook_name:
                hook.setdefault("clientConfig", {})["caBundle"] = bundle
    elif kind == "apiservice":
        item["spec"]["caBundle"] = bundle
    else:
        item["spec"]["conversion"]["webhook"]["clientConfig"]["caBundle"] = bundle
