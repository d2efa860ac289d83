"""Where the pinned Kubernetes binaries live (built by hack/build-binaries.sh)."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.errors import BinariesMissingError

# Must equal the k8s.io/kubernetes version in hack/k8s/go.mod (a unit test checks it).
KUBERNETES_VERSION = "v1.37.2"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubeadm", "kwok")
# kwok's node and pod stages, taken from the pinned kwok module by the build script.
KWOK_STAGES = "kwok-stages.yaml"

CACHE_ENV = "CARECONCILE_K8S_CACHE"


def bin_dir() -> Path:
    """``$CARECONCILE_K8S_CACHE/<version>/bin``, by default under ~/.cache/careconcile/k8s."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "careconcile" / "k8s"
    return Path(root) / KUBERNETES_VERSION / "bin"


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
