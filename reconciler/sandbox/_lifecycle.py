"""Starting, inspecting and stopping sandboxes."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from reconciler import __version__
from reconciler._files import atomic_write, atomic_write_json
from reconciler._process import process_alive
from reconciler.core import extension_apiserver as extension
from reconciler.core import kubeadm
from reconciler.core import loadbalancer
from reconciler.core.kubeconfig import dump
from reconciler.core.kubeadm import ClusterAuthorities, ControlPlanePorts, EtcdPorts, NodeFile
from reconciler.core.pki import KeySpec
from reconciler.errors import CareconcileError, ClusterUnreachableError, SandboxError, SandboxNotFoundError
from reconciler.sandbox import _admin, _api, _ports, _specfile, _workloads, binaries, haproxy, sshd
from reconciler.sandbox._paths import SandboxPaths, node_path, sandboxes_root
from reconciler.sandbox.binaries import KUBERNETES_VERSION, require_binaries, require_extension_apiserver

READY_TIMEOUT_SECONDS = 180.0
# How a restarted controller-manager and kwok take their Leases over (`up --lease-handover`;
# kubeadm.LEASE_HANDOVERS). docs/sandbox.md says why the default is "fast".
LEASE_HANDOVERS = tuple(kubeadm.LEASE_HANDOVERS)
STOP_TIMEOUT_SECONDS = 90.0

_processes: list[subprocess.Popen] = []  # supervisors started by this process, reaped by down()


@dataclass(frozen=True)
class NodeInfo:
    name: str
    role: str
    root: str


@dataclass
class SandboxInfo:
    """What `sandbox up` reports; ``to_json`` is the `--output json` object."""

    name: str
    directory: str
    kubeconfig: str
    spec: str
    nodes_dir: str
    apiservers: list[str]
    kubernetes_version: str
    control_planes: int
    workers: int
    nodes: list[NodeInfo]
    startup_seconds: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # With `up --ssh`: the sshd that serves the node directories (host, port, user,
    # host_key, key_file, directory); the spec reaches every node through it.
    ssh: dict[str, Any] | None = None
    # With `up --admin`: the management sandbox it is registered in (name, kubeconfig,
    # context, namespace); the spec then reaches the cluster in admin mode.
    admin: dict[str, Any] | None = None
    lease_handover: str = "fast"
    # Sample namespaces beside kubeadm's add-ons (`up --workloads N`; _workloads.py).
    workloads: int = 0
    # With `up --extension-apiserver`: the aggregated apiserver on the first control-plane
    # node (apiservice, group, version, port, etcd, kubeconfig, serving_ca).
    extension_apiserver: dict[str, Any] | None = None
    # The client URL of each control plane's etcd member, in the order of the nodes
    # (empty in records from before etcd was stacked on every control plane).
    etcd: list[str] = field(default_factory=list)
    # With 2 or more control planes: the URL of the load balancer in front of the apiservers
    # (HAProxy, reconciler/core/loadbalancer.py); the kubelets and the extension apiserver use it.
    load_balancer: str | None = None
    # With `up --no-loopback-san`: the apiservers' certificates leave out 127.0.0.1 and every
    # kubeconfig of the sandbox names them by this tls-server-name (a SAN they have).
    tls_server_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, paths: SandboxPaths) -> "SandboxInfo":
        try:
            record = json.loads(paths.record.read_text())
        except (OSError, ValueError) as exc:
            raise SandboxError(f"sandbox {paths.name!r}: cannot read {paths.record}: {exc}") from exc
        try:
            values = {f.name: record[f.name] for f in fields(cls) if f.name in record}
            values.setdefault("lease_handover", "kubeadm")  # recorded before there was a choice
            values["nodes"] = [NodeInfo(**node) for node in record["nodes"]]
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise SandboxError(f"sandbox {paths.name!r}: {paths.record} is incomplete: {exc}") from exc


def _write_node_files(root: Path, files: list[NodeFile]) -> None:
    for file in files:
        atomic_write(node_path(root, file.path), file.content, file.mode)


def _write_manifest(root: Path, pod: dict[str, Any]) -> None:
    path = node_path(root, f"{kubeadm.MANIFESTS_DIR}/{pod['metadata']['name']}.yaml")
    atomic_write(path, dump(pod).encode(), 0o600)


def _lay_out(
    paths: SandboxPaths, *, name: str, control_planes: int, workers: int, key: KeySpec, bin_dir: Path,
    ssh: dict[str, Any] | None = None, admin: dict[str, Any] | None = None, lease_handover: str = "fast",
    workloads: int = 0, extension_apiserver: bool = False, extra_bin_dirs: tuple[Path, ...] = (),
    balancer: haproxy.Install | None = None, loopback_san: bool = True,
) -> SandboxInfo:
    """Write every node directory, the kubeconfig, the spec and the sandbox record. With
    ``extension_apiserver``, also the extension apiserver's files and its etcd's manifest;
    its own manifest waits for its RBAC objects (`_start_extension_apiserver`). With
    ``balancer``, a load balancer in front of the apiservers, on the first control-plane
    node, which the kubelets and the extension apiserver reach them through."""
    now = dt.datetime.now(dt.timezone.utc)
    cp_names = [f"{name}-control-plane-{i + 1}" for i in range(control_planes)]
    worker_names = [f"{name}-worker-{i + 1}" for i in range(workers)]
    # With a balancer and the extension apiserver, two instances of it (on the first two
    # control planes) behind the balancer: a port for the second and one for the balancer.
    ext_count = 0 if not extension_apiserver else 5 if balancer else 3
    # Reserved for this sandbox until `down` (or its directory is gone): another sandbox
    # starting at the same moment gets others (_ports.py).
    ports = _ports.reserve(5 * control_planes + ext_count + (1 if balancer else 0), paths.directory)
    balancer_port = ports.pop() if balancer else None
    ext_instances: dict[str, extension.Ports] = {}
    ext_service_port = None
    if extension_apiserver:
        ext, ports = ports[5 * control_planes:], ports[:5 * control_planes]
        ext_instances[cp_names[0]] = extension.Ports(*ext[:3])
        ext_service_port = ext[0]
        if balancer:
            ext_instances[cp_names[1]] = extension.Ports(ext[3], ext[1], ext[2])
            ext_service_port = ext[4]
    cp_ports = [ControlPlanePorts(*ports[5 * i:5 * i + 3]) for i in range(control_planes)]
    # Stacked etcd, as kubeadm lays out an HA cluster: a member on every control-plane node.
    etcd_members = {node: EtcdPorts(*ports[5 * i + 3:5 * i + 5]) for i, node in enumerate(cp_names)}
    apiserver_ports = [p.apiserver for p in cp_ports]
    # Where the kubelets and the extension apiserver reach an apiserver: the load balancer,
    # as kubeadm's controlPlaneEndpoint, or the only apiserver.
    endpoint_port = balancer_port or apiserver_ports[0]
    authorities: ClusterAuthorities = kubeadm.new_authorities(now=now, key=key)
    server_name = None if loopback_san else kubeadm.APISERVER_SERVER_NAME

    def node_files(node: str) -> list[NodeFile]:
        if node in cp_names:
            index = cp_names.index(node)
            return kubeadm.control_plane_files(
                authorities, node_name=node, cluster_name=name, ports=cp_ports[index],
                all_apiserver_ports=apiserver_ports, now=now, key=key, server_name=server_name,
            )
        return kubeadm.worker_files(
            authorities, node_name=node, cluster_name=name, server_port=endpoint_port, now=now, key=key,
            server_name=server_name,
        )

    # Key generation dominates lay-out time; OpenSSL releases the GIL while it searches primes.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for node, files in zip(cp_names + worker_names, pool.map(node_files, cp_names + worker_names)):
            _write_node_files(paths.node_root(node), files)

    first = paths.node_root(cp_names[0])
    handover = kubeadm.LEASE_HANDOVERS[lease_handover]
    for node, cp in zip(cp_names, cp_ports):
        root = paths.node_root(node)
        _write_manifest(root, kubeadm.etcd_manifest(node, etcd_members[node], etcd_members))
        _write_manifest(root, kubeadm.apiserver_manifest(
            cp, etcd_members[node], shutdown_delay_seconds=loadbalancer.SHUTDOWN_DELAY_SECONDS if balancer else 0,
            other_etcd=tuple(ports for member, ports in etcd_members.items() if member != node) if balancer else ()))
        _write_manifest(root, kubeadm.controller_manager_manifest(
            name, cp, release_leader_lease=handover.release_leader_lease))
        _write_manifest(root, kubeadm.scheduler_manifest(cp))
    if workers:
        kwok_conf = kubeadm.kwok_kubeconfig(authorities, cluster_name=name, server_port=endpoint_port,
                                            now=now, key=key, server_name=server_name)
        stages = NodeFile(kubeadm.KWOK_STAGES, (bin_dir / binaries.KWOK_STAGES).read_bytes())
        _write_node_files(first, [kwok_conf, stages])
        _write_manifest(first, kubeadm.kwok_manifest(node_lease_seconds=handover.node_lease_seconds))
    ext_info = None
    if extension_apiserver:
        ext_files, _serving_ca = extension.node_files(authorities, cluster_name=name,
                                                      apiserver_port=endpoint_port, now=now, key=key)
        for node in ext_instances:  # the same files: both instances serve one Service
            _write_node_files(paths.node_root(node), ext_files)
        ext_ports = ext_instances[cp_names[0]]
        _write_manifest(first, extension.etcd_manifest(ext_ports))
        ext_info = {
            "apiservice": extension.APISERVICE, "group": extension.GROUP, "version": extension.VERSION,
            "node": cp_names[0], "port": ext_service_port, "etcd": f"http://{kubeadm.LOOPBACK}:{ext_ports.etcd_client}",
            "etcd_peer_port": ext_ports.etcd_peer, "kubeconfig": extension.KUBECONFIG,
            "serving_ca": extension.SERVING_CA_CERT,
            # Where each instance serves, by node; the APIService's port is "port".
            "instances": {node: ports.secure for node, ports in ext_instances.items()},
        }

    if balancer:
        services = [loadbalancer.Balanced("apiserver", balancer_port, tuple(apiserver_ports))]
        if extension_apiserver:
            services.append(loadbalancer.Balanced(extension.COMPONENT, ext_service_port,
                                                  tuple(p.secure for p in ext_instances.values())))
        _write_node_files(first, [NodeFile(loadbalancer.CONFIG_PATH, loadbalancer.config(services).encode())])
        _write_manifest(first, loadbalancer.manifest(library_path=balancer.library_path))
    # The user's kubeconfig: an admin kubeconfig of its own, one context per apiserver.
    atomic_write(paths.kubeconfig, kubeadm.admin_kubeconfig(
        authorities, cluster_name=name, server_ports=apiserver_ports, now=now, key=key, server_name=server_name),
        0o600)

    nodes = [NodeInfo(n, "control-plane", str(paths.node_root(n))) for n in cp_names]
    nodes += [NodeInfo(n, "worker", str(paths.node_root(n))) for n in worker_names]
    info = SandboxInfo(
        name=name, directory=str(paths.directory), kubeconfig=str(paths.kubeconfig), spec=str(paths.spec),
        nodes_dir=str(paths.nodes), apiservers=[f"https://{kubeadm.LOOPBACK}:{p}" for p in apiserver_ports],
        etcd=[f"https://{kubeadm.LOOPBACK}:{p.client}" for p in etcd_members.values()],
        kubernetes_version=KUBERNETES_VERSION, control_planes=control_planes, workers=workers, nodes=nodes,
        ssh=ssh, admin=admin, lease_handover=lease_handover, workloads=workloads, extension_apiserver=ext_info,
        load_balancer=f"https://{kubeadm.LOOPBACK}:{balancer_port}" if balancer else None,
        tls_server_name=server_name,
    )
    atomic_write(paths.spec, _specfile.render(info).encode())
    _save_record(paths, info, bin_dir=bin_dir, extra_bin_dirs=extra_bin_dirs)
    return info


def _save_record(paths: SandboxPaths, info: SandboxInfo, *, bin_dir: Path, extra_bin_dirs: tuple[Path, ...] = ()) -> None:
    record = info.to_json() | {"bin_dir": str(bin_dir), "careconcile_version": __version__}
    if extra_bin_dirs:  # where the supervisor also looks for commands (the extension apiserver)
        record["extra_bin_dirs"] = [str(d) for d in extra_bin_dirs]
    atomic_write_json(paths.record, record)


def _ext_instances(info: SandboxInfo) -> dict[str, extension.Ports]:
    """Each instance's ports, by node (records from before there were two: the one on "node")."""
    ext = info.extension_apiserver or {}
    etcd_client = int(ext["etcd"].rsplit(":", 1)[1])
    secure = ext.get("instances") or {ext["node"]: ext["port"]}
    return {node: extension.Ports(port, etcd_client, ext["etcd_peer_port"]) for node, port in secure.items()}


