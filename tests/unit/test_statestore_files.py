"""The state store's file form (_files_of / _stored_from) and the workspace and Secret stores."""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat

import pytest

from reconciler.core.observed import StoredState, fp
from reconciler.errors import APINotFoundError, PKIError
from reconciler.shell.statestore import (
    SecretStateStore, Stored, StoredKeys, WorkspaceStateStore, _files_of, _stored_from, with_state,
)
from tests.unit.test_diff import ca

AUTHORITY = "clusterCA"


def rotating() -> Stored:
    """The store between create-ca and finalize: both CAs with their keys."""
    state = StoredState(applied_rotation=2, rotation=3, target=ca("new").cert, previous=ca("old").cert,
                        has_target_key=True, has_previous_key=True, verified_phase=2, rolling_back=False,
                        rolled_back_rotation=1, started="2026-11-28T11:00:00+00:00", retired=("sha256:" + "ab" * 32,),
                        workloads_trusted_since=dt.datetime(2026, 11, 28, 11, 5, 0, 250000, tzinfo=dt.timezone.utc),
                        workloads_trusted_alone=fp(ca("old").cert))
    return Stored(state, StoredKeys(target=ca("new"), previous=ca("old")))


def finalized() -> Stored:
    return Stored(StoredState(applied_rotation=3, rolled_back_rotation=1), StoredKeys())


def private_numbers(pair):
    return pair.key.private_numbers()


# --- the file form -----------------------------------------------------------------------------


def test_files_of_a_rotation_hold_state_and_both_pairs():
    files = _files_of(AUTHORITY, rotating())
    assert sorted(files) == ["clusterCA.json", "clusterCA.previous.crt", "clusterCA.previous.key",
                             "clusterCA.target.crt", "clusterCA.target.key"]
    assert json.loads(files["clusterCA.json"]) == {
        "appliedRotation": 2, "rotation": 3, "verifiedPhase": 2, "rollingBack": False, "rolledBackRotation": 1,
        "started": "2026-11-28T11:00:00+00:00", "retired": ["sha256:" + "ab" * 32],
        "workloadsTrustedSince": "2026-11-28T11:05:00.250000Z", "workloadsTrustedAlone": fp(ca("old").cert)}
    assert files["clusterCA.target.crt"] == ca("new").cert_pem
    assert files["clusterCA.previous.key"] == ca("old").key_pem
    assert b"PRIVATE KEY" not in files["clusterCA.json"]


def test_files_round_trip_state_certificates_and_keys():
    stored = rotating()
    loaded = _stored_from(AUTHORITY, _files_of(AUTHORITY, stored), source="test")
    assert loaded.state == stored.state
    assert loaded.state.in_progress and loaded.state.has_target_key and loaded.state.has_previous_key
    assert loaded.keys.target.cert == ca("new").cert and loaded.keys.previous.cert == ca("old").cert
    assert private_numbers(loaded.keys.target) == private_numbers(ca("new"))
    assert private_numbers(loaded.keys.previous) == private_numbers(ca("old"))


def test_files_round_trip_a_finalized_state_without_keys():
    stored = finalized()
    files = _files_of(AUTHORITY, stored)
    assert list(files) == ["clusterCA.json"]
    loaded = _stored_from(AUTHORITY, files, source="test")
    assert loaded == Stored(stored.state, StoredKeys())
    assert not loaded.state.in_progress


def test_no_files_is_the_initial_state():
    assert _stored_from(AUTHORITY, {}, source="test") == Stored(StoredState(), StoredKeys())
    # Another authority's files are not this one's.
    other = {f"frontProxyCA.{name.split('.', 1)[1]}": content for name, content in _files_of(
        AUTHORITY, rotating()).items()}
    assert _stored_from(AUTHORITY, other, source="test") == Stored(StoredState(), StoredKeys())


def test_certificate_without_its_key_is_kept_but_marked_keyless():
    files = _files_of(AUTHORITY, rotating())
    del files["clusterCA.previous.key"]
    loaded = _stored_from(AUTHORITY, files, source="test")
    assert loaded.state.previous == ca("old").cert
    assert loaded.state.has_previous_key is False and loaded.keys.previous is None
    assert loaded.state.has_target_key is True


def test_corrupt_json_names_the_source():
    files = _files_of(AUTHORITY, rotating())
    files["clusterCA.json"] = b'{"appliedRotation": 2,'
    with pytest.raises(PKIError, match=r"^Secret kube-system/careconcile-state: clusterCA\.json is not JSON"):
        _stored_from(AUTHORITY, files, source="Secret kube-system/careconcile-state")


def test_corrupt_key_names_the_source_and_the_file():
    files = _files_of(AUTHORITY, rotating())
    files["clusterCA.target.key"] = b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"
    with pytest.raises(PKIError, match=r"the-store clusterCA\.target\.key"):
        _stored_from(AUTHORITY, files, source="the-store")


@pytest.mark.parametrize("content", [b"null\n", b"[1, 2]\n"], ids=["null", "list"])
def test_state_json_that_is_not_an_object_names_the_source(content):
    with pytest.raises(PKIError, match="the-store"):
        _stored_from(AUTHORITY, {"clusterCA.json": content}, source="the-store")


