"""Where the pinned Kubernetes binaries live (built by hack/build-binaries.sh), and the
extension apiserver beside them (hack/build-extension-apiserver.sh)."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.errors import BinariesMissingError

# Must equal the k8s.io/kubernetes version in hack/k8s/go.mod (a unit test checks it).
KUBERNETES_VERSION = "v1.37.2"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubeadm", "kwok")
# kwok's node and pod stages, taken from the pinned kwok module by the build script.
KWOK_STAGES = "kwok-stages.yaml"

# k8s.io/sample-apiserver of the same release, the aggregated apiserver of
# `sandbox up --extension-apiserver`: built by a script, module and stamp of its own, so
# adding it did not force a rebuild of the binaries above.
EXTENSION_APISERVER = "sample-apiserver"

CACHE_ENV = "CARECONCILE_K8S_CACHE"


def _version_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "careconcile" / "k8s"
    return Path(root) / KUBERNETES_VERSION


def bin_dir() -> Path:
    """``$CARECONCILE_K8S_CACHE/<version>/bin``, by default under ~/.cache/careconcile/k8s."""
    return _version_dir() / "bin"


def extension_bin_dir() -> Path:
    """``$CARECONCILE_K8S_CACHE/<version>/extension/bin``: where the extension apiserver is."""
    return _version_dir() / "extension" / "bin"


def missing_binaries() -> list[str]:
    directory = bin_dir()
    missing = [name for name in BINARIES if not os.access(directory / name, os.X_OK)]
    return missing + ([KWOK_STAGES] if not (directory / KWOK_STAGES).is_file() else [])


def require_binaries() -> Path:
    """The bin directory, or a clear error that says how to build what is missing."""
    missing = missing_binaries()
    if missing:
        raise BinariesMissingError(
            f"Kubernetes {KUBERNETES_VERSION} binaries missing from {bin_dir()}: {', '.join(missing)}",
            hint="run `hack/build-binaries.sh` (or `make binaries`) to build them from Go modules",
        )
    return bin_dir()


def require_extension_apiserver() -> Path:
    """The extension apiserver's executable, or a clear error that says how to build it."""
    path = extension_bin_dir() / EXTENSION_APISERVER
    if not os.access(path, os.X_OK):
        raise BinariesMissingError(
            f"the extension apiserver ({EXTENSION_APISERVER}, Kubernetes {KUBERNETES_VERSION}) is missing: "
            f"no executable {path}",
            hint="run `hack/build-extension-apiserver.sh` (or `make extension-apiserver`) to build it from Go modules",
        )
    return path