def _start_extension_apiserver(client: _api.Client, info: SandboxInfo, paths: SandboxPaths) -> None:
    """Grant the extension apiserver what it reads, register it, then write its manifest:
    started before its RBAC exists, it would fail to read the front-proxy CA and crash-loop."""
    for collection, body in extension.rbac_objects():
        client.create(f"{body['kind']} {body['metadata']['name']}", collection, body)
    service = extension.service()
    client.create(f"Service {extension.SERVICE_NAMESPACE}/{extension.SERVICE_NAME}",
                  f"/api/v1/namespaces/{extension.SERVICE_NAMESPACE}/services", service)
    first = Path(info.nodes[0].root)
    serving_ca = node_path(first, extension.SERVING_CA_CERT).read_bytes()
    client.create(f"APIService {extension.APISERVICE}", "/apis/apiregistration.k8s.io/v1/apiservices",
                  extension.apiservice(info.extension_apiserver["port"], serving_ca))
    roots = {node.name: Path(node.root) for node in info.nodes}
    for node, ports in _ext_instances(info).items():
        _write_manifest(roots[node], extension.manifest(ports))


def extension_apiserver_available(client: _api.Client) -> bool:
    """The APIService's Available condition: the aggregator reached it with its serving CA
    and its front-proxy client certificate (as system:masters, which it allows without asking
    the kube-apiserver; a user's request also needs its kubeconfig to work)."""
    body = client.call(f"reading APIService {extension.APISERVICE}", "GET",
                       f"/apis/apiregistration.k8s.io/v1/apiservices/{extension.APISERVICE}", missing_ok=True)
    return body is not None and extension.available(body)