def test_with_state_changes_the_state_and_keeps_the_keys():
    stored = rotating()
    changed = with_state(stored, verified_phase=3)
    assert changed.state.verified_phase == 3 and changed.keys == stored.keys
    assert stored.state.verified_phase == 2


# --- the workspace store ---------------------------------------------------------------------------


def test_workspace_store_round_trips(tmp_path):
    store = WorkspaceStateStore(tmp_path / "state")
    assert store.load(AUTHORITY) == Stored(StoredState(), StoredKeys())  # no directory yet
    store.save(AUTHORITY, rotating())
    loaded = store.load(AUTHORITY)
    assert loaded.state == rotating().state
    assert private_numbers(loaded.keys.target) == private_numbers(ca("new"))


def test_workspace_store_is_one_owner_only_file(tmp_path):
    directory = tmp_path / "state"
    WorkspaceStateStore(directory).save(AUTHORITY, rotating())
    assert [path.name for path in directory.iterdir()] == ["state.json"]  # no temp file left
    assert stat.S_IMODE((directory / "state.json").stat().st_mode) == 0o600


def test_workspace_store_drops_the_keys_on_finalize_and_keeps_other_authorities(tmp_path):
    store = WorkspaceStateStore(tmp_path / "state")
    store.save(AUTHORITY, rotating())
    store.save("frontProxyCA", rotating())
    store.save(AUTHORITY, finalized())
    assert store.load(AUTHORITY) == Stored(finalized().state, StoredKeys())
    assert store.load("frontProxyCA").keys.target is not None
    assert "PRIVATE KEY" not in base64.b64decode(json.loads(store.path.read_text())["clusterCA.json"]).decode()


def test_workspace_store_corrupt_file_names_it(tmp_path):
    store = WorkspaceStateStore(tmp_path / "state")
    store.save(AUTHORITY, rotating())
    store.path.write_text("{not json")
    with pytest.raises(PKIError) as failed:
        store.load(AUTHORITY)
    assert failed.value.message.startswith(f"workspace state {store.path}: unreadable")


def test_a_state_with_one_of_the_two_cas_is_refused_by_name():
    files = _files_of(AUTHORITY, rotating())
    del files["clusterCA.previous.crt"], files["clusterCA.previous.key"]
    with pytest.raises(PKIError, match="the-store: holds the target CA of clusterCA without the other"):
        _stored_from(AUTHORITY, files, source="the-store")


# --- the Secret store --------------------------------------------------------------------------------


class FakeClient:
    """Just enough of KubeClient for one Secret."""

    def __init__(self, secret=None):
        self.secret = secret
        self.calls = []

    def get(self, path):
        self.calls.append(("get", path))
        if self.secret is None:
            raise APINotFoundError(f"{path} not found", status=404)
        return json.loads(json.dumps(self.secret))

    def create(self, path, body):
        self.calls.append(("create", path))
        self.secret = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}

    def replace(self, path, body):
        self.calls.append(("replace", path, body["metadata"].get("resourceVersion")))
        self.secret = {**body, "metadata": {**body["metadata"], "resourceVersion": "2"}}


def test_secret_store_creates_then_replaces_with_the_resource_version_and_keeps_other_authorities():
    client = FakeClient()
    store = SecretStateStore(client, namespace="kube-system", name="careconcile-state")
    assert store.load(AUTHORITY) == Stored(StoredState(), StoredKeys())
    store.save(AUTHORITY, rotating())
    assert ("create", "/api/v1/namespaces/kube-system/secrets") in client.calls
    assert client.secret["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "careconcile"}
    client.secret["data"]["frontProxyCA.json"] = base64.b64encode(b"{}").decode()
    store.save(AUTHORITY, finalized())
    assert client.calls[-1] == ("replace", "/api/v1/namespaces/kube-system/secrets/careconcile-state", "1")
    assert sorted(client.secret["data"]) == ["clusterCA.json", "frontProxyCA.json"]
    assert store.load(AUTHORITY) == Stored(finalized().state, StoredKeys())


def test_secret_store_corrupt_json_names_the_secret():
    client = FakeClient({"metadata": {"resourceVersion": "7"},
                         "data": {"clusterCA.json": base64.b64encode(b"{oops").decode()}})
    with pytest.raises(PKIError, match=r"^Secret kube-system/careconcile-state: clusterCA\.json is not JSON"):
        SecretStateStore(client, namespace="kube-system", name="careconcile-state").load(AUTHORITY)


@pytest.mark.parametrize("since,alone", [
    ("2026-01-01T00:00:00", "sha256:" + "ab" * 32),  # no time zone: not a time careconcile writes
    (12, "sha256:" + "ab" * 32),
    ("yesterday", ["sha256:" + "ab" * 32]),
    (None, {"fingerprint": 1}),
])
def test_hand_edited_workload_trust_reads_as_unknown_never_a_traceback(since, alone):
    files = _files_of(AUTHORITY, rotating())
    public = json.loads(files["clusterCA.json"])
    public.update(workloadsTrustedSince=since, workloadsTrustedAlone=alone)
    files["clusterCA.json"] = json.dumps(public).encode()
    state = _stored_from(AUTHORITY, files, source="test").state
    assert state.workloads_trusted_since is None
    assert state.workloads_trusted_alone in (None, "sha256:" + "ab" * 32)
    # Unknown, the rotation in progress counts every started pod as trusting only the old CA: restarts, not misses.
    assert state.pod_trust().since is None
