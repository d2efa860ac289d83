"""The sandbox's lay-out of a multi-control-plane cluster, without starting anything."""

from __future__ import annotations

import json
from pathlib import Path

from ruamel.yaml import YAML

from reconciler.core import kubeadm
from reconciler.core.pki import KeySpec
from reconciler.sandbox import _ports
from reconciler.sandbox._lifecycle import SandboxInfo, _lay_out
from reconciler.sandbox._paths import SandboxPaths, node_path


def _flags(root: Path, component: str) -> dict[str, str]:
    pod = YAML(typ="safe").load(node_path(root, f"{kubeadm.MANIFESTS_DIR}/{component}.yaml").read_text())
    return dict(arg.split("=", 1) for arg in pod["spec"]["containers"][0]["command"][1:])


def test_three_control_planes_each_run_an_etcd_member_that_their_apiserver_uses(tmp_path, monkeypatch):
    monkeypatch.setenv(_ports.RESERVATIONS_ENV, str(tmp_path / "reservations"))
    paths = SandboxPaths(tmp_path / "ha")
    paths.directory.mkdir()
    info = _lay_out(paths, name="ha", control_planes=3, workers=0, key=KeySpec("ECDSA", 256), bin_dir=tmp_path)
    roots = {node.name: Path(node.root) for node in info.nodes}
    assert list(roots) == ["ha-control-plane-1", "ha-control-plane-2", "ha-control-plane-3"]
    etcd = {node: _flags(root, "etcd") for node, root in roots.items()}
    apiservers = {node: _flags(root, "kube-apiserver") for node, root in roots.items()}
    assert [etcd[node]["--advertise-client-urls"] for node in roots] == info.etcd
    assert len(set(info.etcd)) == 3
    assert len({flags["--listen-peer-urls"] for flags in etcd.values()}) == 3
    expected = ",".join(f"{node}={etcd[node]['--initial-advertise-peer-urls']}" for node in roots)
    for node in roots:
        assert etcd[node]["--name"] == node
        assert etcd[node]["--initial-cluster"] == expected
        assert apiservers[node]["--etcd-servers"] == etcd[node]["--advertise-client-urls"]
    every_port = [url.rsplit(":", 1)[1] for url in info.etcd + info.apiservers]
    every_port += [etcd[n]["--listen-peer-urls"].rsplit(":", 1)[1] for n in roots]
    every_port += [apiservers[n]["--secure-port"] for n in roots]
    assert len(set(every_port)) == 9, "no port is used twice"
    # reserved for this sandbox, outside the ports the kernel hands out by itself (_ports.py)
    low, high = _ports.ephemeral_range()
    assert not any(low <= int(port) <= high for port in every_port)
    for port in every_port:
        assert json.loads((_ports.reservations_dir() / port).read_text())["owner"] == str(paths.directory)
    _ports.release(paths.directory)
    assert all((_ports.reservations_dir() / port).read_text() == "" for port in every_port)
    # the record keeps the member URLs; a record from before them reads as none
    assert SandboxInfo.load(paths).etcd == info.etcd
    record = json.loads(paths.record.read_text())
    del record["etcd"]
    paths.record.write_text(json.dumps(record))
    assert SandboxInfo.load(paths).etcd == []


