"""A static pod's restart reads its manifest and the inputs it records a digest of in one
batch (over SSH one pipelined read, 3 round trips, instead of 3 per file), then writes the
manifest once."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from types import SimpleNamespace

import pytest
from ruamel.yaml import YAML

from reconciler.core.authorities import CLUSTER_CA, manifest_path
from reconciler.core.plan import RestartParams
from reconciler.errors import PKIError, RotationError
from reconciler.shell.components import ComponentRestarts
from reconciler.shell.formats import RESTARTED_FOR

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)


class RecordingFiles:
    """Node files in memory that record each call, and which reads a batch block covered."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.calls: list[tuple] = []
        self._batch: tuple[str, ...] | None = None

    def describe(self) -> str:
        return "node cp1"

    @contextlib.contextmanager
    def batch(self, expected=()):
        self.calls.append(("batch", tuple(expected)))
        self._batch = tuple(expected)
        try:
            yield
        finally:
            self._batch = None

    def read(self, path: str) -> bytes | None:
        self.calls.append(("read", path, self._batch is not None and path in self._batch))
        return self.files.get(path)

    def write(self, path: str, content: bytes, mode: int, *, keep_mode: bool = False) -> None:
        self.calls.append(("write", path))
        self.files[path] = content


def restart(files: RecordingFiles, component: str) -> None:
    access = SimpleNamespace(layout=CLUSTER_CA, nodes={"cp1": files},
                             client=SimpleNamespace(server_now=lambda: NOW))
    action = SimpleNamespace(node="cp1", params=RestartParams(component=component))
    ComponentRestarts(access).restart(action)


def test_a_restart_reads_the_manifest_and_its_inputs_in_one_batch_then_writes_once():
    component = next(c for c in CLUSTER_CA.components if c.name == "kube-controller-manager")
    path = manifest_path(component.name)
    files = RecordingFiles({path: b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: kcm\n",
                            **{name: f"content of {name}".encode() for name in component.inputs}})
    restart(files, component.name)
    assert files.calls == [("batch", (path, *component.inputs)), ("read", path, True),
                           *(("read", name, True) for name in component.inputs), ("write", path)]
    # and the digest written is of the inputs read
    written = YAML(typ="safe", pure=True).load(files.files[path])
    digest = hashlib.sha256()
    for name in component.inputs:
        digest.update(f"{name}\0{hashlib.sha256(f'content of {name}'.encode()).hexdigest()}\n".encode())
    assert written["metadata"]["annotations"][RESTARTED_FOR] == "sha256:" + digest.hexdigest()


def test_a_restart_whose_manifest_is_gone_writes_nothing():
    files = RecordingFiles({})
    with pytest.raises(RotationError, match="kube-scheduler.yaml disappeared"):
        restart(files, "kube-scheduler")
    assert not [call for call in files.calls if call[0] == "write"]


@pytest.mark.parametrize("raw, why", [(b"key: [unclosed\n", "is not YAML"), (b"- a\n- list\n", "is not a Pod manifest")])
def test_a_restart_whose_manifest_is_not_a_pod_manifest_names_it_and_writes_nothing(raw, why):
    """A node's manifest is the node's to write: read as hostile, refused by name."""
    path = manifest_path("kube-scheduler")
    files = RecordingFiles({path: raw})
    with pytest.raises(PKIError) as caught:
        restart(files, "kube-scheduler")
    assert str(caught.value).startswith(f"node cp1: {path} {why}"), caught.value
    assert not [call for call in files.calls if call[0] == "write"]
