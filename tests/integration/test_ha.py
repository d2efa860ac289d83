"""All three CAs (cluster, etcd, front proxy) rotated in one apply on 3 control planes with an
aggregated apiserver, while clients go round the three apiservers and the aggregated API.

One sandbox ("ha3": 3 control planes, each with a stacked etcd member and an apiserver; 1
kwok worker; `--extension-apiserver`, which on several control planes runs two instances of
k8s.io/sample-apiserver). As kubeadm's HA guide lays it out, HAProxy balances the apiservers
(and here the two aggregated apiservers, as a Service balances two pods), going round them
and asking each one's /readyz. The clients go through it:

- one reads ``kube-system`` through the load balancer, which goes round the three
  apiservers; its log shows every apiserver served;
- one reads flunders through the aggregation layer, which the apiservers proxy to the two
  aggregated apiservers through the load balancer;
- a sampler asks every etcd member's /health twice a second.

No request may fail and etcd may not lose quorum in any sample. At the end every leaf of
every authority, on every node, verifies with `openssl verify` against a CA file holding the
new CA alone, and a new plan has no changes. The rotation keeps its state in the workspace.

Before it, the first test checks the sandbox's layout (apiservers, stacked etcd members,
load balancer): it has no sandbox of its own, since an HA sandbox costs about 25 s."""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import json
import re
import ssl
import subprocess
from pathlib import Path

import pytest

from reconciler.core import extension_apiserver as extension
from reconciler.core import kubeconfig, loadbalancer, pki
from reconciler.core.authorities import AUTHORITIES
from reconciler.shell.kube import KubeClient, load_kubeconfig

from .helpers import client_cert, cluster_ca, core_api, request_as, require_extension_apiserver
from .rotation import (
    EtcdSampler, Poller, Rotated, assert_no_private_key_in_files, assert_polled_without_failure, assert_rotated,
    careconcile, prepare_user_objects, record_ca, set_rotation, through_load_balancer,
)

pytestmark = pytest.mark.integration

NAME = "ha3"
FLUNDERS = extension.flunders_path("default")
# The longest time in which no request may end: see below.
SLOW_REQUEST_SECONDS = 10.0
# haproxy's tcplog line: "<client> [<date>] <frontend> <backend>/<server> ..."
SERVED = re.compile(r"^\S+ \[[^]]+\] \S+ (\S+)/(\S+) ", re.MULTILINE)


@pytest.fixture(scope="module")
def ha3(start_sandbox):
    require_extension_apiserver()
    return start_sandbox(NAME, control_planes=3, workers=1, extension_apiserver=True)


def _etcd_call(url: str, node_root: str, method: str, path: str) -> tuple[int, bytes]:
    """One call to an etcd member's client URL with the node's kubeadm healthcheck-client
    certificate, trusting the node's etcd CA."""
    etcd_pki = Path(node_root) / "etc/kubernetes/pki/etcd"
    context = ssl.create_default_context(cafile=str(etcd_pki / "ca.crt"))
    context.load_cert_chain(etcd_pki / "healthcheck-client.crt", etcd_pki / "healthcheck-client.key")
    host, port = url.removeprefix("https://").rsplit(":", 1)
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=5)
    try:
        connection.request(method, path, body=b"{}" if method == "POST" else None)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _manifest_flags(root: str, component: str) -> dict[str, str]:
    text = (Path(root) / f"etc/kubernetes/manifests/{component}.yaml").read_text()
    return dict(line.strip().removeprefix("- ").split("=", 1) for line in text.splitlines()
                if line.strip().startswith("- --") and "=" in line)