def _flunders_listed(kubeconfig_path: Path) -> bool:
    """A request through the aggregator as the sandbox's admin user (group
    kubeadm:cluster-admins, so the extension apiserver asks the kube-apiserver with a
    SubjectAccessReview through its kubeconfig) answers 200."""
    with _api.Client(kubeconfig_path, timeout=5) as client:
        try:
            body = client.call("listing flunders through the aggregator", "GET", extension.flunders_path("default"))
        except SandboxError:
            return False
    return isinstance(body, dict) and body.get("kind") == "FlunderList"


def _start_sshd(paths: SandboxPaths) -> dict[str, Any]:
    """An sshd for the sandbox's node directories, from the cached install; what the spec needs to reach it."""
    server = sshd.start(paths.ssh)
    return {"host": sshd.LOOPBACK, "port": server.port, "user": server.user, "host_key": server.host_key,
            "key_file": str(server.client_key), "directory": str(paths.ssh)}


def _sshd_pid(paths: SandboxPaths) -> int | None:
    try:
        return int((paths.ssh / "sshd.pid").read_text())
    except (OSError, ValueError):
        return None


def _start_supervisor(paths: SandboxPaths) -> int:
    paths.logs.mkdir(parents=True, exist_ok=True)
    with open(paths.supervisor_log, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "reconciler.sandbox.supervisor", str(paths.directory)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `down` can signal the whole sandbox
        )
    _processes.append(process)
    return process.pid


