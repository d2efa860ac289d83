"""Checks that keep the project's pieces in step with each other."""

import ast
import re
from pathlib import Path

import pytest

from reconciler.errors import BinariesMissingError
from reconciler.sandbox import binaries

ROOT = Path(__file__).resolve().parents[2]

# What the pure core may import: no processes, sockets, files or shell packages.
FORBIDDEN_IN_CORE = {"subprocess", "socket", "ssl", "http", "urllib", "urllib3", "kubernetes", "shutil",
                     "tempfile", "paramiko", "asyncssh", "reconciler.sandbox", "reconciler.cli",
                     "reconciler._files"}


def test_pinned_version_matches_the_go_module():
    go_mod = (ROOT / "hack/k8s/go.mod").read_text()
    pinned = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", go_mod, re.M).group(1)
    assert binaries.KUBERNETES_VERSION == pinned


def test_extension_apiserver_is_built_at_the_pinned_release():
    """hack/extension-apiserver requires the sample-apiserver staging module of the release
    hack/k8s pins (v1.Y.Z -> v0.Y.Z), and every k8s.io module it shares with hack/k8s at the
    same version, so both builds compile the same packages."""
    def requires(path: str) -> dict[str, str]:
        text = (ROOT / path).read_text()
        return dict(re.findall(r"^\s*((?:k8s\.io|sigs\.k8s\.io)/\S+) (v\S+)(?: // indirect)?$", text, re.M))

    ext, k8s = requires("hack/extension-apiserver/go.mod"), requires("hack/k8s/go.mod")
    assert ext["k8s.io/sample-apiserver"] == "v0." + binaries.KUBERNETES_VERSION.split(".", 1)[1]
    replaced = dict(re.findall(r"^\s*(k8s\.io/\S+) => k8s\.io/\S+ (v\S+)$",
                               (ROOT / "hack/k8s/go.mod").read_text(), re.M))
    shared = {m: v for m, v in ext.items() if m in k8s}
    assert shared and all(replaced.get(m, k8s[m]) == v for m, v in shared.items()), shared



@pytest.mark.parametrize("module", sorted((ROOT / "reconciler/core").glob("*.py")), ids=lambda p: p.name)
def test_core_is_pure(module):
    tree = ast.parse(module.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
            pytest.fail(f"{module.name}:{node.lineno} opens a file")
    bad = {name for name in imported for banned in FORBIDDEN_IN_CORE
           if name == banned or name.startswith(banned + ".")}
    assert not bad, f"{module.name} imports {sorted(bad)}"


def test_missing_binaries_name_the_directory_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(binaries.CACHE_ENV, str(tmp_path))
    with pytest.raises(BinariesMissingError) as error:
        binaries.require_binaries()
    message = str(error.value)
    assert str(tmp_path) in message and "kube-apiserver" in message and "hack/build-binaries.sh" in message


def test_missing_extension_apiserver_names_the_path_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(binaries.CACHE_ENV, str(tmp_path))
    with pytest.raises(BinariesMissingError) as error:
        binaries.require_extension_apiserver()
    message = str(error.value) + (error.value.hint or "")
    assert str(tmp_path / binaries.KUBERNETES_VERSION / "extension/bin/sample-apiserver") in message
    assert "hack/build-extension-apiserver.sh" in message
