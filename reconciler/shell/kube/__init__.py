"""A small Kubernetes API client: JSON over kept-alive HTTPS connections, one per thread.

Why not the ``kubernetes`` package: it writes client keys to temp files (left behind when
the process is SIGKILLed), it is slow to import and its errors are untyped. Here the TLS
material lives only in memory (``memfd``), and every failure is one of the typed errors of
:mod:`reconciler.errors`, with a message naming the request and the cluster.

Kubeconfigs are read as kubectl reads them (:mod:`._kubeconfig`: KUBECONFIG merged, exec
plugins, impersonation, every unsupported field refused by name); credentials come from a
source that follows changes (:mod:`._credentials`); one client (:mod:`._client`) refreshes
them after a 401 and backs off when the server is busy. The TLS context (:mod:`._tls`) and
the connections (:mod:`._transport`, through a proxy when one is set, with the certificate
checked for ``tls-server-name``) are their own modules.

Public surface: :func:`tls_context`, :class:`KubeTarget`, :func:`load_kubeconfig`,
:func:`kubeconfig_target`, :func:`kubeconfig_paths`, :class:`Transport`,
:class:`HTTPSTransport`, :class:`KubeClient`, :class:`KubeconfigClient`,
:class:`CredentialPluginError`, and for a pod that uses its ServiceAccount
(``inCluster: true``): :func:`load_in_cluster`, :class:`InClusterClient`,
:data:`SERVICEACCOUNT_DIR_ENV`, :func:`serviceaccount_dir`.
"""

from reconciler.shell.kube._client import InClusterClient, KubeClient, KubeconfigClient
from reconciler.shell.kube._credentials import (SERVICEACCOUNT_DIR_ENV, CredentialPluginError, load_in_cluster,
                                                serviceaccount_dir)
from reconciler.shell.kube._kubeconfig import KubeTarget, kubeconfig_paths, kubeconfig_target, load_kubeconfig
from reconciler.shell.kube._tls import tls_context
from reconciler.shell.kube._transport import HTTPSTransport, Transport

__all__ = ["CredentialPluginError", "HTTPSTransport", "InClusterClient", "KubeClient", "KubeTarget",
           "KubeconfigClient", "SERVICEACCOUNT_DIR_ENV", "Transport", "kubeconfig_paths", "kubeconfig_target",
           "load_in_cluster", "load_kubeconfig", "serviceaccount_dir", "tls_context"]
