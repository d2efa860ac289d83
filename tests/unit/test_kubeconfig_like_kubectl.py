"""Kubeconfigs read as kubectl reads them: KUBECONFIG merged, exec credential plugins (real
scripts, run through subprocess), impersonation, refusals by name, tokenFile followed, and the
client's backoff on a busy server (a fake transport: the rule, not the network)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from reconciler.errors import APIError, APIUnauthorizedError, ClusterUnreachableError, PKIError
from reconciler.shell import kube
from reconciler.shell.kube import CredentialPluginError, KubeClient, KubeconfigClient, kubeconfig_paths, load_kubeconfig
from reconciler.shell.kube import _client, _credentials, _kubeconfig

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def config(clusters=(), users=(), contexts=(), current=None) -> dict:
    document = {"apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": n, "cluster": c} for n, c in clusters],
                "users": [{"name": n, "user": u} for n, u in users],
                "contexts": [{"name": n, "context": c} for n, c in contexts]}
    if current:
        document["current-context"] = current
    return document


def write(path: Path, document: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def cluster(port: int = 6443, **more) -> dict:
    return {"server": f"https://127.0.0.1:{port}", "certificate-authority-data": b64(CA), **more}


def one(tmp_path: Path, user: dict, *, cluster_fields: dict | None = None, name: str = "kubeconfig") -> Path:
    return write(tmp_path / name, config([("c", cluster(**(cluster_fields or {})))], [("u", user)],
                                         [("ctx", {"cluster": "c", "user": "u"})], "ctx"))


class FakeTransport:
    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, object]] = []

    def request(self, method, url_path, headers, body):
        self.sent.append((method, headers))
        status, extra = self.answers.pop(0)
        return status, extra, b"{}"

    def close(self):
        pass


# --- which files, and how they merge ------------------------------------------------------

def test_kubeconfig_list_merges_first_file_wins_per_entry_and_for_current_context(tmp_path):
    first = write(tmp_path / "a" / "first", config(
        [("shared", cluster(1)), ("only-a", {"server": "https://127.0.0.1:5", "certificate-authority": "ca.pem"})],
        [("u", {"token": "from-first"})], [("ctx", {"cluster": "shared", "user": "u"})]))  # no current-context
    (tmp_path / "a" / "ca.pem").write_bytes(CA)
    second = write(tmp_path / "b" / "second", config(
        [("shared", cluster(2))], [("u", {"token": "from-second"}), ("v", {"token": "v-token"})],
        [("ctx", {"cluster": "only-a", "user": "v"}), ("other", {"cluster": "only-a", "user": "v"})], "other"))
    third = write(tmp_path / "c" / "third", config(current="ctx"))
    listed = f"{first}::{tmp_path / 'missing'}:{second}:{first}:{third}"  # empty, missing and repeated entries
    paths = kubeconfig_paths(None, {"KUBECONFIG": listed})
    assert paths == [first, second, third]
    target = load_kubeconfig(paths)
    # current-context: the first file that sets one (second); the context "other" lives in the second file,
    # its cluster "only-a" in the first, whose relative CA path is relative to the first file's directory.
    assert (target.context, target.server, target.token, target.ca_pem) == ("other", "https://127.0.0.1:5",
                                                                          "v-token", CA)
    pinned = load_kubeconfig(paths, "ctx")  # the first file's ctx wins over the second's
    assert (pinned.server, pinned.token) == ("https://127.0.0.1:1", "from-first")


def test_explicit_path_alone_then_kubeconfig_then_home(tmp_path):
    explicit = tmp_path / "explicit"
    assert kubeconfig_paths(explicit, {"KUBECONFIG": "/elsewhere"}) == [explicit]
    home = write(tmp_path / "home" / ".kube" / "config", config())
    assert kubeconfig_paths(None, {"HOME": str(tmp_path / "home")}) == [home]
    assert kubeconfig_paths(None, {"HOME": str(tmp_path / "home"), "KUBECONFIG": ""}) == [home]
    with pytest.raises(ClusterUnreachableError, match="names no kubeconfig file that exists"):
        kubeconfig_paths(None, {"KUBECONFIG": f"{tmp_path / 'x'}:{tmp_path / 'y'}"})
    with pytest.raises(ClusterUnreachableError, match=r"\.kube/config does not exist"):
        kubeconfig_paths(None, {"HOME": str(tmp_path / "nobody")})


def test_a_generated_spec_names_the_one_file_that_holds_a_context_with_its_cluster_and_user(tmp_path):
    first = write(tmp_path / "first", config([("a", cluster())], [("u", {})], [("x", {"cluster": "a"})]))
    second = write(tmp_path / "second", config([("a", cluster(2)), ("b", cluster())], [], []))
    merged = _kubeconfig.read_files([first, second])
    assert merged.home_of("x") == str(first)
    spread = _kubeconfig.read_files([write(tmp_path / "users", config([], [("v", {})], [("y", {"cluster": "b",
                                                                                            "user": "v"})])), second])
    assert spread.home_of("y") is None


def test_the_hostile_input_limits_hold_for_each_file_of_the_list(tmp_path):
    good = write(tmp_path / "good", config([("c", cluster())], [], [("x", {"cluster": "c"})], "x"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ClusterUnreachableError, match=rf"kubeconfig {fifo}: cannot read it"):
        load_kubeconfig([good, fifo])
    aliased = tmp_path / "aliased"
    aliased.write_text("kind: Config\nclusters: &a []\nusers: *a\n")
    with pytest.raises(PKIError, match=rf"kubeconfig {aliased}: not a kubeconfig"):
        load_kubeconfig([good, aliased])


# --- fields: read, or refused by name ----------------------------------------------------

@pytest.mark.parametrize("where, field, value, message", [
    ("user", "auth-provider", {"name": "oidc"}, "auth-provider is not supported"),
    ("user", "username", "admin", "username is not supported"),
    ("user", "password", "pw", "password is not supported"),
    ("user", "client-certficate", "typo", "client-certficate is not supported"),
    ("cluster", "insecure-skip-tls-verify", True, "insecure-skip-tls-verify: true with a certificate-authority"),
])
def test_unsupported_fields_are_refused_by_name_with_file_and_entry(tmp_path, where, field, value, message):
    path = one(tmp_path, {"token": "t", **({field: value} if where == "user" else {})},
               cluster_fields={field: value} if where == "cluster" else None)
    with pytest.raises(PKIError) as error:
        load_kubeconfig(path)
    text = str(error.value)
    assert message in text and str(path) in text and (f"{where} 'u'" in text or f"{where} 'c'" in text)
    assert "http://127.0.0.1:3128" not in text and "'pw'" not in text  # names, never values


def test_tls_server_name_and_proxy_url_are_read_and_a_bad_one_is_refused_naming_file_and_entry(tmp_path):
    path = one(tmp_path, {"token": "t"}, cluster_fields={"tls-server-name": "kubernetes",
                                                          "proxy-url": "http://user:pw@127.0.0.1:3128"})
    target = load_kubeconfig(path)
    assert (target.tls_server_name, target.proxy_url) == ("kubernetes", "http://user:pw@127.0.0.1:3128")
    assert "pw" not in repr(target)
    for fields, message in (({"tls-server-name": "kube rnetes"}, "tls-server-name is not a host name"),
                            ({"proxy-url": "socks5://user:pw@127.0.0.1:1080"}, "socks5:// proxies are not supported")):
        path = one(tmp_path, {"token": "t"}, cluster_fields=fields)
        with pytest.raises(ClusterUnreachableError) as error:
            load_kubeconfig(path)
        text = str(error.value)
        assert message in text and str(path) in text and "cluster 'c'" in text and "pw" not in text


def test_fields_of_entries_careconcile_does_not_use_are_left_alone(tmp_path):
    path = write(tmp_path / "k", config([("c", cluster()), ("gke", {"server": "https://10.0.0.1", "proxy-url": "x"})],
                                        [("u", {"token": "t"}), ("old", {"auth-provider": {"name": "gcp"}})],
                                        [("ctx", {"cluster": "c", "user": "u"})], "ctx"))
    assert load_kubeconfig(path).token == "t"


def test_line_wrapped_data_is_read_by_the_one_decoder(tmp_path):
    wrapped = "\n".join(b64(CA)[i:i + 20] for i in range(0, len(b64(CA)), 20))
    path = write(tmp_path / "k", config([("c", {"server": "https://127.0.0.1:1", "certificate-authority-data": wrapped})],
                                        [("u", {"token": "t"})], [("x", {"cluster": "c", "user": "u"})], "x"))
    assert load_kubeconfig(path).ca_pem == CA


def test_impersonation_goes_out_as_impersonate_headers_one_line_per_group(tmp_path):
    path = one(tmp_path, {"token": "t", "as": "jane", "as-uid": "42", "as-groups": ["dev", "ops"],
                          "as-user-extra": {"scopes/x": ["a", "b"]}})
    transport = FakeTransport((200, {}))
    KubeClient(load_kubeconfig(path), transport=transport).get("/api")
    (_, headers), = transport.sent
    lines = [pair for pair in headers.items() if pair[0].startswith("Impersonate-")]
    assert lines == [("Impersonate-User", "jane"), ("Impersonate-Uid", "42"), ("Impersonate-Group", "dev"),
                     ("Impersonate-Extra-scopes%2Fx", "a"), ("Impersonate-Group", "ops"),
                     ("Impersonate-Extra-scopes%2Fx", "b")]
    with pytest.raises(PKIError, match="need as"):
        load_kubeconfig(one(tmp_path, {"token": "t", "as-groups": ["dev"]}, name="k2"))


def test_a_reloaded_kubeconfig_that_leads_to_another_proxy_or_server_name_is_not_followed(tmp_path):
    (tmp_path / "token").write_text("first\n")
    for field, before, after in (("proxy-url", "http://127.0.0.1:3128", "http://user:pw@127.0.0.1:3129"),
                                 ("tls-server-name", "kubernetes", "elsewhere.example")):
        path = one(tmp_path, {"tokenFile": "token"}, cluster_fields={field: before}, name=f"k-{field}")
        credentials = _credentials.KubeconfigCredentials([path])
        assert credentials.current(lambda line: None).token == "first"
        one(tmp_path, {"tokenFile": "token"}, cluster_fields={field: after}, name=f"k-{field}")
        os.utime(path, ns=(1, 1))  # a different signature, whatever the clock's resolution
        with pytest.raises(ClusterUnreachableError, match=f"the {field} changed") as error:
            credentials.current(lambda line: None)
        assert "pw" not in str(error.value)


def test_a_changed_token_file_is_read_again(tmp_path):
    (tmp_path / "token").write_text("first\n")
    path = one(tmp_path, {"tokenFile": "token"})
    transport = FakeTransport((200, {}), (200, {}), (200, {}))
    logged: list[str] = []
    client = KubeClient(load_kubeconfig(path), transport=transport, log=logged.append)
    client.get("/api")
    (tmp_path / "token").write_text("second-and-longer\n")
    client.get("/api")
    client.get("/api")
    assert [h["Authorization"] for _, h in transport.sent] == ["Bearer first", "Bearer second-and-longer",
                                                               "Bearer second-and-longer"]
    assert any("tokenFile" in line and "changed" in line for line in logged)
    assert not any("second-and-longer" in line for line in logged)


# --- exec credential plugins -------------------------------------------------------------

PLUGIN = r'''#!{python}
import json, os, sys, pathlib
state = pathlib.Path(sys.argv[1])
runs = int(state.read_text()) + 1 if state.exists() else 1
state.write_text(str(runs))
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
pathlib.Path(str(state) + ".info").write_text(json.dumps(info))
print("plugin talking on stderr, run", runs, file=sys.stderr)
status = {{"token": os.environ.get("TOKEN_PREFIX", "tok") + "-" + str(runs)}}
if os.environ.get("EXPIRES"):
    status["expirationTimestamp"] = os.environ["EXPIRES"]
if os.environ.get("FAIL"):
    print("cannot log in: no cached identity", file=sys.stderr)
    sys.exit(int(os.environ["FAIL"]))
print(os.environ.get("OUTPUT") or json.dumps({{"apiVersion": info["apiVersion"], "kind": "ExecCredential",
                                               "status": status}}))
'''


def plugin(tmp_path: Path, api_version: str = "client.authentication.k8s.io/v1", *, env=(), mode="Never",
           provide=False, relative=True) -> Path:
    script = tmp_path / "bin" / "plugin"
    script.parent.mkdir(exist_ok=True)
    script.write_text(PLUGIN.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    spec = {"apiVersion": api_version, "command": "./bin/plugin" if relative else str(script),
            "args": [str(tmp_path / "runs")], "env": [{"name": n, "value": v} for n, v in env],
            "installHint": "install the plugin with: pip install example-login", "provideClusterInfo": provide}
    if mode is not None:
        spec["interactiveMode"] = mode
    return one(tmp_path, {"exec": spec})


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "runs").read_text()) if (tmp_path / "runs").exists() else 0


@pytest.mark.parametrize("api_version, mode", [("client.authentication.k8s.io/v1", "Never"),
                                               ("client.authentication.k8s.io/v1beta1", None)])
def test_an_exec_plugin_gives_the_token_and_gets_exec_info_env_and_a_log_for_its_stderr(
        tmp_path, capsys, api_version, mode):
    path = plugin(tmp_path, api_version, env=[("TOKEN_PREFIX", "fromenv")], mode=mode, provide=True)
    transport = FakeTransport((200, {}))
    logged: list[str] = []
    KubeClient(load_kubeconfig(path), transport=transport, log=logged.append).get("/api")
    assert transport.sent[0][1]["Authorization"] == "Bearer fromenv-1"
    info = json.loads((tmp_path / "runs.info").read_text())
    assert info["apiVersion"] == api_version and info["kind"] == "ExecCredential"
    assert info["spec"]["interactive"] is False
    assert info["spec"]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(info["spec"]["cluster"]["certificate-authority-data"]) == CA
    assert any("plugin talking on stderr, run 1" in line for line in logged)
    assert not any("fromenv-1" in line for line in logged)
    out = capsys.readouterr()
    assert "plugin talking" not in out.out and "fromenv-1" not in out.out + out.err


def test_a_plugin_credential_keeps_the_clusters_tls_server_name_and_proxy_url(tmp_path):
    path = plugin(tmp_path)
    document = json.loads(path.read_text())
    document["clusters"][0]["cluster"].update({"tls-server-name": "kubernetes", "proxy-url": "http://127.0.0.1:3128"})
    path.write_text(json.dumps(document))
    resolved = _credentials.TargetCredentials(load_kubeconfig(path)).current(lambda line: None)
    assert resolved.token == "tok-1" and resolved.exec is None
    assert (resolved.tls_server_name, resolved.proxy_url) == ("kubernetes", "http://127.0.0.1:3128")


def test_provide_cluster_info_with_extensions_that_are_not_a_list_is_refused(tmp_path):
    path = plugin(tmp_path, provide=True)
    document = json.loads(path.read_text())
    document["clusters"][0]["cluster"]["extensions"] = 5
    path.write_text(json.dumps(document))
    with pytest.raises(PKIError, match="extensions, which must be a list"):
        load_kubeconfig(path)


def test_an_expired_credential_runs_the_plugin_again_and_a_401_once(tmp_path, monkeypatch):
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    monkeypatch.setenv("EXPIRES", past)
    transport = FakeTransport((200, {}), (200, {}))
    client = KubeClient(load_kubeconfig(plugin(tmp_path)), transport=transport, log=lambda line: None)
    client.get("/api")
    client.get("/api")
    assert [h["Authorization"] for _, h in transport.sent] == ["Bearer tok-2", "Bearer tok-3"]
    monkeypatch.setenv("EXPIRES", "2999-01-01T00:00:00Z")
    transport = FakeTransport((200, {}), (401, {}), (200, {}), (401, {}), (401, {}))
    before = runs(tmp_path)
    client = KubeClient(load_kubeconfig(plugin(tmp_path)), transport=transport, log=lambda line: None)
    client.get("/api")
    client.get("/api")  # 401: the plugin runs again, and the request goes out once more with its token
    assert runs(tmp_path) == before + 2
    assert [h["Authorization"] for _, h in transport.sent] == [f"Bearer tok-{before + 1}"] * 2 + [
        f"Bearer tok-{before + 2}"]
    with pytest.raises(APIUnauthorizedError):
        client.get("/api")  # 401, plugin again, 401 again: final
    assert runs(tmp_path) == before + 3
    # What the client uses is static: a copy of it (a probe's target) does not run the plugin again.
    KubeClient(dataclasses.replace(client.target, name="probe"), transport=FakeTransport((200, {}))).get("/api")
    assert runs(tmp_path) == before + 3 and client.target.exec is None


@pytest.mark.parametrize("setting, message", [
    ({"FAIL": "1"}, "exited with status 1 (its stderr is in the log; last line: cannot log in"),
    ({"OUTPUT": "not json"}, "its output is not JSON"),
    ({"OUTPUT": '{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": {}}'},
     "neither a token nor a client certificate"),
    ({"OUTPUT": '{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential"}'},
     "of apiVersion 'client.authentication.k8s.io/v1beta1'"),
])
def test_a_failing_plugin_is_an_error_naming_it_with_its_install_hint(tmp_path, monkeypatch, setting, message):
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(CredentialPluginError) as error:
        KubeClient(load_kubeconfig(plugin(tmp_path)), transport=FakeTransport(), log=lambda line: None)
    text = str(error.value)
    assert message in text and str(tmp_path / "bin" / "plugin") in text
    assert "hint: install the plugin with: pip install example-login" in text
    assert error.value.exit_code == 1


def test_a_missing_plugin_or_one_that_hangs(tmp_path):
    path = plugin(tmp_path)
    (tmp_path / "bin" / "plugin").unlink()
    with pytest.raises(CredentialPluginError, match="the command was not found") as error:
        load_kubeconfig(path) and KubeClient(load_kubeconfig(path), transport=FakeTransport())
    assert "pip install example-login" in str(error.value)
    hanging = tmp_path / "bin" / "plugin"
    hanging.write_text("#!/bin/sh\nsleep 30 &\nwait\n")  # a child that holds the pipes too
    hanging.chmod(0o700)
    with pytest.raises(CredentialPluginError, match="gave no credential within 0.5 s"):
        _credentials.run_plugin(load_kubeconfig(path).exec, lambda line: None, timeout=0.5)


@pytest.mark.parametrize("change, message", [
    ({"interactiveMode": "Always"}, "interactiveMode Always needs a terminal"),
    ({"interactiveMode": None}, "interactiveMode must be set"),
    ({"apiVersion": "client.authentication.k8s.io/v1alpha1"}, "apiVersion must be one of"),
    ({"command": None}, "command is missing"),
    ({"stdin": True}, "stdin is not supported"),
])
def test_exec_settings_careconcile_cannot_honour_are_refused(tmp_path, change, message):
    path = plugin(tmp_path)
    document = json.loads(path.read_text())
    spec = document["users"][0]["user"]["exec"]
    for key, value in change.items():
        spec.pop(key) if value is None else spec.__setitem__(key, value)
    path.write_text(json.dumps(document))
    with pytest.raises(PKIError, match=message):
        load_kubeconfig(path)


def test_a_kubeconfig_held_in_a_secret_may_not_run_a_command(tmp_path):
    text = plugin(tmp_path).read_text()
    with pytest.raises(PKIError, match="may not run an exec plugin"):
        kube.kubeconfig_target(text, source="Secret ns/c-kubeconfig")


def test_the_kubeconfig_client_runs_the_plugin_of_a_merged_kubeconfig(tmp_path, monkeypatch):
    path = plugin(tmp_path, relative=False)
    monkeypatch.setenv("KUBECONFIG", f"{path}:{tmp_path / 'absent'}")
    monkeypatch.setattr(_client, "HTTPSTransport", lambda server, context, **options: FakeTransport((200, {})))
    monkeypatch.setattr(_client, "tls_context", lambda **material: None)
    client = KubeconfigClient(None, log=lambda line: None)
    client.get("/api")
    assert client.paths == [path] and client.target.token == "tok-1"


# --- backoff -------------------------------------------------------------------------------

def busy_client(*answers, **kwargs):
    transport = FakeTransport(*answers)
    slept: list[float] = []
    logged: list[str] = []
    client = KubeClient(kube.KubeTarget(name="k", server="https://127.0.0.1:1", ca_pem=CA, token="t"),
                        transport=transport, log=logged.append, sleep=slept.append)
    return client, transport, slept, logged


def test_429_with_retry_after_is_waited_out_whatever_the_method_and_each_wait_is_logged():
    client, transport, slept, logged = busy_client((429, {"retry-after": "2"}), (429, {"retry-after": "1"}),
                                                   (201, {}))
    client.create("/api/v1/namespaces/x/configmaps", {"kind": "ConfigMap"})
    assert slept == [2.0, 1.0] and [m for m, _ in transport.sent] == ["POST"] * 3
    assert len(logged) == 2 and "429 TooManyRequests; waiting 2.00 s (Retry-After) before attempt 2" in logged[0]


def test_5xx_is_sent_again_for_a_get_only_with_jittered_exponential_waits():
    client, transport, slept, logged = busy_client((503, {}), (500, {}), (502, {}), (200, {}))
    client.get("/api")
    assert len(slept) == 3 and all("(backoff)" in line for line in logged)
    for attempt, wait in enumerate(slept, 1):
        ceiling = _client.BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1)
        assert ceiling / 2 <= wait <= ceiling
    client, transport, slept, _ = busy_client((503, {}))
    with pytest.raises(APIError, match="503"):
        client.patch("/api/v1/namespaces/x", {})  # it may have been carried out: not sent again
    assert slept == [] and len(transport.sent) == 1


def test_a_probe_without_backoff_budget_sees_the_first_answer():
    transport = FakeTransport((503, {}))
    probe = KubeClient(kube.KubeTarget(name="k", server="https://127.0.0.1:1", ca_pem=CA), transport=transport,
                       backoff_budget=0, sleep=lambda seconds: pytest.fail("a probe waited"))
    with pytest.raises(APIError, match="503") as error:
        probe.get("/readyz")
    assert error.value.hint is None and len(transport.sent) == 1


def test_backoff_stops_at_its_budget_with_a_hint():
    client, transport, slept, _ = busy_client(*[(429, {"retry-after": "20"})] * 3)
    with pytest.raises(APIError) as error:
        client.get("/api")
    assert slept == [20.0] and error.value.status == 429
    assert f"{_client.BACKOFF_BUDGET_SECONDS:g} s per request" in str(error.value)


def test_retry_after_0_is_asked_again_at_most_as_often_as_client_go_does():
    client, transport, slept, _ = busy_client(*[(429, {"retry-after": "0"})] * (_client.MAX_ATTEMPTS + 5))
    with pytest.raises(APIError) as error:
        client.get("/api")
    assert len(transport.sent) == _client.MAX_ATTEMPTS and slept == [0.0] * (_client.MAX_ATTEMPTS - 1)
    assert f"after {_client.MAX_ATTEMPTS} attempts" in str(error.value)


def test_a_caller_that_asks_again_itself_gets_the_429_at_once():
    client, transport, slept, _ = busy_client((429, {"retry-after": "10"}), (201, {}))
    with pytest.raises(APIError) as error:
        client.create("/api/v1/namespaces/x/pods/p/eviction", {"kind": "Eviction"}, wait_if_busy=False)
    assert error.value.status == 429 and slept == [] and len(transport.sent) == 1


def test_retry_wait_rules():
    assert _client.retry_wait("GET", 404, None, 1) is None
    assert _client.retry_wait("DELETE", 500, "1", 1) is None
    assert _client.retry_wait("DELETE", 429, " 3 ", 1) == (3.0, "Retry-After")
    assert _client.retry_wait("GET", 504, "Wed, 21 Oct 2015 07:28:00 GMT", 2, rng=lambda: 1.0) == (1.0, "backoff")
    assert _client.retry_wait("GET", 503, None, 10, rng=lambda: 0.0) == (_client.BACKOFF_MAX_SECONDS / 2, "backoff")


# --- update credentials without --kubeconfig ----------------------------------------------

def test_update_credentials_without_kubeconfig_reads_kubeconfig_like_kubectl(tmp_path, monkeypatch, capsys):
    from reconciler.cli import main

    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'gone'}:{tmp_path / 'also-gone'}")
    code = main(["update", "credentials", "--cluster-ca", "--cluster-name", "u1", "--workspace", str(tmp_path)])
    assert code == 1 and "KUBECONFIG names no kubeconfig file that exists" in capsys.readouterr().err
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "nobody"))
    code = main(["update", "credentials", "--cluster-ca", "--cluster-name", "u1", "--workspace", str(tmp_path)])
    assert code == 1 and f"{tmp_path / 'nobody' / '.kube' / 'config'} does not exist" in capsys.readouterr().err