def _read_state(paths: SandboxPaths) -> dict[str, Any]:
    try:
        return json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return {}


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


CRASH_LOOP = 3  # crashes before start-up gives up on a component


def _check_components(paths: SandboxPaths) -> None:
    """Fail, with the component's log, when a component crash-loops or its manifest is
    invalid. One early exit is tolerated: a client may give up before its apiserver is up."""
    for key, component in _read_state(paths).get("components", {}).items():
        crashes = component["restarts"] + (component["status"] == "crashed")
        if component["status"] == "invalid" or (component["status"] == "crashed" and crashes >= CRASH_LOOP):
            log = paths.component_log(component["node"], component["component"])
            detail = component.get("message") or f"exit code {component.get('last_exit_code')}"
            raise SandboxError(f"sandbox {paths.name!r}: {key} {component['status']} ({detail}); "
                               f"last lines of {log}:\n{_log_tail(log)}")
    if not _supervisor_alive(paths):
        raise SandboxError(f"sandbox {paths.name!r}: the supervisor exited; see {paths.supervisor_log}:\n"
                           f"{_log_tail(paths.supervisor_log)}")


def _wait_for(what: str, check: Callable[[], bool], paths: SandboxPaths, deadline: float) -> None:
    """Poll ``check`` until it holds. An apiserver that does not answer one poll (a busy
    2-core machine) is tried again until the deadline, whose error then names it."""
    unreachable: ClusterUnreachableError | None = None
    while True:
        _check_components(paths)
        try:
            if check():
                return
            unreachable = None
        except ClusterUnreachableError as exc:
            unreachable = exc
        if time.monotonic() > deadline:
            last = f" (last: {unreachable.message})" if unreachable is not None else ""
            raise SandboxError(f"sandbox {paths.name!r}: timed out waiting for {what}{last}",
                               hint=f"component logs are under {paths.logs}")
        time.sleep(0.2)


