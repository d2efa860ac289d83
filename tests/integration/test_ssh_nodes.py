"""The ssh node transport against a real OpenSSH server (Debian's sshd on 127.0.0.1). A full
rotation over SSH is in test_rotation.py."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from reconciler.core.spec import NodeSpec
from reconciler.errors import NodeUnreachableError
from reconciler.shell.nodes import LocalNodeFiles, node_files, open_nodes
from reconciler.shell.sftp_pipeline import Pipeline
from reconciler.shell.ssh import READ_CHUNK, REQUESTS, ROUND_TRIPS

from .rotation import ROOT, careconcile
from .sshd import UNPRIVILEGED, closed_port, other_host_key, running_sshd, ssh_access

pytestmark = pytest.mark.integration

CA_CERT = "/etc/kubernetes/pki/ca.crt"
CA_KEY = "/etc/kubernetes/pki/ca.key"


@pytest.fixture(scope="module")
def server():
    with running_sshd(unprivileged=os.geteuid() == 0) as started:
        yield started


def _node(name: str, access: dict) -> NodeSpec:
    return NodeSpec.model_validate({"name": name, "role": "worker", "access": {"ssh": access}})


def _files(server, root, name="n1", **overrides):
    return node_files(_node(name, ssh_access(server, root, **overrides)))


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: what "nothing changed" compares."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _node_root(tmp_path: Path) -> Path:
    root = tmp_path / "node"
    (root / "etc/kubernetes/pki").mkdir(parents=True)
    (root / "etc/kubernetes/pki/ca.crt").write_bytes(b"old certificate\n")
    return root


def test_read_write_mode_remove_round_trip(server, tmp_path):
    root = _node_root(tmp_path)
    files = _files(server, root)
    try:
        files.check()
        assert files.read("/etc/kubernetes/pki/missing.crt") is None
        assert files.mode("/etc/kubernetes/pki/missing.crt") is None
        assert files.read(CA_CERT) == b"old certificate\n"

        # a new file in directories that do not exist yet, as stage-signer writes one
        files.write("/etc/kubernetes/pki/careconcile/clusterCA.key", b"key bytes", 0o600)
        local = root / "etc/kubernetes/pki/careconcile/clusterCA.key"
        assert local.read_bytes() == b"key bytes"
        assert local.stat().st_mode & 0o777 == 0o600
        assert files.mode("/etc/kubernetes/pki/careconcile/clusterCA.key") == 0o600
        assert files.read("/etc/kubernetes/pki/careconcile/clusterCA.key") == b"key bytes"

        files.write(CA_CERT, b"new certificate\n" * 5000, 0o644)  # larger than one SFTP request
        assert (root / CA_CERT.lstrip("/")).read_bytes() == b"new certificate\n" * 5000

        files.remove("/etc/kubernetes/pki/careconcile/clusterCA.key")
        files.remove("/etc/kubernetes/pki/careconcile/clusterCA.key")  # gone already: fine
        assert not local.exists()
        (root / "etc/kubernetes/pki/careconcile/other").write_text("not careconcile's")
        files.remove_directory("/etc/kubernetes/pki/careconcile")  # not empty: stays
        assert (root / "etc/kubernetes/pki/careconcile/other").exists()
        (root / "etc/kubernetes/pki/careconcile/other").unlink()
        files.remove_directory("/etc/kubernetes/pki/careconcile")
        assert not (root / "etc/kubernetes/pki/careconcile").exists()
        files.remove_directory("/etc/kubernetes/pki/careconcile")  # gone already: fine
        assert sorted(p.name for p in (root / "etc/kubernetes/pki").iterdir()) == ["ca.crt"]
    finally:
        files.close()


def test_a_batch_reads_the_files_the_last_one_read_together_in_three_round_trips(server, tmp_path):
    """Phase checks observe the same files of every node each second: from a node's second
    observation on, its files are read ahead together (pipelined), as they are when the
    batch starts; a file too large for one read, and a file written in the batch, are
    read on their own. The same with the root "/" (no lstat: the node follows links)."""
    root = _node_root(tmp_path)
    small = [f"/etc/kubernetes/pki/file-{index}.crt" for index in range(12)]
    for index, path in enumerate(small):
        (root / path.lstrip("/")).write_bytes(b"certificate %d\n" % index * 50)
    large = "/etc/kubernetes/admin.conf"
    (root / large.lstrip("/")).write_bytes(b"k" * (READ_CHUNK + 1))
    asked = [*small, large, "/etc/kubernetes/pki/missing.crt", CA_CERT]

    def on_disk() -> list[bytes | None]:
        return [(root / path.lstrip("/")).read_bytes() if (root / path.lstrip("/")).exists() else None
                for path in asked]

    for files, prefix in ((_files(server, root), ""), (_files(server, "/", name="n2"), str(root))):
        def observe() -> list[bytes | None]:
            with files.batch():
                return [files.read(prefix + path) for path in asked]

        try:
            files.check()
            assert files.read(prefix + CA_CERT) == b"old certificate\n"  # the root, resolved once a connection
            before = REQUESTS.snapshot()
            assert files.read(prefix + small[2]) == b"certificate 2\n" * 50
            assert (REQUESTS.snapshot() - before)[ROUND_TRIPS] == (3 if prefix == "" else 2)  # not 6 as before
            before = REQUESTS.snapshot()
            assert files._run("read", lambda sftp: files._read_one(sftp, prefix + large)) == b"k" * (READ_CHUNK + 1)
            alone = (REQUESTS.snapshot() - before)[ROUND_TRIPS]  # the large file, the one-by-one way
            assert observe() == on_disk()  # learns what the node's observation reads
            (root / small[0].lstrip("/")).write_bytes(b"changed\n")
            before = REQUESTS.snapshot()
            assert observe() == on_disk()
            used = REQUESTS.snapshot() - before
            assert used[ROUND_TRIPS] == (3 if prefix == "" else 2) + alone, used
            assert used["open"] == len(asked) + 1 - (prefix == "")  # the missing one: lstat says so (root /: open)
            with files.batch():
                assert files.read(prefix + small[1]) == b"certificate 1\n" * 50
                files.write(prefix + small[1], b"rewritten\n", 0o644)
                assert files.read(prefix + small[1]) == b"rewritten\n"  # not the bytes read ahead
        finally:
            files.close()
        (root / small[1].lstrip("/")).write_bytes(b"certificate 1\n" * 50)


def test_a_nodes_first_batch_reads_the_files_it_expects_together(server, tmp_path):
    """A node's first observation has no earlier batch to learn from: the files the caller
    expects (observe passes the layout's bundles and leaves) are read ahead together, so a
    fresh connection reads 6 files in 3 round trips, not 3 each, and finds a file in a
    directory that is not there (the signer's, before a rotation stages it) missing in the
    same 3, not in 5 of its own."""
    root = _node_root(tmp_path)
    unstaged = "/etc/kubernetes/pki/careconcile/clusterCA.crt"
    expected = [f"/etc/kubernetes/pki/file-{index}.crt" for index in range(5)] + [CA_CERT, unstaged]
    for path in expected[:5]:
        (root / path.lstrip("/")).write_bytes(b"certificate\n")
    files = _files(server, root)
    try:
        files.check()
        before = REQUESTS.snapshot()
        with files.batch(expected):
            assert [files.read(path) for path in expected] == [b"certificate\n"] * 5 + [b"old certificate\n", None]
        assert (REQUESTS.snapshot() - before)[ROUND_TRIPS] == 3
        before = REQUESTS.snapshot()
        files.check()  # once per connection
        assert (REQUESTS.snapshot() - before)[ROUND_TRIPS] == 0
    finally:
        files.close()


def test_write_gives_mode_and_owner_before_any_byte_in_three_round_trips_and_leaves_no_temp_file(
        server, tmp_path, monkeypatch):
    """The temp file is created with the mode (a umask can only narrow it); its exact mode
    and the old file's owner go out on its handle before the first byte, in the same wave
    as the bytes, the fsync and the close. sftp-server carries out the requests on one
    handle in the order sent (SFTP requires it), so no byte is in the file before them.
    The rename waits for all of their answers. The create goes out with the location's
    requests once the connection knows the directory to be inside the root; before that
    (a first write there), it waits for their answers."""
    root = _node_root(tmp_path)
    key = root / CA_KEY.lstrip("/")
    key.write_bytes(b"old key")
    key.chmod(0o644)
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        owner = (1234, 2345)  # someone else's file: the rewrite keeps its owner
        os.chown(key, *owner)
    sent = []  # what went out on the temp file's handle, in order
    fsetstat, write, fsync, close = Pipeline.fsetstat, Pipeline.write, Pipeline.fsync, Pipeline.close

    def spy(name, method):
        def sending(pipe, handle, *args):
            if name == "fsetstat":
                attributes = args[0]
                sent.append(("mode", attributes.st_mode) if attributes.st_mode is not None
                            else ("owner", (attributes.st_uid, attributes.st_gid)))
            else:
                sent.append((name, None))
            return method(pipe, handle, *args)
        return sending

    for name, method in (("fsetstat", fsetstat), ("write", write), ("fsync", fsync), ("close", close)):
        monkeypatch.setattr(Pipeline, name, spy(name, method))
    files = _files(server, root)
    try:
        files.check()
        before = REQUESTS.snapshot()
        files.write(CA_KEY, b"newer key", 0o600)
        assert (REQUESTS.snapshot() - before)[ROUND_TRIPS] == 4  # locate, create, the wave, rename
        sent.clear()
        before = REQUESTS.snapshot()
        files.write(CA_KEY, b"new key", 0o600)
        assert (REQUESTS.snapshot() - before)[ROUND_TRIPS] == 3  # locate and create, the wave, rename
    finally:
        files.close()
    assert sent == [("mode", 0o600), ("owner", owner), ("write", None), ("fsync", None), ("close", None)]
    assert key.read_bytes() == b"new key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (key.stat().st_uid, key.stat().st_gid) == owner
    assert sorted(p.name for p in key.parent.iterdir()) == ["ca.crt", "ca.key"]


def test_an_owner_the_node_refuses_mid_write_removes_the_temp_file_and_renames_nothing(server):
    """The owner goes out with the bytes: when the node refuses it (an unprivileged user
    rewriting root's file in a directory it may write), the bytes already sent stay in the
    temp file, which is removed; the file is untouched and the connection keeps working."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to give the file an owner the node's SSH user cannot give away")
    scratch = Path(tempfile.mkdtemp(prefix="careconcile-ssh-owner-"))
    try:
        scratch.chmod(0o755)
        root = _node_root(scratch)
        pki_dir = root / "etc/kubernetes/pki"
        pki_dir.chmod(0o777)  # the unprivileged user may create files here, not chown them to root
        before = _tree(root)
        files = _files(server, root, name="owner-node", user=UNPRIVILEGED)
        try:
            with pytest.raises(NodeUnreachableError, match=f"node owner-node .*cannot write {CA_CERT}"):
                files.write(CA_CERT, b"new certificate\n", 0o644)
            assert files.read(CA_CERT) == b"old certificate\n"  # the same connection still answers
        finally:
            files.close()
        assert _tree(root) == before
        assert sorted(p.name for p in pki_dir.iterdir()) == ["ca.crt"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize("transport", ["local", "ssh"])
def test_keep_mode_keeps_an_existing_files_mode_and_a_key_still_gets_at_most_0600(server, tmp_path, transport):
    """What update-bundle and a kubeconfig rewrite ask: the file's own mode (0640 here), known
    from the write's own look at the file, without a call of mode() first; a new file gets
    the mode given; content with a private key never more than 0600."""
    root = _node_root(tmp_path)
    files = LocalNodeFiles("n1", str(root)) if transport == "local" else _files(server, root)
    bundle = root / CA_CERT.lstrip("/")
    bundle.chmod(0o640)
    try:
        files.write(CA_CERT, b"new bundle\n", 0o644, keep_mode=True)
        assert bundle.read_bytes() == b"new bundle\n" and bundle.stat().st_mode & 0o777 == 0o640
        files.write("/etc/kubernetes/new.conf", b"kubeconfig\n", 0o600, keep_mode=True)
        assert (root / "etc/kubernetes/new.conf").stat().st_mode & 0o777 == 0o600
        bundle.chmod(0o644)
        files.write(CA_CERT, b"-----BEGIN PRIVATE KEY-----\n", 0o644, keep_mode=True)
        assert bundle.stat().st_mode & 0o777 == 0o600
    finally:
        files.close()


def test_a_refused_connection_names_the_node_and_changes_nothing(tmp_path, server):
    root = _node_root(tmp_path)
    before = _tree(root)
    port = closed_port()
    files = _files(server, root, name="refusing-node", port=port)
    with pytest.raises(NodeUnreachableError) as error:
        files.write(CA_CERT, b"new", 0o644)
    message = str(error.value)
    assert "node refusing-node" in message and f"127.0.0.1:{port}" in message
    assert "connection refused" in message
    assert isinstance(error.value.__cause__, OSError)
    assert _tree(root) == before

    # the same through the command line: exit 1, the node named, before any API call
    spec = tmp_path / "spec" / "spec.yaml"
    (spec.parent / "keys").mkdir(parents=True)
    shutil.copy(server.client_key, spec.parent / "keys" / "client")
    spec.write_text(f"""\
apiVersion: careconcile.dev/v1alpha1
kind: CASpec
metadata: {{name: refused}}
spec:
  clusters:
    - name: refused
      kubeconfig: no-such-kubeconfig
      nodes:
        - name: refusing-node
          role: control-plane
          access:
            ssh: {{host: 127.0.0.1, port: {port}, user: {server.user}, keyFile: keys/client, hostKey: "{server.host_key}",
                  root: {root}}}
""")
    result = careconcile("plan", str(spec), workspace=tmp_path / "workspace")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "node refusing-node" in result.stderr and f"127.0.0.1:{port}: connection refused" in result.stderr
    assert _tree(root) == before


def test_a_wrong_host_key_is_refused_naming_both_keys(server, tmp_path):
    root = _node_root(tmp_path)
    before = _tree(root)
    pinned = other_host_key(tmp_path)
    files = _files(server, root, name="impostor", hostKey=pinned)
    with pytest.raises(NodeUnreachableError) as error:
        files.write(CA_CERT, b"new", 0o644)
    message = str(error.value)
    offered = pki_fingerprint_of(server.host_key)
    expected = pki_fingerprint_of(pinned)
    assert "node impostor" in message and f"127.0.0.1:{server.port}" in message
    assert f"wrong host key: 127.0.0.1:{server.port} offered ssh-ed25519 {offered}" in message
    assert f"the spec's hostKey expects ssh-ed25519 {expected}" in message
    assert _tree(root) == before
    assert files.connections == 0


def test_known_hosts_file_hashed_entries_work_and_a_missing_entry_is_refused(server, tmp_path):
    root = _node_root(tmp_path)
    known = tmp_path / "known_hosts"
    known.write_text(server.known_hosts_line() + "\n")
    os.system(f"ssh-keygen -q -H -f {known} >/dev/null 2>&1")  # hash the names, as HashKnownHosts does
    assert "127.0.0.1" not in known.read_text()
    files = _files(server, root, hostKey=None, knownHostsFile=str(known))
    try:
        assert files.read(CA_CERT) == b"old certificate\n"
    finally:
        files.close()

    elsewhere = tmp_path / "known_hosts_elsewhere"
    elsewhere.write_text(server.known_hosts_line(host="node-elsewhere") + "\n")  # names another host; never contacted
    files = _files(server, root, name="stranger", hostKey=None, knownHostsFile=str(elsewhere))
    with pytest.raises(NodeUnreachableError, match=r"node stranger .*unknown host key: .*never trusts a host key "
                                                   r"on first use"):
        files.check()


def test_a_client_key_the_node_does_not_accept_is_reported(server, tmp_path):
    root = _node_root(tmp_path)
    before = _tree(root)
    stranger = tmp_path / "stranger_key"
    other_host_key(tmp_path)  # any key the server does not list in authorized_keys
    shutil.copy(tmp_path / "other_host_key", stranger)
    files = _files(server, root, name="picky-node", keyFile=str(stranger))
    with pytest.raises(NodeUnreachableError) as error:
        files.write(CA_CERT, b"new", 0o644)
    assert f"node picky-node (ssh {server.user}@127.0.0.1:{server.port}" in str(error.value)
    assert f"refused the key {stranger}" in str(error.value)
    assert _tree(root) == before


def pki_fingerprint_of(line: str) -> str:
    import base64
    import hashlib

    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def test_a_permission_error_names_the_node_and_the_path_and_leaves_nothing(server):
    # Root may write anywhere, so as root the node is reached as an unprivileged user
    # (SFTP only), whose writes into root's 0755 directories fail for real. As another
    # user, a 0555 directory does the same.
    unprivileged = os.geteuid() == 0
    scratch = Path(tempfile.mkdtemp(prefix="careconcile-ssh-perm-"))
    try:
        scratch.chmod(0o755)
        root = _node_root(scratch)
        key = root / CA_KEY.lstrip("/")
        key.write_bytes(b"root's key")
        key.chmod(0o600)
        pki_dir = root / "etc/kubernetes/pki"
        if not unprivileged:
            pki_dir.chmod(0o555)
        before = _tree(root)
        files = _files(server, root, name="locked-node", user=UNPRIVILEGED if unprivileged else None)
        try:
            files.check()
            with pytest.raises(NodeUnreachableError) as error:
                files.write(CA_CERT, b"new certificate", 0o644)
            message = str(error.value)
            assert "node locked-node" in message and f"127.0.0.1:{server.port}" in message
            assert f"cannot write {CA_CERT}: permission denied" in message
            assert isinstance(error.value.__cause__, PermissionError)
            if unprivileged:
                with pytest.raises(NodeUnreachableError, match=f"node locked-node .*cannot read {CA_KEY}: "
                                                                "permission denied"):
                    files.read(CA_KEY)
            files.check()  # the connection survives a refused write
        finally:
            files.close()
        pki_dir.chmod(0o755)
        assert _tree(root) == before
        assert sorted(p.name for p in pki_dir.iterdir()) == ["ca.crt", "ca.key"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_one_connection_per_node_reused_across_calls_and_threads(server, tmp_path):
    root = _node_root(tmp_path)
    logins = server.accepted_logins()
    files = _files(server, root)
    try:
        files.check()
        for index in range(10):
            files.write(f"/etc/kubernetes/file-{index}", str(index).encode(), 0o644)
            assert files.read(f"/etc/kubernetes/file-{index}") == str(index).encode()
        errors = []

        def work(worker: int) -> None:
            try:
                for index in range(10):
                    path = f"/etc/kubernetes/thread-{worker}-{index}"
                    files.write(path, path.encode(), 0o600)
                    assert files.read(path) == path.encode()
                    assert files.mode(path) == 0o600
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert files.connections == 1
        _wait_for_logins(server, logins + 1)
        assert server.accepted_logins() == logins + 1

        files.close()  # the next call connects again
        assert files.read("/etc/kubernetes/file-0") == b"0"
        assert files.connections == 2
    finally:
        files.close()

    # many nodes: one connection each, checked concurrently, in the nodes' order
    logins = server.accepted_logins()
    nodes = [_node(f"node-{index}", ssh_access(server, root)) for index in range(5)]
    opened = open_nodes(nodes)
    try:
        assert list(opened) == [f"node-{index}" for index in range(5)]
        assert [files.connections for files in opened.values()] == [1] * 5
        _wait_for_logins(server, logins + 5)
    finally:
        for files in opened.values():
            files.close()


def test_run_executes_a_command_on_the_node_over_the_same_connection(server, tmp_path):
    root = _node_root(tmp_path)
    ran = root / "var/lib/kubelet/ran"
    ran.parent.mkdir(parents=True)
    logins = server.accepted_logins()
    files = _files(server, root)
    try:
        assert files.read(CA_CERT) == b"old certificate\n"
        # each argument arrives as it is: quoted for the node's login shell
        files.run(["sh", "-c", 'printf "%s|%s\\n" "$0" "$1" >> "$2"', "it's one argument", "$HOME; exit 9", str(ran)],
                  timeout=30)
        assert ran.read_text() == "it's one argument|$HOME; exit 9\n"
        files.run(["sh", "-c", f"date +%s >> {ran}"], timeout=30)
        assert len(ran.read_text().splitlines()) == 2
        assert files.connections == 1
        _wait_for_logins(server, logins + 1)
        assert server.accepted_logins() == logins + 1  # no second login for the commands
        assert files.read(CA_CERT) == b"old certificate\n"  # and the SFTP session goes on
    finally:
        files.close()


def test_a_failing_command_names_the_node_the_command_its_exit_status_and_stderr(server, tmp_path):
    root = _node_root(tmp_path)
    files = _files(server, root, name="failing-node")
    try:
        script = "for i in 1 2 3 4 5 6 7; do echo problem $i >&2; done; echo stdout-only-$((1+1)); exit 7"
        with pytest.raises(NodeUnreachableError) as error:
            files.run(["sh", "-c", script], timeout=30)
        message = str(error.value)
        assert message.startswith(f"node failing-node (ssh {server.user}@127.0.0.1:{server.port}, root {root}): "
                                  "`sh -c 'for i in")
        assert "failed with exit status 7" in message
        assert "problem 7" in message and "problem 3" in message and "problem 2" not in message
        assert "stdout-only-2" not in message
        with pytest.raises(NodeUnreachableError, match=r"node failing-node .*`systemctl-missing restart kubelet` "
                                                       r"failed with exit status 127"):
            files.run(["systemctl-missing", "restart", "kubelet"], timeout=30)
        started = time.monotonic()
        with pytest.raises(NodeUnreachableError, match=r"`sleep 30` did not finish within 1s"):
            files.run(["sleep", "30"], timeout=1)
        assert time.monotonic() - started < 10
        files.check()  # the connection survives a failed command
        assert files.connections == 1
    finally:
        files.close()
    if os.geteuid() == 0:  # an account that may use SFTP only runs no command: the restart fails
        sftp_only = _files(server, root, name="sftp-only-node", user=UNPRIVILEGED)
        try:
            with pytest.raises(NodeUnreachableError, match=r"node sftp-only-node .*failed with exit status 1"):
                sftp_only.run(["sh", "-c", f"touch {root}/ran"], timeout=30)
            assert not (root / "ran").exists()
        finally:
            sftp_only.close()


def _wait_for_logins(server, count: int) -> None:
    deadline = time.monotonic() + 5
    while server.accepted_logins() < count and time.monotonic() < deadline:
        time.sleep(0.05)


# A run of apply, in the CLI's own main (its SIGTERM handling is what is tested), that
# writes a big file over SFTP while it holds a stand-in lock.
_TERMINATED_WRITER = '''
import json, sys
from pathlib import Path

root, access, spec, work = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
sys.path.insert(0, root)
from reconciler.core.spec import NodeSpec
from reconciler.shell.nodes import node_files
from tests.standin_lock import apply_holding_the_lock

files = node_files(NodeSpec.model_validate({"name": "n1", "role": "worker", "access": {"ssh": access}}))


def make_plan(*args, **kwargs):
    files.write("/etc/kubernetes/pki/ca.crt", b"x" * (128 * 1024 * 1024), 0o644)  # long enough to be stopped


sys.exit(apply_holding_the_lock(work, spec, make_plan))
'''


@pytest.mark.timeout(120)
def test_sigterm_during_an_sftp_write_removes_the_temp_file_on_the_node_and_releases_the_lock(server, tmp_path):
    import json
    import signal
    import subprocess
    import sys

    root = _node_root(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text("apiVersion: careconcile.dev/v1alpha1\nkind: CASpec\nmetadata: {name: t}\nspec:\n  clusters:\n"
                    "    - {name: n1, kubeconfig: k, nodes: [{name: n1, role: worker, access: {local: {root: /}}}]}\n")
    process = subprocess.Popen([sys.executable, "-c", _TERMINATED_WRITER, str(ROOT),
                                json.dumps(ssh_access(server, root)), str(spec), str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pki_dir = root / "etc/kubernetes/pki"
    try:
        deadline = time.monotonic() + 60
        while not any(path.name.endswith(".tmp") and path.stat().st_size > 0 for path in pki_dir.iterdir()):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        assert (tmp_path / "lease").exists()
        process.send_signal(signal.SIGTERM)  # mid-write: the temp file holds part of the new content
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert stderr.strip().endswith("careconcile: terminated (SIGTERM)") and "Traceback" not in stderr, stderr
    assert sorted(path.name for path in pki_dir.iterdir()) == ["ca.crt"]  # the temp file is gone from the node
    assert (pki_dir / "ca.crt").read_bytes() == b"old certificate\n"
    assert not (tmp_path / "lease").exists()  # released
