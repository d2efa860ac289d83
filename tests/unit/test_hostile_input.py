"""Hostile and malformed input: each fails fast with a message that names the file and the
place, exit 1, no traceback, and no key material in the message (issue 13, hardening)."""

from __future__ import annotations

import base64
import os
import time

import pytest

from reconciler._files import FileRefused, read_limited
from reconciler.cli import main
from reconciler.core import kubeconfig, yamldoc
from reconciler.errors import ClusterUnreachableError, PKIError, SpecError
from reconciler.shell.kube import load_kubeconfig
from reconciler.shell.specfile import load_spec

from .test_spec_loader import ROOT, VALID, problems_of, write

# Nine levels of nine aliases: 9**9 strings from 404 bytes.
ALIAS_BOMB = "\n".join(['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
                       + [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]) + "\n"
KEY_DATA = base64.b64encode(b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n").decode()
KUBECONFIG = f"""\
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {{server: "https://127.0.0.1:1", certificate-authority-data: "{base64.b64encode(b'ca').decode()}"}}
contexts:
- name: ctx
  context: {{cluster: c, user: u}}
current-context: ctx
users:
- name: u
  user:
    client-key-data: {KEY_DATA}
"""


# --- item 1: limits -------------------------------------------------------------------------

def test_an_alias_bomb_is_refused_at_the_alias_that_goes_over_the_budget(tmp_path):
    path = write(tmp_path, ALIAS_BOMB)
    start = time.monotonic()
    message, problems = problems_of(path)
    assert time.monotonic() - start < 2
    assert message == f"{path}: invalid YAML"
    assert problems == [f"{path}:5:10: aliases repeat more than 10,000 nodes; a spec need not"]


def test_aliases_and_merge_keys_within_the_budget_still_work(tmp_path):
    text = VALID.replace("          access:\n            local:\n              root: /\n",
                         "          access: &local {local: {root: /}}\n")
    text = text.replace("          access:\n            local:\n              root: /srv/w1\n", "          access: *local\n")
    text = text.replace("      nodes:\n", "      <<: {context: admin}\n      context: mine\n      nodes:\n")
    cluster = load_spec(write(tmp_path, text)).document.spec.clusters[0]
    assert [node.access.local.root for node in cluster.nodes] == ["/", "/"]
    assert cluster.context == "mine"  # a key the mapping sets wins over a merged one


def test_a_merge_key_alone_is_an_error_at_its_line(tmp_path):
    path = write(tmp_path, VALID.replace("metadata:\n", "metadata:\n  <<:\n"))
    _, problems = problems_of(path)
    assert problems == [f"{path}:4:3: a merge key (<<) needs a mapping or a list of mappings"]


def test_a_loop_of_aliases_is_an_error(tmp_path):
    _, problems = problems_of(write(tmp_path, "a: &a [1, *a]\n"))
    assert problems[0].endswith(":1:11: an alias inside the node its anchor names (a loop)")


def test_nesting_deeper_than_the_limit_is_refused_at_the_level_that_goes_over(tmp_path):
    path = write(tmp_path, "a: " + "[" * 400 + "]" * 400 + "\n")
    _, problems = problems_of(path)
    assert problems == [f"{path}:1:35: nested more than 32 levels deep; a spec is not"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_file_that_is_not_regular_is_refused_without_reading_it(tmp_path, kind):
    path = {"device": "/dev/zero", "directory": str(tmp_path)}.get(kind, str(tmp_path / "fifo"))
    if kind == "fifo":
        os.mkfifo(path)  # no writer: reading it would wait forever
    expected = {"fifo": "a FIFO (named pipe)", "device": "a character device", "directory": "a directory"}[kind]
    with pytest.raises(SpecError) as error:
        load_spec(type(tmp_path)(path))
    assert error.value.problems == [f"{path}:1:1: cannot read: not a regular file but {expected}"]
    with pytest.raises(ClusterUnreachableError) as error:
        load_kubeconfig(type(tmp_path)(path))
    assert f"kubeconfig {path}: cannot read it: not a regular file but {expected}" == str(error.value)


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:
        handle.truncate(yamldoc.SPEC.max_bytes + 1)  # sparse: nothing is really there to read
    _, problems = problems_of(path)
    assert problems == [f"{path}:1:1: cannot read: 4,194,305 bytes; at most 4,194,304 are read"]


def test_read_limited_refuses_a_file_that_grew_past_the_limit_after_fstat(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_limited(path, 10) == b"x" * 10
    real_fstat = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 0, *real_fstat(fd)[7:])))
    with pytest.raises(FileRefused, match="more than 9 bytes"):
        read_limited(path, 9)


def test_more_values_than_the_limit_are_refused_at_the_one_that_goes_over():
    # 4 MiB of "[{},{},...]" are 2 million values at about 30 us each: the count, not the
    # size in bytes, bounds the time.
    limits = yamldoc.Limits("spec", max_bytes=1024, max_depth=8, aliases=0, max_nodes=100)
    with pytest.raises(yamldoc.DocumentError) as error:
        yamldoc.load("a: [" + ", ".join(["{}"] * 100) + "]\n", limits)
    assert str(error.value) == "line 1, column 393: more than 100 values; a spec need not hold so many"
    assert yamldoc.load("a: [" + ", ".join(["{}"] * 97) + "]\n", limits).data["a"] == [{}] * 97  # 100 values
    assert yamldoc.SPEC.max_nodes == 100_000


# Linear time in the comments is a speed goal: benchmarks/yaml_loading.py shows it (docs/
# performance.md), not a timed test, which a busy 2-core machine makes flaky.


# --- item 2: no value in a message ----------------------------------------------------------

def test_a_yaml_error_in_a_kubeconfig_names_the_place_and_never_the_key(tmp_path):
    text = KUBECONFIG.replace("client-key-data: ", "client-key-data: !")  # the key becomes a tag
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    with pytest.raises(PKIError) as error:
        load_kubeconfig(path)
    assert str(error.value) == (f"kubeconfig {path}: not a kubeconfig: line 13, column 22: "
                                "a value with an unsupported tag; write plain YAML values")
    for broken in (text, KUBECONFIG.replace(f"{KEY_DATA}", f'"{KEY_DATA}\\q"'),
                   KUBECONFIG.replace(f"{KEY_DATA}", f"{KEY_DATA}\n  {KEY_DATA}: x: y"),
                   KUBECONFIG.replace(f"{KEY_DATA}", f"'{KEY_DATA}")):
        with pytest.raises(PKIError) as error:
            kubeconfig.parse(broken, source="kubeconfig k")
        assert KEY_DATA[:20] not in str(error.value) and "MIIE" not in str(error.value), str(error.value)
        assert "line " in str(error.value)


def test_a_yaml_error_in_a_spec_quotes_nothing_from_it(tmp_path):
    for text in ("metadata: {name: !s3cr3t-value x}\n", "a: \"s3cr3t-value\\q\"\n", "a: 's3cr3t-value\n",
                 "a: b: s3cr3t-value\n", "a: @s3cr3t-value\n"):
        _, problems = problems_of(write(tmp_path, text))
        assert len(problems) == 1 and "s3cr3t" not in problems[0], problems
        assert problems[0].startswith(f"{tmp_path}/spec.yaml:"), problems


def test_the_parsers_names_of_tokens_stay_in_the_message(tmp_path):
    path = write(tmp_path, VALID.replace("  name: demo\n", "  name: demo\n bad: indent\n"))
    _, problems = problems_of(path)
    assert problems == [f"{path}:5:2: expected <block end>, but found <block mapping start> "
                        "(while parsing a block mapping at line 1, column 1)"]


# --- item 3: strict types -------------------------------------------------------------------

@pytest.mark.parametrize(("replace", "problem"), [
    (("      kubeconfig: kubeconfigs/one.yaml\n", "      inCluster: \"on\"\n"),
     "8:18: spec.clusters[0].inCluster: must be true or false; got 'on'"),
    (("      kubeconfig: kubeconfigs/one.yaml\n", "      inCluster: on\n"),  # YAML 1.2: text, not a boolean
     "8:18: spec.clusters[0].inCluster: must be true or false; got 'on'"),
    (("      nodes:\n", "      authorities: {clusterCA: {rotation: true}}\n      nodes:\n"),
     "9:43: spec.clusters[0].authorities.clusterCA.rotation: must be a whole number; got a boolean, True"),
    (("      nodes:\n", "      authorities: {clusterCA: {rotation: 3.0}}\n      nodes:\n"),
     "9:43: spec.clusters[0].authorities.clusterCA.rotation: must be a whole number; got a number, 3.0"),
    (("      nodes:\n", "      authorities: {clusterCA: {key: {algorithm: RSA, size: \"2048\"}}}\n      nodes:\n"),
     "9:61: spec.clusters[0].authorities.clusterCA.key.size: must be a whole number; got a string, '2048'"),
    (("      nodes:\n", "      workloads: {maxConcurrent: \"4\", restart: 1}\n      nodes:\n"),
     "9:34: spec.clusters[0].workloads.maxConcurrent: must be a whole number; got a string, '4'"),
])
def test_loose_types_are_errors_at_their_value(tmp_path, replace, problem):
    path = write(tmp_path, VALID.replace(*replace))
    _, problems = problems_of(path)
    assert problems[0] == f"{path}:{problem}"


def test_an_ssh_port_in_quotes_is_an_error(tmp_path):
    text = VALID.replace("            local:\n              root: /srv/w1\n",
                         "            ssh: {host: w1, user: root, keyFile: k, knownHostsFile: kh, port: \"22\"}\n")
    path = write(tmp_path, text)
    _, problems = problems_of(path)
    assert problems == [f"{path}:18:79: spec.clusters[0].nodes[1].access.ssh.port: must be a whole number; "
                        "got a string, '22'"]


# --- item 4: no traceback -------------------------------------------------------------------

def _run(capsys, *argv):
    """The CLI in-process: exit code and stderr; a traceback would fail the test by escaping."""
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def _spec_with_kubeconfig(tmp_path, kubeconfig_text: str | bytes):
    kubeconfig_path = tmp_path / "kubeconfig"
    if isinstance(kubeconfig_text, bytes):
        kubeconfig_path.write_bytes(kubeconfig_text)
    else:
        kubeconfig_path.write_text(kubeconfig_text)
    no_nodes = VALID[:VALID.index("      nodes:\n")]
    return write(tmp_path, no_nodes.replace("kubeconfigs/one.yaml", str(kubeconfig_path))), kubeconfig_path


@pytest.mark.parametrize(("kubeconfig_text", "message"), [
    (bytes(range(256)) * 4, "not a kubeconfig: line 2, column 118: not UTF-8 text"),
    (KUBECONFIG.replace("contexts:\n- name: ctx\n  context: {cluster: c, user: u}\n", "contexts: ctx\n"),
     "contexts must be a list of entries; it is text"),
    (KUBECONFIG.replace("users:\n- name: u\n  user:\n", "users:\n- u\n- v:\n"),
     "users[0] must be a mapping with name and user; it is text"),
    (KUBECONFIG.replace("current-context: ctx", "current-context: [ctx]"), "current-context must be text; it is a list"),
    (KUBECONFIG.replace("{cluster: c, user: u}", "{cluster: c, user: [u]}"),
     "contexts[0] (ctx): context.user must be text; it is a list"),
    (KUBECONFIG.replace("- name: c\n", "- name: {c: 1}\n"), "clusters[0]: name must be text; it is a mapping"),
    (KUBECONFIG.replace("kind: Config\n", "kind: Config\n<<:\n"),
     "not a kubeconfig: line 3, column 1: a merge key (<<); a kubeconfig may hold none"),
    (KUBECONFIG.replace("- name: u\n", "- name: &u u\n").replace("user: u}", "user: *u}"),
     "not a kubeconfig: line 8, column 31: an alias (*name); a kubeconfig may hold none"),
])
def test_a_malformed_kubeconfig_is_an_error_naming_it(tmp_path, capsys, kubeconfig_text, message):
    spec, kubeconfig_path = _spec_with_kubeconfig(tmp_path, kubeconfig_text)
    code, _, err = _run(capsys, "plan", spec, "--workspace", tmp_path / "ws")
    assert code == 1
    assert f"careconcile: error: kubeconfig {kubeconfig_path}: {message}" in err
    assert KEY_DATA[:20] not in err
    assert not (tmp_path / "ws").exists()  # nothing was made


def test_a_merge_key_alone_in_a_spec_exits_1(tmp_path, capsys):
    spec = write(tmp_path, VALID.replace("spec:\n", "spec:\n  <<:\n"))
    code, _, err = _run(capsys, "validate", spec)
    assert code == 1 and f"{spec}:6:3: a merge key (<<) needs a mapping or a list of mappings" in err


@pytest.mark.parametrize("line", [
    b"@cert-authority *.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPXJxelLfqndjwMidaDg+su5aMXSG2SvnF7K1TjHPJ1A",
    b"@revoked w1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPXJxelLfqndjwMidaDg+su5aMXSG2SvnF7K1TjHPJ1A",
    b"w9 sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIA==",
])
def test_known_hosts_lines_careconcile_cannot_use_are_passed_over(line):
    from reconciler.shell.ssh import known_hosts_entries

    good = b"w1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPXJxelLfqndjwMidaDg+su5aMXSG2SvnF7K1TjHPJ1A"
    entries = known_hosts_entries(b"# comment\n\n" + line + b"\n" + good + b"\n")
    assert [entry.hostnames for entry in entries] == [["w1"]]


@pytest.mark.parametrize(("content", "problem"), [
    (b"garbage\n", "line 1 is not a known_hosts entry careconcile can read"),
    (b"# ok\nw1 ssh-ed25519 !!!!notbase64\n", "line 2 is not a known_hosts entry careconcile can read"),
    (b"w1 ssh-ed25519 AAAA\xff\xfe\n", "line 1 is not UTF-8 text"),
])
def test_garbage_in_known_hosts_is_an_error_naming_the_node_file_and_line(tmp_path, content, problem):
    import paramiko

    from reconciler.core.spec import SSHAccess
    from reconciler.errors import NodeUnreachableError
    from reconciler.shell.ssh import SSHNodeFiles

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_bytes(content)
    access = SSHAccess.model_validate({"host": "w1", "user": "root", "keyFile": "k", "knownHostsFile": "kh"})
    files = SSHNodeFiles("w1", access, key_file=tmp_path / "k", known_hosts_file=known_hosts)
    with pytest.raises(NodeUnreachableError) as error:
        files._expected_host_keys(paramiko.SSHClient())
    assert str(error.value).startswith(f"node w1 (ssh root@w1:22): the known_hosts file {known_hosts}: {problem}")
    assert "!!!!" not in str(error.value)


def test_a_plan_file_nested_100000_deep_is_an_error(tmp_path, capsys):
    path = tmp_path / "deep.plan.json"
    path.write_text('{"format_version": 1, "clusters": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for command in (["show", path], ["apply", path, "--auto-approve"]):
        code, _, err = _run(capsys, *command)
        assert code == 1 and f"{path}: not a JSON plan file (nested too deep)" in err, err
    path.write_text("[" * 100_000 + "]" * 100_000)  # no format_version: apply takes it for a spec
    code, _, err = _run(capsys, "apply", path, "--auto-approve")
    assert code == 1 and f"{path}:1:33: nested more than 32 levels deep; a spec is not" in err, err


@pytest.mark.parametrize("style", ["flow", "json"])
def test_a_spec_in_flow_style_or_json_is_taken_for_a_spec(tmp_path, style):
    from reconciler.cli._common import is_plan_file

    document = {"apiVersion": "careconcile.dev/v1alpha1", "kind": "CASpec", "metadata": {"name": "x"},
                "spec": {"clusters": [{"name": "one", "inCluster": True}]}}
    import json

    text = json.dumps(document) if style == "json" else \
        "{apiVersion: careconcile.dev/v1alpha1, kind: CASpec, metadata: {name: x}, spec: {clusters: [{name: one, inCluster: true}]}}"
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert not is_plan_file(path)
    assert load_spec(path).document.spec.clusters[0].in_cluster is True
    path.write_text(json.dumps({"format_version": 1, **document}))
    assert is_plan_file(path)
    path.write_text('{"format_version": 1, "clusters": [')  # a plan cut short: the plan loader says so
    assert is_plan_file(path)


def _plan_with(tmp_path, **changes):
    import json

    from reconciler.core import render

    from .test_render import rotation

    data = json.loads(render.as_json(rotation()))
    data.update(changes.get("top", {}))
    data["clusters"][0]["actions"][0]["reason"] = changes.get("reason", "r")
    path = tmp_path / "saved.plan.json"
    path.write_text(json.dumps(data))
    return path


def test_show_escapes_terminal_control_sequences_from_a_plan_file(tmp_path, capsys):
    path = _plan_with(tmp_path, reason="\x1b[2J\x9b31m\u202eevil")
    code, out, _ = _run(capsys, "show", path)
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\u202e" not in out
    assert "\\x1b[2J\\x9b31m\\u202eevil" in out
    code, out, _ = _run(capsys, "show", path, "--format", "markdown")
    assert "\x1b" not in out and "\u202e" not in out
    # A path holds no control character at all: such a spec_path is refused, not shown.
    path = _plan_with(tmp_path, top={"spec_path": "/s\x1b]0;owned\x07.yaml"})
    code, _, err = _run(capsys, "show", path)
    assert code == 1 and f"{path}: not a valid plan at spec_path: fails the schema's 'pattern' rule" in err


def test_an_error_message_reaches_the_terminal_without_control_characters(tmp_path, capsys):
    path = tmp_path / "\x1b[2Jspec.yaml"
    code, _, err = _run(capsys, "validate", path)
    assert code == 1 and "\x1b" not in err and "\\x1b[2Jspec.yaml" in err


def test_markdown_keeps_links_and_mentions_from_the_cluster_as_text(tmp_path, capsys):
    subject = "CN=[click me](https://evil.example/login) @octocat @org/team ![x](https://evil.example/i.png) #1"
    path = _plan_with(tmp_path, reason=subject)
    code, out, _ = _run(capsys, "show", path, "--format", "markdown")
    assert code == 0
    assert "](" not in out.replace("\\](", "")  # no link or image syntax left
    assert "@octocat" not in out and "@org/team" not in out and "@\u200boctocat" in out
    assert "#1" not in out.replace("#\u200b1", "")
    assert "\\[click me\\](https://evil.example/login)" in out


# --- item 5: names that go into paths -------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["update", "credentials", "--cluster-ca", "--cluster-name", "{name}", "--kubeconfig", "k"],
    ["update", "credentials", "--cluster-ca", "--cluster-name", "ok", "--namespace", "{name}", "--kubeconfig", "k"],
    ["register", "{name}", "--kubeconfig", "k", "--ca-cert", "c", "--node", "n=worker,h"],
    ["register", "ok", "--namespace", "{name}", "--kubeconfig", "k", "--ca-cert", "c", "--node", "n=worker,h"],
    ["force-unlock", "{name}", "id", "--spec", "s"],
])
@pytest.mark.parametrize("name", ["../../../tmp/x", "a/b", "UPPER", "dash-", "x" * 64, "", "a.b"])
def test_a_name_that_is_not_a_dns_label_is_refused_before_anything_is_read(tmp_path, capsys, monkeypatch,
                                                                           argv, name):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, *[part.replace("{name}", name) for part in argv])
    assert code == 64
    assert f"{name!r} is not a DNS label" in err
    assert list(tmp_path.iterdir()) == []  # no workspace directory, nothing at all


