"""The state store: its two objects (the public record and the keys), the workspace and
Secret stores, the order of a save's writes, and the migration of a store written before
the split (one object holding both)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat

import pytest

from reconciler.core.observed import StoredState, fp
from reconciler.errors import APIError, APINotFoundError, PKIError
from reconciler.shell.statestore import (
    SecretStateStore, Stored, StoredKeys, WorkspaceStateStore, key_files, key_name, public_files, state_from,
    stored_from, with_state,
)
from tests.unit.test_diff import ca

AUTHORITY = "clusterCA"
STATE, KEYS = "careconcile-state", "careconcile-keys"


def rotating(authority_ca: str = "new") -> Stored:
    """The store between create-ca and finalize: both CAs with their keys."""
    state = StoredState(applied_rotation=2, rotation=3, target=ca(authority_ca).cert, previous=ca("old").cert,
                        has_target_key=True, has_previous_key=True, verified_phase=2, rolling_back=False,
                        rolled_back_rotation=1, started="2026-11-28T11:00:00+00:00", retired=("sha256:" + "ab" * 32,),
                        workloads_trusted_since=dt.datetime(2026, 11, 28, 11, 5, 0, 250000, tzinfo=dt.timezone.utc),
                        workloads_trusted_alone=fp(ca("old").cert))
    return Stored(state, StoredKeys(target=ca(authority_ca), previous=ca("old")))


def finalized() -> Stored:
    return Stored(StoredState(applied_rotation=3, rolled_back_rotation=1), StoredKeys())


def rolled_back(stored: Stored) -> Stored:
    """What rollback-target saves: the two CAs swapped."""
    state = stored.state
    return Stored(StoredState(applied_rotation=state.applied_rotation, rotation=state.rotation, target=state.previous,
                              previous=state.target, has_target_key=True, has_previous_key=True, verified_phase=2,
                              rolling_back=True, started=state.started, retired=state.retired),
                  StoredKeys(target=stored.keys.previous, previous=stored.keys.target))


def legacy_files(authority: str, stored: Stored) -> dict[str, bytes]:
    """What careconcile wrote before the split, in its one object: the public entries and,
    during a rotation, both keys beside their certificates (``<authority>.<role>.key``)."""
    files = public_files(authority, stored)
    document = json.loads(files[f"{authority}.json"])
    del document["keysStored"]  # the old record did not have it
    files[f"{authority}.json"] = (json.dumps(document, sort_keys=True) + "\n").encode()
    for role, pair in (("target", stored.keys.target), ("previous", stored.keys.previous)):
        if pair is not None:
            files[f"{authority}.{role}.key"] = pair.key_pem
    return files


def private_numbers(pair):
    return pair.key.private_numbers()


def same(loaded: Stored, expected: Stored) -> bool:
    """The same state and the same keys (key objects compare by identity)."""
    def numbers(keys: StoredKeys):
        return [(fp(p.cert), p.key.private_numbers()) if p is not None else None for p in (keys.target, keys.previous)]
    return loaded.state == expected.state and numbers(loaded.keys) == numbers(expected.keys)


def holds_a_key(files: dict[str, bytes]) -> bool:
    return any(b"PRIVATE KEY" in value for value in files.values())


# --- the two objects ------------------------------------------------------------------------------


def test_the_public_record_holds_no_key_and_the_keys_are_named_by_fingerprint():
    public = public_files(AUTHORITY, rotating())
    assert sorted(public) == ["clusterCA.json", "clusterCA.previous.crt", "clusterCA.target.crt"]
    assert json.loads(public["clusterCA.json"]) == {
        "appliedRotation": 2, "rotation": 3, "verifiedPhase": 2, "rollingBack": False, "rolledBackRotation": 1,
        "started": "2026-11-28T11:00:00+00:00", "retired": ["sha256:" + "ab" * 32],
        "workloadsTrustedSince": "2026-11-28T11:05:00.250000Z", "workloadsTrustedAlone": fp(ca("old").cert),
        "keysStored": ["target", "previous"]}
    assert public["clusterCA.target.crt"] == ca("new").cert_pem
    assert not holds_a_key(public)
    keys = key_files(AUTHORITY, rotating())
    assert keys == {f"clusterCA.{fp(ca('new').cert)[7:]}.key": ca("new").key_pem,
                    f"clusterCA.{fp(ca('old').cert)[7:]}.key": ca("old").key_pem}
    assert key_name(AUTHORITY, ca("new").cert) == "clusterCA." + fp(ca("new").cert).removeprefix("sha256:") + ".key"


def test_the_two_objects_round_trip_state_certificates_and_keys():
    stored = rotating()
    loaded = stored_from(AUTHORITY, public_files(AUTHORITY, stored), key_files(AUTHORITY, stored),
                         source="state", keys_source="keys")
    assert same(loaded, stored)
    assert loaded.state.in_progress and loaded.state.has_target_key and loaded.state.has_previous_key


def test_the_public_record_alone_tells_the_rotation_and_which_keys_are_stored():
    """What drift and plan read: the phase, both CAs, and whether the keys are there."""
    state = state_from(AUTHORITY, public_files(AUTHORITY, rotating()), source="state")
    assert state == rotating().state


def test_a_finalized_state_is_one_public_entry_and_no_key():
    stored = finalized()
    assert list(public_files(AUTHORITY, stored)) == ["clusterCA.json"] and key_files(AUTHORITY, stored) == {}
    loaded = stored_from(AUTHORITY, public_files(AUTHORITY, stored), {}, source="state", keys_source="keys")
    assert loaded == Stored(stored.state, StoredKeys())
    assert not loaded.state.in_progress


def test_no_files_is_the_initial_state():
    assert stored_from(AUTHORITY, {}, {}, source="s", keys_source="k") == Stored(StoredState(), StoredKeys())
    # Another authority's entries are not this one's.
    other_public = public_files("frontProxyCA", rotating())
    other_keys = key_files("frontProxyCA", rotating())
    assert stored_from(AUTHORITY, other_public, other_keys, source="s", keys_source="k") == \
        Stored(StoredState(), StoredKeys())


def test_a_key_missing_from_the_keys_object_is_marked_missing():
    keys = key_files(AUTHORITY, rotating())
    del keys[key_name(AUTHORITY, ca("old").cert)]
    loaded = stored_from(AUTHORITY, public_files(AUTHORITY, rotating()), keys, source="s", keys_source="k")
    assert loaded.state.previous == ca("old").cert
    assert loaded.state.has_previous_key is False and loaded.keys.previous is None
    assert loaded.state.has_target_key is True


def test_corrupt_json_names_the_source():
    files = public_files(AUTHORITY, rotating())
    files["clusterCA.json"] = b'{"appliedRotation": 2,'
    with pytest.raises(PKIError, match=r"^Secret kube-system/careconcile-state: clusterCA\.json is not JSON"):
        state_from(AUTHORITY, files, source="Secret kube-system/careconcile-state")


def test_a_corrupt_key_names_the_keys_object_and_the_entry():
    keys = key_files(AUTHORITY, rotating())
    name = key_name(AUTHORITY, ca("new").cert)
    keys[name] = b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"
    with pytest.raises(PKIError, match=rf"the-keys {name}"):
        stored_from(AUTHORITY, public_files(AUTHORITY, rotating()), keys, source="the-state", keys_source="the-keys")


def test_a_key_that_is_not_its_certificates_is_refused_by_name():
    keys = key_files(AUTHORITY, rotating())
    name = key_name(AUTHORITY, ca("new").cert)
    keys[name] = ca("foreign").key_pem
    with pytest.raises(PKIError) as refused:
        stored_from(AUTHORITY, public_files(AUTHORITY, rotating()), keys, source="the-state", keys_source="the-keys")
    assert refused.value.message == f"the-keys: {name} is not the key of the target CA of clusterCA in the-state"
    assert "PRIVATE" not in refused.value.message


@pytest.mark.parametrize("content", [b"null\n", b"[1, 2]\n"], ids=["null", "list"])
def test_state_json_that_is_not_an_object_names_the_source(content):
    with pytest.raises(PKIError, match="the-store"):
        state_from(AUTHORITY, {"clusterCA.json": content}, source="the-store")


def test_with_state_changes_the_state_and_keeps_the_keys():
    stored = rotating()
    changed = with_state(stored, verified_phase=3)
    assert changed.state.verified_phase == 3 and changed.keys == stored.keys
    assert stored.state.verified_phase == 2


def test_a_state_with_one_of_the_two_cas_is_refused_by_name():
    files = public_files(AUTHORITY, rotating())
    del files["clusterCA.previous.crt"]
    with pytest.raises(PKIError, match="the-store: holds the target CA of clusterCA without the other"):
        state_from(AUTHORITY, files, source="the-store")


# --- the workspace store ---------------------------------------------------------------------------


def test_workspace_store_round_trips(tmp_path):
    store = WorkspaceStateStore(tmp_path / "state")
    assert store.load(AUTHORITY) == Stored(StoredState(), StoredKeys())  # no directory yet
    store.save(AUTHORITY, rotating())
    assert same(store.load(AUTHORITY), rotating())
    assert store.load_state(AUTHORITY) == rotating().state


def decoded(path) -> dict[str, bytes]:
    return {name: base64.b64decode(value) for name, value in json.loads(path.read_text()).items()}


def test_workspace_store_keeps_the_keys_apart_in_an_owner_only_file(tmp_path):
    directory = tmp_path / "state"
    store = WorkspaceStateStore(directory)
    store.save(AUTHORITY, rotating())
    assert sorted(path.name for path in directory.iterdir()) == ["keys.json", "state.json"]  # no temp file left
    assert stat.S_IMODE((directory / "keys.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "state.json").stat().st_mode) == 0o644
    assert not holds_a_key(decoded(directory / "state.json"))
    assert sorted(decoded(directory / "keys.json")) == sorted(key_files(AUTHORITY, rotating()))


def test_workspace_store_drops_the_keys_on_finalize_and_keeps_other_authorities(tmp_path):
    store = WorkspaceStateStore(tmp_path / "state")
    store.save(AUTHORITY, rotating())
    store.save("frontProxyCA", rotating())
    store.save(AUTHORITY, finalized())
    assert store.load(AUTHORITY) == Stored(finalized().state, StoredKeys())
    assert store.load("frontProxyCA").keys.target is not None
    assert sorted(decoded(store.keys_path)) == sorted(key_files("frontProxyCA", rotating()))
    assert not holds_a_key(decoded(store.path))


def test_workspace_store_corrupt_file_names_it(tmp_path):
    store = WorkspaceStateStore(tmp_path / "state")
    store.save(AUTHORITY, rotating())
    store.keys_path.write_text("{not json")
    assert store.load_state(AUTHORITY) == rotating().state  # the public record alone does not read it
    with pytest.raises(PKIError) as failed:
        store.load(AUTHORITY)
    assert failed.value.message.startswith(f"workspace keys {store.keys_path}: unreadable")


# --- the Secret store --------------------------------------------------------------------------------


class FakeClient:
    """Just enough of KubeClient for Secrets in one namespace; ``fail_after`` writes, it
    raises, as a run killed between two writes would stop."""

    def __init__(self, secrets=None, *, fail_after: int | None = None):
        self.secrets = dict(secrets or {})
        self.calls = []
        self.writes = 0
        self.fail_after = fail_after

    def get(self, path):
        self.calls.append(("get", path))
        name = path.rsplit("/", 1)[1]
        if name not in self.secrets:
            raise APINotFoundError(f"{path} not found", status=404)
        return json.loads(json.dumps(self.secrets[name]))

    def _write(self, call, body):
        if self.fail_after is not None and self.writes >= self.fail_after:
            raise APIError("killed", status=500)
        self.writes += 1
        self.calls.append(call)
        version = str(int(self.secrets.get(body["metadata"]["name"], {}).get("metadata", {}).get(
            "resourceVersion", "0")) + 1)
        self.secrets[body["metadata"]["name"]] = {**body, "metadata": {**body["metadata"], "resourceVersion": version}}
        return self.secrets[body["metadata"]["name"]]

    def create(self, path, body):
        return self._write(("create", body["metadata"]["name"]), body)

    def replace(self, path, body):
        return self._write(("replace", path.rsplit("/", 1)[1], body["metadata"].get("resourceVersion")), body)

    def data(self, name) -> dict[str, bytes]:
        return {key: base64.b64decode(value) for key, value in self.secrets[name]["data"].items()}


def secret_store(client) -> SecretStateStore:
    return SecretStateStore(client, namespace="kube-system", name=STATE, keys_name=KEYS)


def legacy_secret(*authorities: str, stored: Stored | None = None) -> dict:
    """The one Secret careconcile wrote before the split, mid-rotation for each authority."""
    files = {}
    for authority in authorities:
        files.update(legacy_files(authority, stored or rotating()))
    return {"metadata": {"name": STATE, "resourceVersion": "7"},
            "data": {name: base64.b64encode(value).decode() for name, value in files.items()}}


def test_secret_store_writes_two_secrets_and_keeps_other_authorities():
    client = FakeClient()
    store = secret_store(client)
    assert store.load(AUTHORITY) == Stored(StoredState(), StoredKeys())
    store.save(AUTHORITY, rotating())
    # The keys are stored before the public record names them.
    assert [call for call in client.calls if call[0] != "get"] == [("create", KEYS), ("create", STATE)]
    assert client.secrets[STATE]["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "careconcile"}
    assert client.secrets[KEYS]["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "careconcile"}
    assert not holds_a_key(client.data(STATE))
    assert sorted(client.data(KEYS)) == sorted(key_files(AUTHORITY, rotating()))
    assert same(store.load(AUTHORITY), rotating())

    client.secrets[STATE]["data"]["frontProxyCA.json"] = base64.b64encode(b"{}").decode()
    client.calls.clear()
    store.save(AUTHORITY, with_state(rotating(), verified_phase=3))
    assert [call for call in client.calls if call[0] != "get"] == [("replace", STATE, "1")]  # the keys did not change

    client.calls.clear()
    store.save(AUTHORITY, finalized())
    # The public record stops naming the keys before they are dropped.
    assert [call for call in client.calls if call[0] != "get"] == [("replace", STATE, "2"), ("replace", KEYS, "1")]
    assert sorted(client.data(STATE)) == ["clusterCA.json", "frontProxyCA.json"]
    assert client.data(KEYS) == {}
    assert store.load(AUTHORITY) == Stored(finalized().state, StoredKeys())


def test_reading_the_state_alone_never_asks_for_the_keys():
    client = FakeClient()
    secret_store(client).save(AUTHORITY, rotating())
    client.calls.clear()
    assert secret_store(client).load_state(AUTHORITY) == rotating().state
    assert client.calls == [("get", f"/api/v1/namespaces/kube-system/secrets/{STATE}")]


def test_secret_store_corrupt_json_names_the_secret():
    client = FakeClient({STATE: {"metadata": {"resourceVersion": "7"},
                                 "data": {"clusterCA.json": base64.b64encode(b"{oops").decode()}}})
    with pytest.raises(PKIError, match=r"^Secret kube-system/careconcile-state: clusterCA\.json is not JSON"):
        secret_store(client).load(AUTHORITY)


@pytest.mark.parametrize("before,after", [
    (Stored(StoredState(applied_rotation=2), StoredKeys()), rotating()),  # create-ca
    (rotating(), rolled_back(rotating())),  # rollback-target
    (rotating(), finalized()),  # finalize
], ids=["create-ca", "rollback-target", "finalize"])
def test_a_save_killed_between_its_writes_leaves_the_old_state_or_the_new(before, after):
    """The keys a state needs are in the keys Secret whenever the public record names them."""
    for fail_after in range(4):
        client = FakeClient()
        secret_store(client).save(AUTHORITY, before)
        client.fail_after, client.writes = fail_after, 0
        try:
            secret_store(client).save(AUTHORITY, after)
        except APIError:
            pass
        loaded = secret_store(client).load(AUTHORITY)
        assert same(loaded, before) or same(loaded, after), fail_after
    assert same(loaded, after)


# --- migration from one object to two ------------------------------------------------------------


def test_a_store_written_before_the_split_is_read_as_before():
    """A rotation the old code started, at phase 2: both keys in careconcile-state, no
    careconcile-keys yet."""
    client = FakeClient({STATE: legacy_secret(AUTHORITY)})
    store = secret_store(client)
    assert same(store.load(AUTHORITY), rotating())
    assert store.load_state(AUTHORITY) == rotating().state  # keys stored, by the old record's own entries
    assert [call[0] for call in client.calls] == ["get", "get", "get"]  # nothing written by reading


def test_the_next_save_splits_an_old_store_without_losing_the_rotation():
    client = FakeClient({STATE: legacy_secret(AUTHORITY, "frontProxyCA")})
    store = secret_store(client)
    stored = store.load(AUTHORITY)
    store.save(AUTHORITY, with_state(stored, verified_phase=3))  # the first save of the new code: a verify
    # Every key left the public record, this authority's and the other one's, into the keys Secret first.
    assert [call for call in client.calls if call[0] in ("create", "replace")] == [
        ("create", KEYS), ("replace", STATE, "7")]
    assert not holds_a_key(client.data(STATE))
    assert sorted(client.data(KEYS)) == sorted({**key_files(AUTHORITY, rotating()),
                                                **key_files("frontProxyCA", rotating())})
    assert same(store.load(AUTHORITY), with_state(rotating(), verified_phase=3))
    assert same(store.load("frontProxyCA"), rotating())  # migrated too, still at its phase
    # The rotation then ends as any other: no key left anywhere.
    store.save(AUTHORITY, finalized())
    store.save("frontProxyCA", finalized())
    assert client.data(KEYS) == {} and not holds_a_key(client.data(STATE))


@pytest.mark.parametrize("fail_after", [0, 1])
def test_a_migration_killed_between_its_writes_loses_nothing(fail_after):
    client = FakeClient({STATE: legacy_secret(AUTHORITY)}, fail_after=fail_after)
    store = secret_store(client)
    with pytest.raises(APIError):
        store.save(AUTHORITY, with_state(store.load(AUTHORITY), verified_phase=3))
    assert same(store.load(AUTHORITY), rotating())  # the old record (phase 2), its keys found


def test_a_rollback_of_a_rotation_the_old_code_started():
    client = FakeClient({STATE: legacy_secret(AUTHORITY)})
    store = secret_store(client)
    store.save(AUTHORITY, rolled_back(store.load(AUTHORITY)))
    assert same(store.load(AUTHORITY), rolled_back(rotating()))
    assert not holds_a_key(client.data(STATE))


def test_a_workspace_store_written_before_the_split_is_split_on_its_next_save(tmp_path):
    store = WorkspaceStateStore(tmp_path / "state")
    store.directory.mkdir()
    old = {name: base64.b64encode(value).decode() for name, value in legacy_files(AUTHORITY, rotating()).items()}
    store.path.write_text(json.dumps(old, indent=2) + "\n")
    store.path.chmod(0o600)
    assert same(store.load(AUTHORITY), rotating())
    store.save(AUTHORITY, with_state(store.load(AUTHORITY), verified_phase=3))
    assert not holds_a_key(decoded(store.path))
    assert stat.S_IMODE(store.keys_path.stat().st_mode) == 0o600
    assert same(store.load(AUTHORITY), with_state(rotating(), verified_phase=3))


@pytest.mark.parametrize("record", [{"appliedRotation": "x"}, {"rotation": True}, {"verifiedPhase": [1]},
                                    {"rolledBackRotation": -1}, {"retired": 5}, {"retired": [1]}, {"started": 3}],
                         ids=["applied-a-string", "rotation-a-bool", "phase-a-list", "rolled-back-negative",
                              "retired-a-number", "retired-not-strings", "started-a-number"])
def test_a_record_of_the_wrong_types_is_an_error_naming_the_field(record):
    """The record comes from a Secret anyone with its RBAC can write: a wrong type is an
    error naming the field (before, int() and tuple() raised ValueError and TypeError)."""
    from reconciler.errors import PKIError
    from reconciler.shell.statestore import state_from

    field = next(iter(record))
    with pytest.raises(PKIError, match=rf"Secret s: clusterCA.json: {field} is not"):
        state_from("clusterCA", {"clusterCA.json": json.dumps(record).encode()}, source="Secret s")
