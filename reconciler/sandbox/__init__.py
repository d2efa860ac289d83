"""Local sandbox clusters: real etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok processes on 127.0.0.1, laid out as kubeadm lays out a node.

Public surface: :func:`up`, :func:`down`, :func:`status`, :func:`list_sandboxes`.
"""

from reconciler.sandbox._lifecycle import LEASE_HANDOVERS, SandboxInfo, down, list_sandboxes, status, up

__all__ = ["LEASE_HANDOVERS", "SandboxInfo", "down", "list_sandboxes", "status", "up"]
