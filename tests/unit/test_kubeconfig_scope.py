"""Which entries of a kubeconfig belong to the cluster being rotated, and that only those change."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from reconciler.core import kubeconfig, pki
from reconciler.core.kubeconfig import ClientCredentials, Endpoint
from reconciler.errors import PKIError

NOW = dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc)
KEY = pki.KeySpec("ECDSA", 256)


@pytest.fixture(scope="module")
def two_clusters():
    ours, theirs = pki.new_ca("ours", now=NOW, key=KEY), pki.new_ca("theirs", now=NOW, key=KEY)

    def document(ca, name, server, user):
        client = pki.issue_leaf(ca, pki.LeafRequest(user, client=True, key=KEY), now=NOW)
        return kubeconfig.build(endpoints=[Endpoint(name, server)], ca_pem=ca.cert_pem, user=user,
                                credentials=ClientCredentials(cert_pem=client.cert_pem, key_pem=client.key_pem))

    merged = document(ours, "ours", "https://127.0.0.1:6443", "admin")
    other = document(theirs, "elsewhere", "https://10.0.0.1:6443", "me")
    for key in ("clusters", "users", "contexts"):
        merged[key] = merged[key] + other[key]
    return merged, ours, theirs


def test_scope_follows_the_servers_and_the_users_their_contexts_use(two_clusters):
    document, _, _ = two_clusters
    scope = kubeconfig.scope_for(document, servers={"https://127.0.0.1:6443"}, context=None)
    assert scope.clusters == {"ours"} and scope.users == {"admin"}


def test_the_named_context_counts_even_behind_a_load_balancer(two_clusters):
    document, _, _ = two_clusters
    scope = kubeconfig.scope_for(document, servers=set(), context="me@elsewhere")
    assert scope.clusters == {"elsewhere"} and scope.users == {"me"}


def test_with_ca_changes_only_entries_in_scope(two_clusters):
    document, ours, theirs = two_clusters
    scope = kubeconfig.scope_for(document, servers={"https://127.0.0.1:6443"}, context=None)
    updated = kubeconfig.with_ca(document, ours.cert_pem + theirs.cert_pem, scope)
    by_name = {entry["name"]: base64.b64decode(entry["cluster"]["certificate-authority-data"])
               for entry in updated["clusters"]}
    assert by_name["ours"] == ours.cert_pem + theirs.cert_pem
    assert by_name["elsewhere"] == theirs.cert_pem
    assert kubeconfig.ca_certificates(document, source="x", scope=scope) == [ours.cert_pem]
    assert [user for user, _, _ in kubeconfig.embedded_credentials(document, scope)] == ["admin"]


def test_a_scope_with_no_ca_data_is_an_error_naming_the_source(two_clusters):
    document, _, _ = two_clusters
    nothing = kubeconfig.Scope(clusters=frozenset(), users=frozenset())
    with pytest.raises(PKIError, match="the-file"):
        kubeconfig.ca_certificates(document, source="the-file", scope=nothing)


def test_file_references_in_scope_are_named(two_clusters):
    document, _, _ = two_clusters
    document = {**document, "users": [{"name": "admin", "user": {"client-certificate": "/etc/admin.crt",
                                                                   "client-key": "/etc/admin.key"}}]}
    scope = kubeconfig.scope_for(document, servers={"https://127.0.0.1:6443"}, context=None)
    assert kubeconfig.file_references(document, scope) == ["user 'admin' client-certificate: /etc/admin.crt"]
    other = kubeconfig.scope_for(document, servers={"https://10.0.0.1:6443"}, context="me@elsewhere")
    assert kubeconfig.file_references(document, other) == []


def test_broken_base64_is_a_pki_error_naming_where_it_is_and_nothing_of_its_content():
    import pytest

    from reconciler.core import kubeconfig
    from reconciler.errors import PKIError

    document = {"clusters": [{"name": "c", "cluster": {"certificate-authority-data": "abc"}}],
                "users": [{"name": "u", "user": {"client-certificate-data": "Y2VydA==", "client-key-data": "s3cr3t!"}}]}
    with pytest.raises(PKIError, match="admin.conf: cluster 'c' certificate-authority-data: not valid base64"):
        kubeconfig.ca_certificates(document, source="admin.conf")
    with pytest.raises(PKIError, match="admin.conf: user 'u' client-key-data: not valid base64") as error:
        kubeconfig.embedded_credentials(document, source="admin.conf")
    assert "s3cr3t" not in str(error.value)
    wrapped = {"clusters": [{"name": "c", "cluster": {"certificate-authority-data": "Y2Vy\n dA=="}}]}
    assert kubeconfig.ca_certificates(wrapped, source="x") == [b"cert"]
