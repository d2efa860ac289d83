"""`inCluster: true`: the spec's choice between a kubeconfig and the pod's ServiceAccount,
and the client that authenticates with the ServiceAccount token, re-read when it rotates."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from pathlib import Path

import pytest

from reconciler.core import pki
from reconciler.errors import ClusterUnreachableError, SpecError
from reconciler.shell import kube
from reconciler.shell.kube import SERVICEACCOUNT_DIR_ENV, InClusterClient, load_in_cluster
from reconciler.shell.session import open_cluster
from reconciler.shell.specfile import load_spec
from tests.unit.spec_helpers import schema_accepts

NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.timezone.utc)

SPEC = """\
apiVersion: careconcile.dev/v1alpha1
kind: CASpec
metadata:
  name: demo
spec:
  clusters:
    - name: one
{access}
      nodes:
        - name: cp
          role: control-plane
          access:
            local:
              root: /
"""


def spec_file(tmp_path: Path, access: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(access=textwrap.indent(textwrap.dedent(access).strip("\n"), " " * 6)))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as error:
        load_spec(path)
    return [line.removeprefix(f"{path}:") for line in error.value.problems]


# --- the spec -------------------------------------------------------------------------

def test_in_cluster_alone_is_a_valid_cluster_without_a_kubeconfig(tmp_path):
    path = spec_file(tmp_path, "inCluster: true")
    loaded = load_spec(path)
    cluster = loaded.document.spec.clusters[0]
    assert cluster.in_cluster is True and cluster.kubeconfig is None
    assert loaded.kubeconfig_path(cluster) is None
    assert schema_accepts(path)


def test_a_kubeconfig_alone_is_valid_and_in_cluster_false_changes_nothing(tmp_path):
    for access in ("kubeconfig: k.yaml", "kubeconfig: k.yaml\ninCluster: false"):
        path = spec_file(tmp_path, access)
        cluster = load_spec(path).document.spec.clusters[0]
        assert (cluster.in_cluster, cluster.kubeconfig) == (False, "k.yaml")
        assert schema_accepts(path)


@pytest.mark.parametrize("access", ["context: admin@one", "inCluster: false"])
def test_neither_kubeconfig_nor_in_cluster_is_reported_at_the_cluster(tmp_path, access):
    path = spec_file(tmp_path, access)
    assert problems(path) == ["7:7: spec.clusters[0].kubeconfig: required field is missing (or set inCluster: true, or name a management cluster)"]
    assert not schema_accepts(path)


def test_both_kubeconfig_and_in_cluster_are_reported_at_the_kubeconfig(tmp_path):
    path = spec_file(tmp_path, "inCluster: true\nkubeconfig: k.yaml")
    assert problems(path) == ["9:19: spec.clusters[0].kubeconfig: set either kubeconfig or inCluster: true, not both"]
    assert not schema_accepts(path)


def test_a_context_needs_a_kubeconfig(tmp_path):
    path = spec_file(tmp_path, "inCluster: true\ncontext: admin@one")
    assert problems(path) == ["7:7: spec.clusters[0]: context names a kubeconfig context; "
                              "a cluster with inCluster: true has none"]


def test_an_in_cluster_value_that_is_not_a_boolean_is_reported_once(tmp_path):
    (problem,) = problems(spec_file(tmp_path, "inCluster: maybe"))
    assert problem == "8:18: spec.clusters[0].inCluster: must be true or false; got 'maybe'"


# --- the client -----------------------------------------------------------------------

class Recording:
    """A transport that answers {} and records the headers it was sent."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.closed = False

    def request(self, method, url_path, headers, body):
        self.headers.append(headers)
        return 200, {}, json.dumps({"kind": "Status"}).encode()

    def close(self):
        self.closed = True


