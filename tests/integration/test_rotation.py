"""A full cluster-CA rotation on a real control plane, with a client polling the API throughout:
1 control plane with 3 workers reached over SSH, from a saved plan (the tests of that
rotation each look at one side of it). The rotation on several control planes, of all three
CAs, is test_ha.py's.

The way careconcile reaches the API is not the plain one either: the apiserver's certificate
leaves out 127.0.0.1 (`sandbox up --no-loopback-san`), so the kubeconfig names it by
tls-server-name, and careconcile's traffic goes through a real HTTP proxy (tinyproxy, with
Basic authentication) by the kubeconfig's proxy-url."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler.core import kubeconfig
from reconciler.shell.kube import KubeClient, KubeconfigClient, load_kubeconfig

from .rotation import (
    Poller, Rotated, assert_polled_without_failure, assert_rotated, careconcile, prepare_user_objects, record_ca,
    set_rotation, without_proxy,
)
from .sshd import require_sshd
from .tinyproxy import running_tinyproxy

pytestmark = pytest.mark.integration


# --- 1 control plane, 3 workers, over SSH, from a saved plan ------------------------------

def _set_kubelet_restart(spec: Path, commands: dict[str, list[str]]) -> None:
    """Give the spec's nodes these kubeletRestart commands (by node name)."""
    yaml = YAML()
    yaml.width = 4096
    document = yaml.load(spec.read_text())
    for node in document["spec"]["clusters"][0]["nodes"]:
        if node["name"] in commands:
            node["access"]["ssh"]["kubeletRestart"] = commands[node["name"]]
    with spec.open("w") as out:
        yaml.dump(document, out)


def _kubelet_restart_logs(info) -> dict[str, Path]:
    """Where each worker's stand-in kubelet restart command records that it ran."""
    return {node.name: Path(node.root) / "var/lib/kubelet/restarts" for node in info.nodes if node.role == "worker"}


def _apiserver_sans(info) -> list[str]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((Path(info.nodes[0].root) / "etc/kubernetes/pki/apiserver.crt").read_bytes())
    return [str(name.value) for name in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]


def _set_proxy_url(path: Path, servers: list[str], url: str) -> None:
    """Give the kubeconfig's clusters that reach ``servers`` this proxy-url."""
    document = kubeconfig.parse(path.read_text(), source=str(path))
    for entry in document["clusters"]:
        if entry["cluster"]["server"] in servers:
            entry["cluster"]["proxy-url"] = url
    path.write_text(kubeconfig.dump(document))


def _spec_repository(spec: Path, info, root: Path) -> tuple[Path, Path]:
    """A git repository holding the spec at specs/spec.yaml, every path in it relative to
    specs/ (the SSH key, the kubeconfig), cloned twice at two paths. The key and kubeconfig
    are no part of the repository: in each clone they are put where the spec says, as a CI
    job writes its secrets (the kubeconfig as a link to the sandbox's, which the rotation
    rewrites through it)."""
    origin = root / "origin"
    (origin / "specs").mkdir(parents=True)
    text = spec.read_text().replace(f"kubeconfig: {info.kubeconfig}\n", "kubeconfig: admin.kubeconfig\n")
    assert "kubeconfig: admin.kubeconfig\n" in text and "keyFile: ssh/client_key" in text
    (origin / "specs" / "spec.yaml").write_text(text)
    (origin / ".gitignore").write_text("specs/ssh/\nspecs/admin.kubeconfig\n")
    git = ["git", "-c", "user.name=careconcile tests", "-c", "user.email=tests@careconcile.invalid",
           "-c", "init.defaultBranch=main"]
    for argv in (["init", "-q", str(origin)], ["-C", str(origin), "add", "."],
                 ["-C", str(origin), "commit", "-q", "-m", "the spec"]):
        subprocess.run([*git, *argv], check=True, capture_output=True)
    clones = root / "clone-a", root / "elsewhere" / "clone-b"
    for clone in clones:
        subprocess.run([*git, "clone", "-q", str(origin), str(clone)], check=True, capture_output=True)
        (clone / "specs" / "ssh").mkdir(mode=0o700)
        key = clone / "specs" / "ssh" / "client_key"
        key.write_bytes((spec.parent / "ssh" / "client_key").read_bytes())
        key.chmod(0o600)
        (clone / "specs" / "admin.kubeconfig").symlink_to(info.kubeconfig)
    return clones


@pytest.fixture(scope="module")
def proxy():
    with running_tinyproxy() as running:
        yield running