def _wait_for_etcd(info: SandboxInfo, paths: SandboxPaths, deadline: float) -> None:
    """Until every control plane's etcd member answers /health true (which needs a leader,
    so a quorum) and lists all of them as members. Each is asked with its own node's
    healthcheck-client certificate."""
    control_planes = [node for node in info.nodes if node.role == "control-plane"]
    for node, url in zip(control_planes, info.etcd):
        client = _api.EtcdClient(url, Path(node.root))
        _wait_for(f"etcd member {node.name} ({url}) /health", client.healthy, paths, deadline)
    names = sorted(node.name for node in control_planes)
    client = _api.EtcdClient(info.etcd[0], Path(control_planes[0].root))
    _wait_for(f"etcd to list the members {', '.join(names)}", lambda: client.member_names() == names,
              paths, deadline)


def up(
    name: str = "sandbox", *, control_planes: int = 1, workers: int = 3,
    key: KeySpec | None = None, progress: Callable[[str], None] = lambda message: None, ssh: bool = False,
    admin: str | None = None, lease_handover: str = "fast", workloads: int = 0,
    extension_apiserver: bool = False, loopback_san: bool = True,
) -> SandboxInfo:
    """Start a sandbox and return when it is ready: every etcd member healthy and listing
    all of them, every apiserver's /readyz ok, every
    node Ready, `kube-root-ca.crt` published in `default` and, with workers, kubeadm's
    add-ons and ``workloads`` sample namespaces rolled out. With ``ssh``, an sshd on
    127.0.0.1 serves the node directories and the spec reaches every node over SSH. With
    ``admin``, the sandbox is registered in the running sandbox of that name, its
    management cluster, and its spec reaches it in admin mode. With ``extension_apiserver``,
    k8s.io/sample-apiserver runs as an aggregated apiserver (APIService
    v1alpha1.wardle.example.com) with an etcd of its own, and `up` waits until the APIService
    is Available and a request through the aggregator answers. Without ``loopback_san``, the
    apiservers' certificates leave out 127.0.0.1 and every kubeconfig carries
    ``tls-server-name: kubernetes`` (:data:`kubeadm.APISERVER_SERVER_NAME`)."""
    if control_planes < 1:
        raise SandboxError("a sandbox needs at least one control plane (--control-planes >= 1)")
    if workers < 0:
        raise SandboxError("--workers cannot be negative")
    if workloads < 0:
        raise SandboxError("--workloads cannot be negative")
    if not loopback_san and extension_apiserver:
        raise SandboxError("--no-loopback-san and --extension-apiserver cannot be combined: the extension "
                           "apiserver's kubeconfig names the apiserver by 127.0.0.1")
    if lease_handover not in LEASE_HANDOVERS:
        raise SandboxError(f"--lease-handover must be one of {', '.join(LEASE_HANDOVERS)}, not {lease_handover!r}")
    paths = SandboxPaths.named(name)
    bin_dir = require_binaries()
    extra_bin_dirs = (require_extension_apiserver().parent,) if extension_apiserver else ()
    balancer = haproxy.require_install() if control_planes > 1 else None
    if balancer:
        extra_bin_dirs += (balancer.bin_dir,)
    if ssh:
        sshd.require_install()  # before anything is made: the error names hack/install-sshd.sh
    management = _admin.management_of(admin, name) if admin is not None else None
    paths.directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        paths.directory.mkdir()  # atomic: of two concurrent `up`s with one name, one wins
    except FileExistsError:
        raise SandboxError(
            f"sandbox {name!r} already exists at {paths.directory}",
            hint=f"`careconcile sandbox down --name {name}` removes it",
        ) from None
    started = time.monotonic()
    timings: dict[str, float] = {}
    progress(f"laying out {control_planes} control-plane and {workers} worker node directories")
    try:
        ssh_info = None
        if ssh:
            ssh_info = _start_sshd(paths)
            progress(f"sshd serves the node directories on {ssh_info['host']}:{ssh_info['port']}")
        info = _lay_out(paths, name=name, control_planes=control_planes, workers=workers,
                        key=key or KeySpec(), bin_dir=bin_dir, ssh=ssh_info, admin=management,
                        lease_handover=lease_handover, workloads=workloads,
                        extension_apiserver=extension_apiserver, extra_bin_dirs=extra_bin_dirs,
                        balancer=balancer, loopback_san=loopback_san)
    except BaseException:
        _stop(paths)  # the sshd, if it started
        _ports.release(paths.directory)
        shutil.rmtree(paths.directory, ignore_errors=True)  # nothing else started yet, nothing to keep
        raise
    timings["layout"] = time.monotonic() - started
    progress("starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler"
             + (" and kwok" if workers else "") + (", and the extension apiserver's etcd" if extension_apiserver else ""))
    _start_supervisor(paths)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        # The apiservers retry etcd while it forms; waiting for quorum first names etcd,
        # and its log, when it is etcd that does not come up.
        _wait_for_etcd(info, paths, deadline)
        timings["etcd_ready"] = time.monotonic() - started
        ca_path = node_path(Path(info.nodes[0].root), kubeadm.CLUSTER_CA_CERT)
        for server in info.apiservers:
            _wait_for(f"{server}/readyz", lambda s=server: _api.readyz(s, ca_path, server_name=info.tls_server_name),
                      paths, deadline)
        if info.load_balancer:
            _wait_for(f"the load balancer's {info.load_balancer}/readyz",
                      lambda: _api.readyz(info.load_balancer, ca_path, server_name=info.tls_server_name),
                      paths, deadline)
        timings["apiservers_ready"] = time.monotonic() - started
        progress("apiservers ready; creating kubeadm's bootstrap objects and the worker nodes")
        super_admin = node_path(Path(info.nodes[0].root), f"{kubeadm.KUBERNETES_DIR}/super-admin.conf")
        with _api.Client(super_admin) as client:
            _api.bootstrap_kubeadm_objects(client, server=info.apiservers[0],
                                           ca_pem=ca_path.read_bytes())
            if extension_apiserver:
                progress(f"registering APIService {extension.APISERVICE} and starting the extension apiserver")
                _start_extension_apiserver(client, info, paths)
            worker_names = [node.name for node in info.nodes if node.role == "worker"]
            _api.create_kwok_nodes(client, worker_names)
            _wait_for(f"{workers} Ready nodes", lambda: _api.ready_nodes(client) >= set(worker_names),
                      paths, deadline)
            timings["nodes_ready"] = time.monotonic() - started
            ca_text = ca_path.read_text()
            _wait_for("kube-root-ca.crt in namespace default",
                      lambda: _api.root_ca_configmap(client, "default") == ca_text, paths, deadline)
            progress("creating kubeadm's add-ons" + (f" and {workloads} sample namespaces" if workloads else ""))
            _workloads.create(client, workloads)
            if workers:  # without a node, no pod of theirs can run
                for workload in _workloads.workloads(workloads):
                    _wait_for(f"{workload.kind} {workload.namespace}/{workload.name} rolled out",
                              lambda w=workload: _workloads.rolled_out(client, w), paths, deadline)
                timings["workloads_ready"] = time.monotonic() - started
            if extension_apiserver:
                _wait_for(f"APIService {extension.APISERVICE} Available",
                          lambda: extension_apiserver_available(client), paths, deadline)
                _wait_for("a request through the aggregator (GET flunders in default)",
                          lambda: _flunders_listed(paths.kubeconfig), paths, deadline)
                timings["extension_apiserver_ready"] = time.monotonic() - started
        if management is not None:
            progress(f"registering it in sandbox {management['name']!r}, namespace {management['namespace']}")
            _admin.register(info, paths)
            timings["registered"] = time.monotonic() - started
    except BaseException as exc:
        _stop(paths)
        if isinstance(exc, CareconcileError) and not exc.hint:
            exc.hint = (f"its processes are stopped and {paths.directory} is kept for its logs; "
                        f"`careconcile sandbox down --name {name}` removes it")
        raise
    info.startup_seconds = round(time.monotonic() - started, 2)
    info.timings = {k: round(v, 2) for k, v in timings.items()}
    _save_record(paths, info, bin_dir=bin_dir, extra_bin_dirs=extra_bin_dirs)
    return info