def test_with_a_balancer_the_apiservers_stand_behind_haproxy_and_use_every_etcd_member(tmp_path):
    """Several control planes (`up` passes the cached haproxy): its config goes round the
    three apiservers and asks their /readyz, each apiserver lists every member (its own
    first) and fails /readyz before it stops, and the workers' kubelets and the extension
    apiserver reach the apiservers through the balancer; its two instances stand behind it too."""
    from reconciler.core import extension_apiserver as extension
    from reconciler.core import loadbalancer
    from reconciler.sandbox.haproxy import Install

    paths = SandboxPaths(tmp_path / "lb")
    paths.directory.mkdir()
    (tmp_path / "kwok-stages.yaml").write_text("{}")  # kwok's stages, from the binaries cache
    info = _lay_out(paths, name="lb", control_planes=3, workers=1, key=KeySpec("ECDSA", 256), bin_dir=tmp_path,
                    extension_apiserver=True, balancer=Install(tmp_path / "haproxy", "/lib/a:/lib/b"))
    roots = {node.name: Path(node.root) for node in info.nodes}
    first, second, _third, worker = roots.values()
    port = int(info.load_balancer.rsplit(":", 1)[1])
    config = node_path(first, loadbalancer.CONFIG_PATH).read_text()
    assert f"bind 127.0.0.1:{port}" in config and "balance roundrobin" in config
    assert "http-check send meth GET uri /readyz" in config and "option redispatch" in config
    # Taken out after CHECK_FALL failed checks, well within the apiservers' shutdown delay.
    assert f"inter {loadbalancer.CHECK_INTERVAL_MS} fall {loadbalancer.CHECK_FALL} rise 1 " in config
    assert loadbalancer.CHECK_FALL * loadbalancer.CHECK_INTERVAL_MS / 1000 < loadbalancer.SHUTDOWN_DELAY_SECONDS / 2
    for i, server in enumerate(info.apiservers):
        assert f"server apiserver-{i + 1} 127.0.0.1:{server.rsplit(':', 1)[1]}" in config
    pod = YAML(typ="safe").load(node_path(first, f"{kubeadm.MANIFESTS_DIR}/haproxy.yaml").read_text())
    assert pod["spec"]["containers"][0]["env"] == [{"name": "LD_LIBRARY_PATH", "value": "/lib/a:/lib/b"}]
    for node, root in list(roots.items())[:3]:
        flags = _flags(root, "kube-apiserver")
        servers = flags["--etcd-servers"].split(",")
        assert servers[0] == _flags(root, "etcd")["--advertise-client-urls"] and sorted(servers) == sorted(info.etcd)
        assert flags["--shutdown-delay-duration"] == f"{loadbalancer.SHUTDOWN_DELAY_SECONDS}s"
    assert f"server: {info.load_balancer}" in node_path(worker, "/etc/kubernetes/kubelet.conf").read_text()
    assert f"server: {info.load_balancer}" in node_path(first, kubeadm.KWOK_KUBECONFIG).read_text()
    assert f"server: {info.load_balancer}" in node_path(first, extension.KUBECONFIG).read_text()
    # two aggregated apiservers, on the first two nodes, behind the balancer's second frontend
    instances = info.extension_apiserver["instances"]
    assert list(instances) == ["lb-control-plane-1", "lb-control-plane-2"]
    assert f"bind 127.0.0.1:{info.extension_apiserver['port']}" in config
    for i, secure in enumerate(instances.values()):
        assert f"server extension-apiserver-{i + 1} 127.0.0.1:{secure}" in config
    assert node_path(second, extension.SERVING_CERT).read_bytes() == node_path(first, extension.SERVING_CERT).read_bytes()


def test_without_the_loopback_san_every_kubeconfig_names_the_apiserver_by_a_san_it_has(tmp_path, monkeypatch):
    """`up --no-loopback-san`: the apiserver's certificate leaves out 127.0.0.1, and every
    kubeconfig the sandbox writes (the user's, the control plane's, the kubelets', kwok's)
    reaches https://127.0.0.1:PORT with tls-server-name: kubernetes, which the certificate has."""
    from cryptography import x509

    from reconciler.sandbox import binaries

    monkeypatch.setenv(_ports.RESERVATIONS_ENV, str(tmp_path / "reservations"))
    (tmp_path / binaries.KWOK_STAGES).write_text("")
    paths = SandboxPaths(tmp_path / "nosan")
    paths.directory.mkdir()
    info = _lay_out(paths, name="nosan", control_planes=1, workers=1, key=KeySpec("ECDSA", 256), bin_dir=tmp_path,
                    loopback_san=False)
    assert info.tls_server_name == kubeadm.APISERVER_SERVER_NAME == "kubernetes"
    assert SandboxInfo.load(paths).tls_server_name == "kubernetes"
    cp, worker = (Path(node.root) for node in info.nodes)
    cert = x509.load_pem_x509_certificate(node_path(cp, f"{kubeadm.PKI_DIR}/apiserver.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.96.0.1"]
    kubeconfigs = [paths.kubeconfig, node_path(worker, f"{kubeadm.KUBERNETES_DIR}/kubelet.conf"),
                   node_path(cp, kubeadm.KWOK_KUBECONFIG)]
    kubeconfigs += [node_path(cp, f"{kubeadm.KUBERNETES_DIR}/{name}.conf")
                    for name in ("admin", "super-admin", "controller-manager", "scheduler", "kubelet")]
    for path in kubeconfigs:
        clusters = YAML(typ="safe").load(path.read_text())["clusters"]
        assert [c["cluster"]["tls-server-name"] for c in clusters] == ["kubernetes"], path
        assert all(c["cluster"]["server"].startswith("https://127.0.0.1:") for c in clusters), path
    _ports.release(paths.directory)
