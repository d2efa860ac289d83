"""`careconcile register CLUSTER`: record a user cluster in its management cluster (admin mode)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reconciler.cli._common import dns_label_argument
from reconciler.core.admin import parse_node_option
from reconciler.errors import EXIT_OK, UsageError
from reconciler.shell import admin
from reconciler.shell.kube import KubeconfigClient
from reconciler.shell.specfile import load_spec


def _node(value: str):
    try:
        return parse_node_option(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "register", help="record a cluster in a management cluster, so that it alone is enough to rotate it",
        description="Writes, in the cluster's namespace of the management cluster, the Secrets <CLUSTER>-ca and "
                    "<CLUSTER>-kubeconfig (as Cluster API keeps them), the node inventory Secret "
                    "<CLUSTER>-careconcile-nodes (removing the ConfigMap of that name an older careconcile wrote) and, with --ssh-key, the Secret <CLUSTER>-ssh-key. Idempotent. "
                    "See docs/admin-mode.md.")
    parser.add_argument("cluster", metavar="CLUSTER", type=dns_label_argument("cluster name"), help="the cluster's name (its objects are named after it)")
    parser.add_argument("--admin-kubeconfig", type=Path, metavar="ADMIN",
                        help="kubeconfig of the management cluster (with --from-spec: the spec's management one "
                             "if unset)")
    parser.add_argument("--admin-context", metavar="CONTEXT", help="context in ADMIN; its current one if unset")
    parser.add_argument("--namespace", metavar="NS", type=dns_label_argument("namespace"),
                        help="namespace in the management cluster (default cluster-CLUSTER)")
    parser.add_argument("--kubeconfig", type=Path, metavar="USER",
                        help="an admin kubeconfig of the cluster, for the Secret CLUSTER-kubeconfig")
    parser.add_argument("--context", metavar="CONTEXT", help="context in USER; its current one if unset")
    parser.add_argument("--ca-cert", type=Path, metavar="FILE", help="the cluster CA's certificate (pki/ca.crt)")
    parser.add_argument("--ca-key", type=Path, metavar="FILE", help="the cluster CA's key (pki/ca.key)")
    parser.add_argument("--node", type=_node, action="append", default=[], metavar="NAME=ROLE,ADDRESS[,user=U][,port=P]",
                        help="a node (repeat for each): ROLE is control-plane or worker; further options root=DIR "
                             "(its files are local, under DIR), access=local|ssh, host-key='ssh-ed25519 AAAA...'")
    parser.add_argument("--ssh-key", type=Path, metavar="FILE", help="the private key to reach the nodes over SSH")
    parser.add_argument("--from-spec", type=Path, metavar="SPEC",
                        help="take the cluster's kubeconfig and nodes from this careconcile spec, and the CA from its "
                             "first control-plane node's files")
    parser.set_defaults(handler=_register)


def _register(args: argparse.Namespace) -> int:
    if (args.ca_cert is None) != (args.ca_key is None):
        raise UsageError("--ca-cert and --ca-key go together")
    admin_kubeconfig, admin_context = args.admin_kubeconfig, args.admin_context
    if args.from_spec is not None:
        if args.node:
            raise UsageError("--node and --from-spec exclude each other: the spec lists the nodes")
        loaded = load_spec(args.from_spec)
        cluster = next((c for c in loaded.document.spec.clusters if c.name == args.cluster), None)
        if cluster is None:
            known = ", ".join(c.name for c in loaded.document.spec.clusters)
            raise UsageError(f"{args.from_spec}: no cluster named {args.cluster!r} (clusters: {known})")
        if admin_kubeconfig is None and cluster.management is not None:
            admin_kubeconfig = loaded.management_kubeconfig_path(cluster)
            admin_context = admin_context or cluster.management.context
        registration = admin.registration_from_spec(
            loaded, cluster, args.namespace, kubeconfig_path=args.kubeconfig, context=args.context,
            ca_cert=args.ca_cert, ca_key=args.ca_key, ssh_key=args.ssh_key)
    else:
        missing = [option for option, value in (("--kubeconfig", args.kubeconfig), ("--ca-cert", args.ca_cert),
                                                ("--node", args.node)) if not value]
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (or take them from a spec with --from-spec SPEC)")
        registration = admin.registration_from_files(
            args.cluster, args.namespace, kubeconfig_path=args.kubeconfig, context=args.context,
            ca_cert=args.ca_cert, ca_key=args.ca_key, nodes=args.node, ssh_key=args.ssh_key)
    if admin_kubeconfig is None:
        raise UsageError("--admin-kubeconfig is needed: the kubeconfig of the management cluster")
    with KubeconfigClient(admin_kubeconfig, admin_context) as client:
        written = admin.register(client, registration)
    print(f"Registered cluster {registration.cluster} in namespace {registration.namespace} of the management "
          f"cluster {client.target.server} ({admin_kubeconfig}, context {client.context}):")
    for item in written:
        print(f"  {item.describe()}")
    print(f"A spec reaches it with `management: {{kubeconfig: {admin_kubeconfig}, namespace: {registration.namespace}}}`"
          " and no kubeconfig of its own (docs/admin-mode.md).")
    return EXIT_OK