def test_update_credentials_refuses_a_path_as_a_cluster_name_when_called_directly(tmp_path):
    from reconciler.errors import UsageError
    from reconciler.shell.credentials import update_cluster_ca

    with pytest.raises(UsageError, match="cluster name '../x' is not a DNS label"):
        update_cluster_ca(tmp_path / "k", "../x", context=None, namespace=None, workspace=tmp_path / "ws",
                          phase_timeout=1)
    assert not (tmp_path / "ws").exists() and not (tmp_path / "x").exists()


# --- item 6: SIGTERM cleans up as Ctrl-C does ------------------------------------------------

_HOLDER = '''
import shutil, sys, time
from pathlib import Path
from reconciler._files import atomic_write

root, work, spec = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
sys.path.insert(0, root)
from tests.standin_lock import apply_holding_the_lock


def make_plan(*args, **kwargs):  # holds the lock and a 0600 key file, as update credentials does
    run = work / "run-1"
    run.mkdir()
    try:
        atomic_write(run / "ssh-key", b"-----BEGIN OPENSSH PRIVATE KEY-----\\n", 0o600)
        (work / "ready").write_text("")
        time.sleep(60)
    finally:
        shutil.rmtree(run)


sys.exit(apply_holding_the_lock(work, spec, make_plan))
'''


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_sigterm_removes_the_key_file_and_releases_the_lock_as_ctrl_c_does(tmp_path, signum):
    import signal
    import subprocess
    import sys

    spec = write(tmp_path, VALID)
    # As a terminal's Ctrl-C finds it: SIGINT not ignored. (An xdist worker ignores SIGINT, and
    # a child started with SIGINT ignored keeps ignoring it: Python then installs no handler.)
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(ROOT), str(tmp_path), str(spec)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        assert (tmp_path / "lease").exists() and (tmp_path / "run-1/ssh-key").stat().st_mode & 0o777 == 0o600
        process.send_signal(getattr(signal, signum))
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == (143 if signum == "SIGTERM" else 130), stderr
    assert "Traceback" not in stderr
    assert stderr.strip().endswith("terminated (SIGTERM)" if signum == "SIGTERM" else "interrupted")
    assert not (tmp_path / "lease").exists()  # released
    assert not (tmp_path / "run-1").exists()  # the key's directory is gone
    assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")] == []


