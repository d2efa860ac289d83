"""The spec's `access.ssh`: its fields, the host-key policy, and paths relative to the spec."""

import dataclasses
import textwrap
from pathlib import Path

import pytest

from reconciler.errors import SpecError
from reconciler.sandbox import _specfile
from reconciler.shell.nodes import node_files, open_nodes
from reconciler.shell.specfile import load_spec
from reconciler.shell.ssh import SSHNodeFiles

from .test_spec_model import sandbox_info

# A real ed25519 public key (from ssh-keygen), as `ssh-keyscan` prints it.
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILR+4lw2fJJCUPlp0KF2czsVDT2VGyQ5te1c2og0lXvO"

SPEC = """\
apiVersion: careconcile.dev/v1alpha1
kind: CASpec
metadata:
  name: ssh
spec:
  clusters:
    - name: one
      kubeconfig: kubeconfigs/one.yaml
      nodes:
        - name: cp
          role: control-plane
          access:
            ssh:
              host: cp.example
              user: root
              keyFile: keys/careconcile
{policy}
"""


def write(tmp_path: Path, policy: str, name: str = "specs/spec.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SPEC.format(policy=textwrap.indent(policy, " " * 14)) if policy else SPEC.format(policy=""))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as error:
        load_spec(path)
    return error.value.problems


def test_an_ssh_node_with_a_pinned_host_key_gets_the_defaults(tmp_path):
    loaded = load_spec(write(tmp_path, f"hostKey: {HOST_KEY} root@cp"))
    ssh = loaded.document.spec.clusters[0].nodes[0].access.ssh
    assert (ssh.host, ssh.port, ssh.user, ssh.root) == ("cp.example", 22, "root", "/")
    assert ssh.host_key == HOST_KEY  # the comment is not part of the key
    assert ssh.known_hosts_file is None
    assert loaded.document.spec.clusters[0].nodes[0].access.local is None


def test_neither_host_key_option_is_an_error_at_the_ssh_object(tmp_path):
    path = write(tmp_path, "")
    assert problems(path) == [
        f"{path}:14:15: spec.clusters[0].nodes[0].access.ssh: set hostKey (the node's public host key, as "
        "`ssh-keyscan -p PORT HOST` prints it) or knownHostsFile: careconcile never trusts a host key on first use",
    ]


def test_both_host_key_options_are_an_error(tmp_path):
    path = write(tmp_path, f"hostKey: {HOST_KEY}\nknownHostsFile: known_hosts")
    assert problems(path) == [
        f"{path}:14:15: spec.clusters[0].nodes[0].access.ssh: set either hostKey or knownHostsFile, not both",
    ]


@pytest.mark.parametrize("value, message", [
    ("ssh-rsa " + HOST_KEY.split()[1], "the key is a ssh-ed25519 key, not ssh-rsa"),
    ("ssh-ed25519 AAAA!!", "the key after the type is not valid base64"),
    ("AAAAC3NzaC1lZDI1NTE5", "must be a public key line such as 'ssh-ed25519 AAAA...'"),
])
def test_a_malformed_host_key_is_reported_at_its_value(tmp_path, value, message):
    path = write(tmp_path, f"hostKey: '{value}'")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:17:24: spec.clusters[0].nodes[0].access.ssh.hostKey: ")
    assert message in problem


def test_port_root_and_unknown_fields_are_checked(tmp_path):
    path = write(tmp_path, f"hostKey: {HOST_KEY}\nport: 70000\nroot: srv/node\npassword: hunter2")
    found = "\n".join(problems(path))
    assert "access.ssh.port: " in found
    assert "access.ssh.root: must be an absolute path" in found
    assert "access.ssh.password: unknown field" in found


def test_key_file_and_known_hosts_file_are_relative_to_the_spec_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    loaded = load_spec(write(tmp_path, "knownHostsFile: ~/.ssh/known_hosts\nport: 2222\nroot: /srv/cp"))
    monkeypatch.chdir("/")  # the spec's directory counts, not the working directory
    node = loaded.document.spec.clusters[0].nodes[0]
    files = node_files(node, loaded.path.parent)
    assert isinstance(files, SSHNodeFiles)
    assert files.key_file == tmp_path / "specs/keys/careconcile"
    assert files.known_hosts_file == tmp_path / "home/.ssh/known_hosts"
    assert files.describe() == "node cp (ssh root@cp.example:2222, root /srv/cp)"
    # nothing is connected until the first call
    opened = open_nodes([node], loaded.path.parent, check=False)
    assert opened["cp"].connections == 0


def test_an_absolute_key_file_stays(tmp_path):
    path = write(tmp_path, f"hostKey: {HOST_KEY}")
    path.write_text(path.read_text().replace("keyFile: keys/careconcile", "keyFile: /etc/careconcile/id_ed25519"))
    loaded = load_spec(path)
    files = node_files(loaded.document.spec.clusters[0].nodes[0], loaded.path.parent)
    assert files.key_file == Path("/etc/careconcile/id_ed25519")


def test_the_sandbox_spec_over_ssh_pins_the_host_key_and_names_the_key_relative_to_itself():
    info = dataclasses.replace(sandbox_info(workers=2), ssh={
        "host": "127.0.0.1", "port": 2222, "user": "root", "host_key": HOST_KEY,
        "key_file": "/x/ssh/client_key", "directory": "/x/ssh"})
    document = _specfile.document(info)
    _specfile.render(info)  # validates against the model
    accesses = [node["access"] for node in document["spec"]["clusters"][0]["nodes"]]
    # kwok stands in for the kubelets: no sandbox node has one to restart
    assert accesses[1] == {"ssh": {"host": "127.0.0.1", "port": 2222, "user": "root", "keyFile": "ssh/client_key",
                                   "hostKey": HOST_KEY, "root": "/x/nodes/s-worker-1", "kubeletRestart": []}}
    assert all("ssh" in access and "local" not in access for access in accesses)
