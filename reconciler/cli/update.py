"""`careconcile update credentials --cluster-ca --cluster-name NAME --kubeconfig ADMIN_KUBECONFIG`
rotates a registered user cluster's CA in one command, as `bmctl update credentials` does;
`careconcile update credentials certificate-authorities rotate --cluster NAME --kubeconfig
ADMIN_KUBECONFIG` rotates its cluster, etcd and front-proxy CAs, as `bmctl update credentials
certificate-authorities rotate` does."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reconciler.cli._common import add_workspace_option, dns_label_argument
from reconciler.errors import EXIT_OK, UsageError
from reconciler.shell import credentials, session


def register(commands: Any) -> None:
    update = commands.add_parser("update", help="imperative changes to a cluster registered in an admin cluster")
    targets = update.add_subparsers(dest="target", metavar="WHAT", required=True)
    # No abbreviations: `rotate --cluster` must not be taken for this parser's --cluster-ca or --cluster-name.
    creds = targets.add_parser(
        "credentials", allow_abbrev=False, help="rotate a user cluster's credentials from the admin cluster alone",
        description="Plan and apply a rotation of a registered user cluster's CA, using only what the admin "
                    "(management) cluster holds. Re-running it after an interruption finishes that rotation.")
    creds.add_argument("--cluster-ca", action="store_true", help="rotate the cluster CA alone")
    _add_target_options(creds, "--cluster-name")
    creds.set_defaults(handler=_update_credentials, authorities=None)
    cas = creds.add_subparsers(dest="credentials", metavar="WHICH")
    rotate = cas.add_parser("certificate-authorities", help="the cluster's certificate authorities").add_subparsers(
        dest="verb", metavar="VERB", required=True).add_parser(
        "rotate", help="rotate the cluster CA, the etcd CA and the front-proxy CA, one after another",
        description="Rotate the cluster, etcd and front-proxy CAs of a registered user cluster from the admin "
                    "cluster alone. Re-running it after an interruption finishes the rotations in progress.")
    # Its options default to nothing at all, so that ones given before the subcommand stay.
    _add_target_options(rotate, "--cluster", "--cluster-name", default=argparse.SUPPRESS)
    rotate.set_defaults(handler=_update_credentials, authorities=credentials.ALL_AUTHORITIES)


def _add_target_options(parser: Any, *cluster_flags: str, default: Any = None) -> None:
    parser.add_argument(*cluster_flags, dest="cluster_name", metavar="NAME", type=dns_label_argument("cluster name"),
                        default=default, help="the user cluster, as registered")
    parser.add_argument("--kubeconfig", type=Path, metavar="ADMIN_KUBECONFIG", default=default,
                        help="kubeconfig of the admin (management) cluster (default, as kubectl: the files "
                             "KUBECONFIG lists, merged, else ~/.kube/config)")
    parser.add_argument("--context", metavar="CONTEXT", default=default,
                        help="context in ADMIN_KUBECONFIG (default: its current one)")
    parser.add_argument("--namespace", metavar="NS", type=dns_label_argument("namespace"), default=default,
                        help="the cluster's namespace in the admin cluster (default: cluster-NAME)")
    parser.add_argument("--phase-timeout", type=float, metavar="SECONDS",
                        default=300.0 if default is None else default,
                        help="how long a phase's check waits for the cluster to show its result (default: 300)")
    add_workspace_option(parser)


def _update_credentials(args: argparse.Namespace) -> int:
    if args.authorities is None and not args.cluster_ca:
        raise UsageError("say which credentials to update: --cluster-ca, or certificate-authorities rotate")
    if args.authorities is not None and args.cluster_ca:
        raise UsageError("--cluster-ca rotates the cluster CA alone, certificate-authorities rotate all three: "
                         "give one of them")
    if args.cluster_name is None:
        raise UsageError("update credentials needs --cluster-name")
    outcome = credentials.update_cluster_ca(
        args.kubeconfig, args.cluster_name, context=args.context, namespace=args.namespace,
        workspace=session.workspace_root(args.workspace), phase_timeout=args.phase_timeout,
        authorities=args.authorities or ("clusterCA",))
    for authority, (old, new) in outcome.cas.items():
        what = "cluster CA" if authority == "clusterCA" else authority
        if new == old:
            print(f"\nThe {what} of {outcome.cluster} is {new}; nothing to do.")
        else:
            print(f"\nThe {what} of {outcome.cluster} is now {new} (was {old}).")
    print(f"{outcome.actions} actions done.")
    print(f"New kubeconfig: {outcome.kubeconfig}")
    print(f"Log: {outcome.log}")
    sys.stdout.flush()
    return EXIT_OK