def test_main_restores_the_sigterm_handler_it_found(tmp_path, capsys):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    _run(capsys, "validate", write(tmp_path, VALID))
    assert signal.getsignal(signal.SIGTERM) is before


# --- item 7: a file that holds a key ends 0600 -----------------------------------------------

@pytest.mark.parametrize(("content", "mode"), [
    (KUBECONFIG.encode(), 0o600),  # client-key-data
    (b"-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n", 0o600),
    (b"-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n", 0o644),
])
def test_a_loose_file_that_gets_a_key_becomes_0600(tmp_path, content, mode):
    from reconciler._files import atomic_write
    from reconciler.shell.nodes import LocalNodeFiles

    path = tmp_path / "etc/kubernetes/admin.conf"
    path.parent.mkdir(parents=True)
    path.write_text("apiVersion: v1\nkind: Config\n")
    path.chmod(0o644)
    atomic_write(path, content, path.stat().st_mode & 0o777)  # as the executor rewrites a user's kubeconfig
    assert path.stat().st_mode & 0o777 == mode
    path.chmod(0o666)
    LocalNodeFiles("n", str(tmp_path)).write("/etc/kubernetes/admin.conf", content, 0o666)
    assert path.stat().st_mode & 0o777 == (0o600 if mode == 0o600 else 0o666)
    assert path.read_bytes() == content


