"""Hostile and malformed input: each fails fast with a message that names the file and the
place, exit 1, no traceback, and no key material in the message (issue 13, hardening)."""

from __future__ import annotations

import base64
import dataclasses
import os
import time

import pytest

from reconciler._files import FileRefused, read_limited
from reconciler.cli import main
from reconciler.core import kubeconfig, yamldoc
from reconciler.errors import ClusterUnreachableError, PKIError, SpecError
from reconciler.shell.kube import load_kubeconfig
from reconciler.shell.specfile import load_spec

from .test_spec_loader import VALID, problems_of, write

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


def _seconds(text: str) -> float:
    limits = dataclasses.replace(yamldoc.SPEC, max_bytes=1 << 30)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        yamldoc.load(text, limits)
        best = min(best, time.perf_counter() - start)
    return best


def test_comments_cost_time_linear_in_their_size():
    """ruamel's round-trip loader joined the comments after a value by copying all gathered
    so far: 4 times the comments took 16 times as long. Linear, it is about 4 times."""
    comment = "# " + "c" * 77 + "\n"
    small, large = (VALID + comment * (lines * 1024) for lines in (3, 12))  # 240 KiB and 960 KiB
    assert _seconds(large) < 7 * _seconds(small)


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
