"""Checks that keep the project's pieces in step with each other."""

import ast
import re
from pathlib import Path

import pytest

from reconciler.errors import BinariesMissingError
from reconciler.sandbox import binaries

ROOT = Path(__file__).resolve().parents[2]

# What the pure core may import, and nothing else: no processes, sockets, files, clocks or
# shell packages. A name maps to None (any of it) or to the names it may give.
ALLOWED_IN_CORE: dict[str, set[str] | None] = {
    "__future__": None, "dataclasses": None, "datetime": None, "typing": None, "collections": None, "re": None,
    "json": None, "base64": None, "binascii": None, "hashlib": None, "shlex": None, "ipaddress": None,
    "fnmatch": None, "copy": None, "posixpath": None, "functools": None,
    "io": {"StringIO"},  # in-memory text, for YAML the core renders
    "cryptography": None, "pydantic": None, "ruamel": None,
    "reconciler.core": None, "reconciler.errors": None,
    "reconciler._time": {"parse_time", "rfc3339", "micro_time"},  # formats, not the clock
}


def _allowed(module: str, names: set[str]) -> bool:
    for allowed, allowed_names in ALLOWED_IN_CORE.items():
        if module == allowed or module.startswith(allowed + "."):
            return allowed_names is None or names <= allowed_names
    return False


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
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [alias.name for alias in node.names if not _allowed(alias.name, set())]
        elif isinstance(node, ast.ImportFrom):
            names = {alias.name for alias in node.names}
            if node.level == 0 and not _allowed(node.module, names if node.module in ALLOWED_IN_CORE else set()):
                bad.append(f"{node.module} ({', '.join(sorted(names))})")
            elif node.level:
                bad.append(f"a relative import at line {node.lineno}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("open", "__import__"):
            pytest.fail(f"{module.name}:{node.lineno} calls {node.func.id}")
    assert not bad, f"{module.name} imports {bad}, which the pure core may not"


@pytest.mark.parametrize("module, names", [("os", set()), ("pathlib", {"Path"}), ("reconciler.shell.kube", set()),
                                           ("subprocess", set()), ("reconciler._time", {"utcnow"}), ("io", {"open"})])
def test_the_core_allow_list_refuses_what_does_io(module, names):
    assert not _allowed(module, names)


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