class Mounted:
    """A ServiceAccount directory written the way the kubelet writes projected volumes:
    the files are symlinks through ``..data`` to a timestamped directory, and an update
    swaps ``..data`` atomically to a new directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.generation = 0

    def write(self, *, token: str, ca_pem: bytes) -> None:
        self.generation += 1
        version = self.directory / f"..2026_11_28_10_00_0{self.generation}"
        version.mkdir(parents=True)
        (version / "token").write_text(token)
        (version / "ca.crt").write_bytes(ca_pem)
        (version / "namespace").write_text("careconcile")
        staged = self.directory / "..data_tmp"
        staged.symlink_to(version.name)
        staged.rename(self.directory / "..data")
        for name in ("token", "ca.crt", "namespace"):
            if not (self.directory / name).is_symlink():
                (self.directory / name).symlink_to(f"..data/{name}")


@pytest.fixture()
def cas():
    return pki.new_ca("old-ca", now=NOW), pki.new_ca("new-ca", now=NOW)


@pytest.fixture()
def mounted(tmp_path, monkeypatch, cas):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv(SERVICEACCOUNT_DIR_ENV, str(tmp_path / "serviceaccount"))
    directory = Mounted(tmp_path / "serviceaccount")
    directory.write(token="token-1\n", ca_pem=cas[0].cert_pem)
    return directory


def test_the_target_is_the_service_address_with_the_mounted_token_and_ca(mounted, cas):
    target = load_in_cluster()
    assert target.server == "https://10.96.0.1:443"
    assert target.token == "token-1"  # the trailing newline is not part of the token
    assert target.ca_pem == cas[0].cert_pem
    assert "token-1" not in repr(target)
    assert str(mounted.directory) in target.describe()


def test_an_ipv6_service_host_is_bracketed(mounted, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00:10:96::1")
    assert load_in_cluster().server == "https://[fd00:10:96::1]:443"


def test_the_default_directory_is_the_kubelets_unless_the_environment_names_another(monkeypatch, tmp_path):
    monkeypatch.delenv(SERVICEACCOUNT_DIR_ENV, raising=False)
    assert kube.serviceaccount_dir() == Path("/var/run/secrets/kubernetes.io/serviceaccount")
    monkeypatch.setenv(SERVICEACCOUNT_DIR_ENV, str(tmp_path))
    assert kube.serviceaccount_dir() == tmp_path


def test_outside_a_pod_the_error_says_so(mounted, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT")
    with pytest.raises(ClusterUnreachableError, match="KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are "
                                                      "not set; careconcile is not running in a pod") as error:
        load_in_cluster()
    assert "kubeconfig" in error.value.hint


def test_a_missing_or_empty_token_names_the_file(mounted):
    (mounted.directory / "token").unlink()
    with pytest.raises(ClusterUnreachableError, match=f"cannot read the ServiceAccount token "
                                                      f"{mounted.directory}/token") as error:
        load_in_cluster()
    assert SERVICEACCOUNT_DIR_ENV in error.value.hint
    (mounted.directory / "token").write_text("\n")
    with pytest.raises(ClusterUnreachableError, match="token .* is empty"):
        load_in_cluster()


def test_a_rotated_token_is_used_from_the_next_request_on(mounted, cas):
    client = InClusterClient()
    transport = client.transport = Recording()
    client.get("/api")
    assert transport.headers[-1]["Authorization"] == "Bearer token-1"
    mounted.write(token="token-2", ca_pem=cas[0].cert_pem)  # the kubelet refreshed the bound token
    client.get("/api")
    client.get("/api")
    assert [h["Authorization"] for h in transport.headers] == ["Bearer token-1", "Bearer token-2", "Bearer token-2"]
    assert client.transport is transport and not transport.closed  # same CA: the connection stays


def test_an_unchanged_directory_is_not_read_again(mounted, monkeypatch):
    client = InClusterClient()
    client.transport = Recording()
    reads = []
    monkeypatch.setattr(kube._credentials, "load_in_cluster", lambda directory=None: reads.append(directory))
    client.get("/api")
    client.get("/api")
    assert reads == []


def test_a_new_ca_gets_a_new_connection_that_trusts_it(mounted, cas, monkeypatch):
    client = InClusterClient()
    old = client.transport = Recording()
    client.get("/api")
    opened = []

    class Opened(Recording):
        def __init__(self, server, context, *, timeout, server_name=None, proxy_url=None):
            super().__init__()
            opened.append(self)
            self.server, self.context = server, context

    monkeypatch.setattr(kube._client, "HTTPSTransport", Opened)
    mounted.write(token="token-1", ca_pem=pki.bundle_pem([cas[0].cert, cas[1].cert]))  # kube-root-ca.crt moved on
    client.get("/api")
    (new,) = opened
    assert old.closed and client.transport is new and len(new.headers) == 1
    assert new.server == "https://10.96.0.1:443"
    trusted = {cert["subject"][0][0][1] for cert in new.context.get_ca_certs()}
    assert trusted == {"old-ca", "new-ca"}
    client.get("/api")
    assert opened == [new]  # once per change


# --- the session picks the client -----------------------------------------------------

def test_open_cluster_uses_the_service_account_for_an_in_cluster_cluster(mounted, tmp_path):
    loaded = load_spec(spec_file(tmp_path, "inCluster: true"))
    access = open_cluster(loaded, loaded.document.spec.clusters[0], tmp_path / "workspace", check_nodes=False)
    assert isinstance(access.client, InClusterClient)
    assert access.kubeconfig_path is None
    assert access.client.target.token == "token-1"
    access.client.close()