@pytest.mark.parametrize("root", ["/", "/node"], ids=["created-ahead", "created-alone"])
def test_an_ssh_write_of_a_key_asks_for_0600(monkeypatch, root):
    """Either way the temp file is created: with the location's requests (any directory
    when the root is "/"), at most 0600 since a mode the write keeps is not known yet; or on
    its own (a directory the connection does not know), with the mode it gets."""
    from reconciler.core.spec import SSHAccess
    from reconciler.shell import ssh
    from reconciler.shell.sftp_pipeline import Pipeline

    asked = []

    def create(*args):
        asked.append(args[-1])
        raise OSError("stop here")
    monkeypatch.setattr(ssh, "_create", create)
    monkeypatch.setattr(Pipeline, "create", create)
    access = SSHAccess.model_validate({"host": "w1", "user": "root", "keyFile": "k", "knownHostsFile": "kh",
                                      "root": root})
    files = ssh.SSHNodeFiles("w1", access, key_file=None, known_hosts_file=None)

    class SFTP:
        def stat(self, path):
            raise FileNotFoundError(2, "no such file")

        def normalize(self, path):
            return path

        def lstat(self, path):
            raise FileNotFoundError(2, "no such file")

        def mkdir(self, path, mode=0o755):
            pass

        def remove(self, path):
            pass

    monkeypatch.setattr(files, "_run", lambda doing, work: work(SFTP()))
    # Where the file is: the one-by-one way, on this fake SFTP.
    monkeypatch.setattr(files, "_ask_location", lambda pipe, path: (root.rstrip("/") + path, lambda: None))
    for content, mode in ((KUBECONFIG.encode(), 0o600), (b"-----BEGIN CERTIFICATE-----\n", 0o644)):
        with pytest.raises(OSError, match="stop here"):
            files.write("/etc/kubernetes/kubelet.conf", content, 0o644)
        assert asked.pop() == (mode if root != "/" else 0o600)


def test_a_document_parsed_once_is_each_callers_own_to_change():
    """kubeconfigs and specs are parsed once per process and copied for each caller (a run
    reads the same files once per authority and phase check): a writer that changes its
    copy (a kubeconfig getting a new CA) must not change what the next reader gets, and a
    document that fails fails every time."""
    text = "kind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://a:6443'}\n"
    first = yamldoc.load(text, yamldoc.KUBECONFIG)
    first.data["clusters"][0]["cluster"]["server"] = "https://changed:6443"
    first.positions.values.clear()
    again = yamldoc.load(text.encode(), yamldoc.KUBECONFIG)
    assert again.data["clusters"][0]["cluster"]["server"] == "https://a:6443"
    assert again.positions.values[("clusters", 0, "cluster", "server")] == (4, 21)
    for _ in range(2):
        with pytest.raises(yamldoc.DocumentError, match="alias"):
            yamldoc.load("a: &x [1]\nb: *x\n", yamldoc.KUBECONFIG)