# --- inspecting ---------------------------------------------------------------------

def _supervisor_pid(paths: SandboxPaths) -> int | None:
    try:
        return int(paths.supervisor_pid.read_text())
    except (OSError, ValueError):
        return None


def _spawned_supervisor(paths: SandboxPaths) -> subprocess.Popen | None:
    """The supervisor this process started for ``paths``, which may not have written its pid file yet."""
    return next((p for p in _processes if Path(p.args[-1]) == paths.directory), None)


def _supervisor_alive(paths: SandboxPaths) -> bool:
    pid = _supervisor_pid(paths)
    if pid is None:
        spawned = _spawned_supervisor(paths)
        return spawned is not None and spawned.poll() is None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # Both checks guard against a stale pid file whose pid now belongs to another process.
    return process_alive(pid) and b"reconciler.sandbox.supervisor" in cmdline and _runs_from(pid, paths.directory)


def list_sandboxes() -> list[SandboxPaths]:
    root = sandboxes_root()
    if not root.is_dir():
        return []
    return [SandboxPaths(d) for d in sorted(root.iterdir()) if (d / "sandbox.json").is_file()]


def status(paths: SandboxPaths) -> dict[str, Any]:
    """Health of one sandbox: supervisor, each component (crashes and restarts included),
    each apiserver's /readyz and the Ready nodes."""
    if not paths.record.is_file():
        raise SandboxNotFoundError(f"no sandbox named {paths.name!r} under {paths.directory.parent}")
    info = SandboxInfo.load(paths)
    supervisor = _supervisor_alive(paths)
    state = _read_state(paths)
    components = state.get("components", {}) if supervisor else {}
    problems: list[str] = []
    if not supervisor:
        problems.append("supervisor not running (sandbox stopped or crashed)")
    for key, component in components.items():
        alive = component.get("pid") is not None and process_alive(component["pid"])
        if component["status"] != "running" or not alive:
            problems.append(f"{key} {component['status']}"
                            + (f" (last exit code {component['last_exit_code']})"
                               if component.get("last_exit_code") is not None else ""))
        elif component.get("message"):
            problems.append(f"{key} runs its previous manifest: {component['message']}")
    ca_path = node_path(Path(info.nodes[0].root), kubeadm.CLUSTER_CA_CERT)
    apiservers = {server: supervisor and _api.readyz(server, ca_path, timeout=3, server_name=info.tls_server_name)
                  for server in info.apiservers}
    problems += [f"{server} not ready" for server, ok in apiservers.items() if not ok]
    ssh_running = None
    if info.ssh is not None:
        pid = _sshd_pid(paths)
        ssh_running = pid is not None and sshd.running(pid, paths.ssh)
        if not ssh_running:
            problems.append("sshd not running (the spec reaches the nodes over SSH)")
    ready_nodes: int | None = None
    extension_available: bool | None = None
    kubeconfig = Path(info.kubeconfig)
    if any(apiservers.values()):
        try:
            # In admin mode a rotation leaves the sandbox's own kubeconfig behind (the Secret
            # <name>-kubeconfig is the one rotated); the control plane's admin.conf follows.
            kubeconfig = Path(info.kubeconfig) if info.admin is None else \
                node_path(Path(info.nodes[0].root), f"{kubeadm.KUBERNETES_DIR}/admin.conf")
            with _api.Client(kubeconfig, timeout=5) as client:
                workers = {node.name for node in info.nodes if node.role == "worker"}
                ready_nodes = len(_api.ready_nodes(client) & workers)
        except (SandboxError, ClusterUnreachableError) as exc:
            problems.append(str(exc))
        if ready_nodes is not None and ready_nodes < info.workers:
            problems.append(f"{info.workers - ready_nodes} of {info.workers} nodes not Ready")
        if info.extension_apiserver is not None:
            try:
                with _api.Client(kubeconfig, timeout=5) as client:
                    extension_available = extension_apiserver_available(client)
            except (SandboxError, ClusterUnreachableError) as exc:
                problems.append(str(exc))
            else:
                if not extension_available:
                    problems.append(f"APIService {extension.APISERVICE} not Available")
    return {
        "name": info.name,
        "healthy": not problems,
        "problems": problems,
        "supervisor_running": supervisor,
        "apiservers": apiservers,
        "ready_nodes": ready_nodes,
        "workers": info.workers,
        "control_planes": info.control_planes,
        "kubeconfig": info.kubeconfig,
        "ssh": None if info.ssh is None else {"port": info.ssh["port"], "running": ssh_running},
        "extension_apiserver": None if info.extension_apiserver is None else {
            "apiservice": info.extension_apiserver["apiservice"], "available": extension_available},
        "components": {
            key: {k: c.get(k) for k in ("status", "pid", "restarts", "last_exit_code", "last_restart_reason",
                                         "started_at", "message")}
            for key, c in components.items()
        },
    }