def test_the_sandbox_has_an_apiserver_and_a_stacked_etcd_member_per_control_plane(ha3):
    """Before the rotation (tests run in file order): the HA sandbox as kubeadm lays it out."""
    info = ha3
    control_planes = [n for n in info.nodes if n.role == "control-plane"]
    assert len(info.apiservers) == len(info.etcd) == len(control_planes) == 3
    ca = cluster_ca(info).cert
    served = []
    for index, server in enumerate(info.apiservers):
        cert = pki.load_certificates(ssl.get_server_certificate(
            ("127.0.0.1", int(server.rsplit(":", 1)[1]))).encode(), source=server)[0]
        assert pki.is_signed_by(cert, ca)
        served.append(pki.fingerprint(cert))
        # Every apiserver answers through the same kubeconfig, one context each, each from its own etcd member.
        context = f"kubernetes-admin@{NAME}" if index == 0 else f"kubernetes-admin@{NAME}-apiserver-{index + 1}"
        assert [n.metadata.name for n in core_api(info.kubeconfig, context).list_node().items] == [f"{NAME}-worker-1"]
    assert len(set(served)) == 3, "each apiserver has its own serving certificate"
    manifests = {n.name: sorted(p.stem for p in (Path(n.root) / "etc/kubernetes/manifests").glob("*.yaml"))
                 for n in control_planes}
    stack = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    # The two aggregated apiservers run on control planes 1 and 2, as two pods of a Deployment
    # might, with their own etcd on control plane 1.
    assert manifests == {f"{NAME}-control-plane-1": sorted(stack + ["extension-apiserver", "extension-apiserver-etcd",
                                                                     "haproxy", "kwok"]),
                         f"{NAME}-control-plane-2": sorted(stack + ["extension-apiserver"]),
                         f"{NAME}-control-plane-3": stack}
    # The load balancer in front of the three apiservers answers as one (its /readyz is an
    # apiserver's), and the workers' kubelet reaches the apiservers through it.
    assert info.load_balancer and info.load_balancer not in info.apiservers
    with KubeClient(load_kubeconfig(Path(info.kubeconfig))) as admin:
        target = dataclasses.replace(admin.target, server=info.load_balancer)
    with KubeClient(target) as client:
        assert client.get_text("/readyz") == "ok"
    kubelet = (Path(info.nodes[-1].root) / "etc/kubernetes/kubelet.conf").read_text()
    assert f"server: {info.load_balancer}" in kubelet

    # The etcd cluster: each node's apiserver uses every member, its own first; every member
    # is healthy (which needs quorum), and all three are members of one cluster, peer URLs over TLS.
    for node, url in zip(control_planes, info.etcd):
        servers = _manifest_flags(node.root, "kube-apiserver")["--etcd-servers"].split(",")
        assert servers[0] == url and sorted(servers) == sorted(info.etcd)
        assert _manifest_flags(node.root, "etcd")["--advertise-client-urls"] == url
        status, body = _etcd_call(url, node.root, "GET", "/health")
        assert (status, json.loads(body)["health"]) == (200, "true"), (node.name, body)
    ids = {}
    for node, url in zip(control_planes, info.etcd):
        status, body = _etcd_call(url, node.root, "POST", "/v3/cluster/member/list")
        assert status == 200, body
        members = json.loads(body)["members"]
        assert sorted(m["name"] for m in members) == [n.name for n in control_planes], members
        peers = {m["name"]: m["peerURLs"] for m in members}
        assert peers == {n.name: [_manifest_flags(n.root, "etcd")["--initial-advertise-peer-urls"]]
                         for n in control_planes}
        assert all(u.startswith("https://127.0.0.1:") for urls in peers.values() for u in urls)
        assert len({u for urls in peers.values() for u in urls}) == 3
        ids = {m["name"]: format(int(m["ID"]), "x") for m in members}
    # Quorum alone could hide a broken link between two members: every member is connected to
    # both others (etcd_network_active_peers is 1 per connected peer).
    for node, url in zip(control_planes, info.etcd):
        status, body = _etcd_call(url, node.root, "GET", "/metrics")
        active = {line.split("Remote=\"")[1].split("\"")[0]: float(line.rsplit(" ", 1)[1])
                  for line in body.decode().splitlines() if line.startswith("etcd_network_active_peers{")}
        assert active == {ids[n.name]: 1.0 for n in control_planes if n.name != node.name}, (node.name, active)
    # A client certificate of the same subject from another CA is refused: the members check them.
    stranger = client_cert(pki.new_ca("etcd-ca", now=dt.datetime.now(dt.timezone.utc), key=pki.KeySpec("ECDSA", 256)),
                           "kube-etcd-healthcheck-client")
    etcd_ca = Path(control_planes[0].root) / "etc/kubernetes/pki/etcd/ca.crt"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request_as(info.etcd[0], etcd_ca, stranger, "GET", "/health")


def _leaf_certificates(root: Path, leaf) -> list[tuple[str, bytes]]:
    """(where, certificate PEM) of a leaf on one node; none where the node has no such file."""
    path = root / leaf.path.lstrip("/")
    if leaf.form == "pair":
        path = path.with_name(path.name + ".crt")
    if not path.is_file():
        return []
    if leaf.form == "kubeconfig":
        document = kubeconfig.parse(path.read_text(), source=str(path))
        return [(f"{path} user {user}", cert) for user, cert, _ in kubeconfig.embedded_credentials(document)]
    return [(str(path), path.read_bytes())]


def _verify_every_leaf_against_the_new_ca_alone(info, tmp_path: Path) -> dict[str, int]:
    """For each authority, its CA file holds one CA (the new one), and every leaf on every
    node verifies against it with openssl; returns the leaves verified per authority."""
    verified: dict[str, int] = {}
    first = Path(info.nodes[0].root)
    for name, layout in AUTHORITIES.items():
        ca_file = first / layout.record_cert.lstrip("/")
        assert len(pki.load_certificates(ca_file.read_bytes(), source=str(ca_file))) == 1, f"{ca_file}: not one CA"
        for node in info.nodes:
            for leaf in layout.leaves:
                for where, pem in _leaf_certificates(Path(node.root), leaf):
                    cert = tmp_path / "leaf.crt"
                    cert.write_bytes(pem)
                    result = subprocess.run(["openssl", "verify", "-CAfile", str(ca_file), str(cert)],
                                            capture_output=True, text=True)
                    assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), \
                        f"{name}: {where}: {result.stdout}{result.stderr}"
                    verified[name] = verified.get(name, 0) + 1
    return verified