@pytest.fixture(scope="module")
def over_ssh(start_sandbox, tmp_path_factory, proxy):
    """The sandbox's spec as `sandbox up --ssh` writes it, with a stand-in kubelet restart
    command on each worker, a plan saved with `plan --out` and that plan applied. The
    apiserver's certificate has no 127.0.0.1 and careconcile goes through ``proxy``."""
    require_sshd()
    info = start_sandbox("rot1", control_planes=1, workers=3, ssh=True, loopback_san=False)
    workspace = tmp_path_factory.mktemp("rot1-workspace")
    spec = Path(info.spec)
    text = spec.read_text()
    assert "local:" not in text and text.count("ssh:") == 4 and "keyFile: ssh/client_key" in text
    assert text.count("kubeletRestart: []") == 4  # kwok stands in for the kubelets: none to restart

    # Kubelets restarted by a command over SSH: each worker's "restart" records that it ran.
    # kwok serves the workers and renews their Leases, which is what the check after a
    # kubelet's restart waits for. The control-plane node is no Node here, so it keeps [].
    _set_kubelet_restart(spec, {name: ["sh", "-c", f"date +%s >> {path}"]
                                for name, path in _kubelet_restart_logs(info).items()})
    foreign, old, webhook_ca = prepare_user_objects(info)
    set_rotation(spec, 1)
    sans = _apiserver_sans(info)
    _set_proxy_url(Path(info.kubeconfig), info.apiservers, proxy.url)

    # The plan travels (issue 14): planned in one clone of a spec repository, applied from
    # another clone at another path, the first one gone by then.
    started = time.monotonic()
    clone_a, clone_b = _spec_repository(spec, info, tmp_path_factory.mktemp("rot1-spec-repository"))
    added = time.monotonic() - started
    plan_file = clone_a / "rotate.plan.json"
    planned = careconcile("plan", "specs/spec.yaml", "--out", plan_file.name, workspace=workspace, cwd=clone_a)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    connects = {"plan": len(proxy.connects())}
    shutil.copy(plan_file, clone_b / plan_file.name)
    shutil.rmtree(clone_a)
    # A plan whose embedded spec was edited is refused by name, before anything is reached.
    edited = json.loads((clone_b / plan_file.name).read_text())
    edited["spec_text"] = edited["spec_text"].replace("rotation: 1", "rotation: 2", 1)
    (clone_b / "edited.plan.json").write_text(json.dumps(edited))
    started = time.monotonic()
    ca_before, logs_before = record_ca(info).cert, sorted(workspace.rglob("*.log"))
    refused = careconcile("apply", "edited.plan.json", workspace=workspace, cwd=clone_b)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert ("edited.plan.json: the spec embedded in the plan (spec_text) does not match its digest" in refused.stderr
            and "the plan file was edited" in refused.stderr), refused.stderr
    assert record_ca(info).cert == ca_before and sorted(workspace.rglob("*.log")) == logs_before  # nothing changed
    assert len(proxy.connects()) == connects["plan"]  # not even a request through the proxy
    added += time.monotonic() - started
    print(f"\n{info.name}: the spec repository, its two clones and the refused edited plan took {added:.1f}s")

    started = time.monotonic()
    # The poller goes straight to the apiserver: what the proxy logs meanwhile is careconcile's.
    with Poller(Path(info.kubeconfig), set(info.apiservers), read=without_proxy(Path(info.kubeconfig))) as poller:
        result = careconcile("apply", plan_file.name, workspace=workspace, cwd=clone_b)
    connects["apply"] = len(proxy.connects()) - connects["plan"]
    print(f"\n{info.name}: rotation over SSH in {time.monotonic() - started:.1f}s; {poller.requests} requests "
          f"during it, {len(poller.failures)} failed, longest gap {poller.longest_gap():.2f}s; CONNECTs through "
          f"the proxy: {connects['plan']} for the plan, {connects['apply']} for the apply")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "Apply complete!" in result.stdout
    assert f"with relative paths resolved against {clone_b / 'specs'}." in result.stderr
    rotated = Rotated(info, workspace, poller, old, record_ca(info), foreign, webhook_ca)
    return rotated, planned, json.loads((clone_b / plan_file.name).read_text()), {"sans": sans, "connects": connects}


def test_a_rotation_over_ssh_fails_no_request_and_leaves_only_the_new_ca(over_ssh):
    rotated, _, _, _ = over_ssh
    assert_polled_without_failure(rotated.poller, servers=1)
    assert_rotated(rotated)
    # the state went to the Secret, and finalize left no key there and no file here
    assert not (rotated.workspace / rotated.info.name / "state" / "state.json").exists()
    with KubeconfigClient(Path(rotated.info.kubeconfig)) as client:
        state = client.get("/api/v1/namespaces/kube-system/secrets/careconcile-state")
    assert list(state["data"]) == ["clusterCA.json"]
    assert json.loads(base64.b64decode(state["data"]["clusterCA.json"]))["appliedRotation"] == 1


def test_a_phase_writes_files_on_several_nodes_at_once_each_node_in_plan_order(over_ssh):
    """Over SSH every write waits on round trips, so a run of update-bundle or reissue actions
    goes to several nodes at once; the actions of one node keep their plan order."""
    rotated, _, plan, _ = over_ssh
    [log] = (rotated.workspace / rotated.info.name / "log").glob("apply-*/apply.log")
    node_writes = [a["id"] for a in plan["clusters"][0]["actions"] if a["kind"] in ("update-bundle", "reissue")
                   and a["site"]["kind"] == "node-file"]
    in_flight: set[str] = set()
    most, started = 0, []
    for line in log.read_text().splitlines():
        words = line.split(" ", 3)
        if len(words) < 3 or words[2] not in node_writes:
            continue
        if words[1] == "start":
            in_flight.add(words[2])
            started.append(words[2])
            most = max(most, len(in_flight))
        elif words[1] == "done":
            in_flight.discard(words[2])
    assert sorted(started) == sorted(node_writes) and not in_flight  # each ran once, and ended
    assert most > 1, "no two node writes were ever under way together"

    def node(action_id: str) -> str:
        return action_id.split("/", 3)[3].split(":", 1)[0]
    for name in {node(action_id) for action_id in node_writes}:
        assert [a for a in started if node(a) == name] == [a for a in node_writes if node(a) == name], name