# --- stopping -----------------------------------------------------------------------

def _component_pids(paths: SandboxPaths) -> list[int]:
    state = _read_state(paths)
    return [c["pid"] for c in state.get("components", {}).values() if c.get("pid")]


def _reap(pid: int) -> None:
    for process in list(_processes):
        if process.pid == pid:
            process.poll()
            if process.returncode is not None:
                _processes.remove(process)


def _stop(paths: SandboxPaths) -> list[int]:
    """Stop the supervisor and with it every component; returns pids that would not die."""
    pid = _supervisor_pid(paths)
    if pid is None and (spawned := _spawned_supervisor(paths)) is not None:
        pid = spawned.pid  # started but never wrote its pid file
    candidates = _component_pids(paths)
    # The cmdline check guards against a stale pid file whose pid now belongs to another process.
    if pid is not None and process_alive(pid) and _runs_from(pid, paths.directory):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            _reap(pid)
            if not process_alive(pid):
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)  # the whole process group: supervisor and components
            except ProcessLookupError:
                pass
    if pid is not None:
        candidates.append(pid)
    # Components die with the supervisor (PR_SET_PDEATHSIG); anything left that still runs
    # from this sandbox's directory is killed here.
    leftovers = []
    for candidate in set(candidates):
        if process_alive(candidate) and _runs_from(candidate, paths.directory):
            try:
                os.kill(candidate, signal.SIGKILL)
            except ProcessLookupError:
                continue
            leftovers.append(candidate)
    deadline = time.monotonic() + 10
    while leftovers and time.monotonic() < deadline:
        for candidate in leftovers:
            _reap(candidate)
        leftovers = [c for c in leftovers if process_alive(c)]
        time.sleep(0.1)
    if pid is not None:
        _reap(pid)
    ssh_pid = _sshd_pid(paths)
    if ssh_pid is not None:
        sshd.stop(ssh_pid, paths.ssh)
        if sshd.running(ssh_pid, paths.ssh):
            leftovers.append(ssh_pid)
    return leftovers


def _runs_from(pid: int, directory: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return str(directory).encode() in cmdline or cwd.startswith(str(directory))


def down(paths: SandboxPaths, *, keep: bool = False) -> None:
    """Stop every process of the sandbox, then remove its directory unless ``keep``."""
    if not paths.directory.is_dir():
        raise SandboxNotFoundError(f"no sandbox named {paths.name!r} under {paths.directory.parent}")
    leftovers = _stop(paths)
    if leftovers:
        raise SandboxError(f"sandbox {paths.name!r}: processes {leftovers} did not stop; "
                           f"the directory {paths.directory} was kept")
    _ports.release(paths.directory)  # its processes are gone; the sshd released its own
    if not keep:
        shutil.rmtree(paths.directory)