def test_all_three_cas_rotate_on_three_control_planes_without_a_failed_request_or_a_lost_quorum(ha3, tmp_path):
    info = ha3
    assert info.load_balancer and len(info.apiservers) == 3 and len(info.extension_apiserver["instances"]) == 2
    spec = Path(info.spec)
    text = spec.read_text()
    assert text.count("    authorities:\n") == 1
    spec.write_text(text.replace("    authorities:\n", "    stateStore: {workspace: {}}\n    authorities:\n"))
    foreign, old, webhook_ca = prepare_user_objects(info)
    before = {name: pki.load_certificates((Path(info.nodes[0].root) / layout.record_cert.lstrip("/")).read_bytes(),
                                          source=name)[0] for name, layout in AUTHORITIES.items()}
    set_rotation(spec, 1, *AUTHORITIES)
    workspace = tmp_path / "workspace"
    planned = careconcile("plan", str(spec), workspace=workspace)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    # Three of each: a restart never leaves the cluster without an etcd member or an
    # apiserver, and two aggregated apiservers never both stop, so no outage is announced.
    assert "outage:" not in planned.stdout
    members = ", ".join(n.name for n in info.nodes if n.role == "control-plane")
    assert (f"Restarts: etcd 2 times on each of {members}; kube-apiserver 2 times on each of {members}"
            in planned.stdout.split("(etcdCA)")[1])

    haproxy_log = Path(info.directory) / "logs" / info.nodes[0].name / f"{loadbalancer.COMPONENT}.log"
    logged_before = haproxy_log.stat().st_size
    read = through_load_balancer(info)
    api = Poller(Path(info.kubeconfig), {info.load_balancer}, read=read)
    aggregated = Poller(Path(info.kubeconfig), {info.load_balancer}, read=read, path=FLUNDERS)
    etcd = EtcdSampler(info.etcd, Path(info.nodes[0].root) / "etc/kubernetes/pki/etcd")
    with api, aggregated, etcd:
        applied = careconcile("apply", str(spec), "--auto-approve", workspace=workspace)
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr
    healthy = [count for _, count in etcd.samples]
    print(f"\n{info.name}: API {api.requests} requests, {len(api.failures)} failed, {len(api.retried)} "
          f"answered Retry-After, longest gap {api.longest_gap():.2f}s; aggregated API "
          f"{aggregated.requests} requests, {len(aggregated.failures)} failed, {len(aggregated.retried)} "
          f"answered Retry-After, longest gap "
          f"{aggregated.longest_gap():.2f}s; etcd {len(healthy)} samples, fewest healthy members "
          f"{min(healthy, default=0)}, {len(etcd.without_quorum())} without quorum (a leader's handover), "
          f"{etcd.unreadable} unreadable")

    # Slow is not failed: a request may wait a few seconds while its apiserver's etcd member
    # restarts (its client moves to another member) or the 2 cores are busy with the other
    # test workers (3.2 s seen once in a clean-clone run).
    assert_polled_without_failure(api, servers=1, max_gap=SLOW_REQUEST_SECONDS)
    assert_polled_without_failure(aggregated, servers=1, max_gap=SLOW_REQUEST_SECONDS)
    served = {}
    for backend, server in SERVED.findall(haproxy_log.read_text()[logged_before:]):
        served.setdefault(backend, set()).add(server)
    assert served.get("apiserver") == {loadbalancer.server_name("apiserver", i) for i in range(3)}, served
    assert served.get(extension.COMPONENT) == {loadbalancer.server_name(extension.COMPONENT, i) for i in range(2)}
    # Quorum throughout, and the sampler did see members restart. A member that stops while
    # it leads hands its leadership over first: for the 50-100 ms that takes, the members
    # answer /health false ("no leader"), and a sample may fall in it (1 of 378 did once).
    # That is no loss of quorum, which would last until a member came back (seconds, several
    # samples 0.5 s apart): so no two samples in a row may lack it.
    below = [count < etcd.quorum for count in healthy]
    assert len(healthy) > 50 and not any(a and b for a, b in zip(below, below[1:])), etcd.without_quorum()[:5]
    assert 2 in healthy

    verified = _verify_every_leaf_against_the_new_ca_alone(info, tmp_path)
    assert set(verified) == set(AUTHORITIES) and verified["etcdCA"] == 12, verified
    for name, layout in AUTHORITIES.items():
        now = pki.load_certificates((Path(info.nodes[0].root) / layout.record_cert.lstrip("/")).read_bytes(),
                                    source=name)[0]
        assert pki.fingerprint(now) != pki.fingerprint(before[name]), name
    assert_rotated(Rotated(info, workspace, api, old, record_ca(info), foreign, webhook_ca))
    assert_no_private_key_in_files(workspace / info.name / "log")