def test_kubelets_are_restarted_by_command_once_per_phase_that_changed_their_files(over_ssh):
    rotated, planned, plan, _ = over_ssh
    restarts = _kubelet_restart_logs(rotated.info)
    actions = plan["clusters"][0]["actions"]
    kubelet_restarts = sorted((a["phase"], a["target"]) for a in actions
                              if a["kind"] == "restart" and a["params"]["component"] == "kubelet")
    # each worker's kubelet.conf and ca.crt change in phases 2 and 4, its client certificate in 3
    assert kubelet_restarts == sorted((phase, f"{name}:kubelet") for phase in (2, 3, 4) for name in restarts)
    assert all(a["params"]["command"].startswith("sh -c 'date +%s >> ") for a in actions
               if a["kind"] == "restart" and a["params"]["component"] == "kubelet")
    for name in restarts:
        assert f"r restart {name}:kubelet" in planned.stdout
    # one restart of each worker's kubelet per phase that changed its files, each recorded on the node
    assert {name: len(path.read_text().splitlines()) for name, path in restarts.items()} == \
        {name: 3 for name in restarts}
    for node in rotated.info.nodes:
        marker = Path(node.root) / "var/lib/kubelet/careconcile-restarted-for"
        assert marker.is_file() == (node.name in restarts), node.name
        if node.name in restarts:
            assert json.loads(marker.read_text())["restartedFor"].startswith("sha256:")
    assert not (Path(rotated.info.nodes[0].root) / "var/lib/kubelet/restarts").exists()


def test_every_write_went_over_ssh_and_left_no_temp_file(over_ssh):
    rotated, _, _, _ = over_ssh
    # nothing half-written anywhere: no temp file of careconcile's is left on any node
    for node in rotated.info.nodes:
        leftovers = [str(path) for path in Path(node.root).rglob(".*.tmp")]
        assert leftovers == [], leftovers
    # every file careconcile wrote went over SSH: the sshd logged the logins of the runs
    log = Path(rotated.info.ssh["directory"]) / "sshd.log"
    assert "Accepted publickey for " in log.read_text()


def test_the_rotation_went_through_the_proxy_by_tls_server_name_and_kept_both(over_ssh, proxy, tmp_path):
    rotated, _, _, reach = over_ssh
    info = rotated.info
    apiserver = info.apiservers[0].removeprefix("https://")
    # careconcile alone talked to the proxy (the poller went straight), and only to the apiserver
    assert reach["connects"]["plan"] > 0 and reach["connects"]["apply"] > 0, reach["connects"]
    assert set(proxy.connects()) == {apiserver}
    # the apiserver's certificate was reissued with the same names: still no 127.0.0.1
    assert _apiserver_sans(info) == reach["sans"]
    assert "kubernetes" in reach["sans"] and "127.0.0.1" not in reach["sans"]
    # the kubeconfigs careconcile rewrote, and the one it wrote anew, keep tls-server-name and proxy-url
    workspace_kubeconfig = rotated.workspace / info.name / f"{info.name}-kubeconfig"
    for path in (Path(info.kubeconfig), workspace_kubeconfig):
        clusters = [entry["cluster"] for entry in kubeconfig.parse(path.read_text(), source=str(path))["clusters"]
                    if entry["cluster"]["server"] in info.apiservers]
        assert clusters and all(c["tls-server-name"] == "kubernetes" and c["proxy-url"] == proxy.url
                                for c in clusters), path
    # KUBECONFIG of three files, as kubectl merges it: the cluster, the user, the context
    document = kubeconfig.parse(Path(info.kubeconfig).read_text(), source=info.kubeconfig)
    context = next(c for c in document["contexts"] if c["name"] == f"kubernetes-admin@{info.name}")
    parts = {"cluster": {"clusters": [c for c in document["clusters"] if c["name"] == context["context"]["cluster"]]},
             "user": {"users": [u for u in document["users"] if u["name"] == context["context"]["user"]]},
             "context": {"contexts": [context], "current-context": context["name"]}}
    files = []
    for name, part in parts.items():
        files.append(tmp_path / f"{name}.kubeconfig")
        files[-1].write_text(kubeconfig.dump({"apiVersion": "v1", "kind": "Config", **part}))
    before = len(proxy.connects())
    target = load_kubeconfig(files)  # merged as KUBECONFIG=cluster:user:context is
    assert (target.tls_server_name, target.proxy_url) == ("kubernetes", proxy.url)
    with KubeClient(target) as client:
        assert client.get("/api")["kind"] == "APIVersions"
    assert len(proxy.connects()) == before + 1
