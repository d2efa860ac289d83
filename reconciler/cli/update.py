"""`careconcile update credentials --cluster-ca --cluster-name NAME --kubeconfig ADMIN_KUBECONFIG`:
rotate a registered user cluster's CA in one command, as `bmctl update credentials` does."""

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
    creds = targets.add_parser(
        "credentials", help="rotate a user cluster's credentials from the admin cluster alone",
        description="Plan and apply a rotation of a registered user cluster's CA, using only what the admin "
                    "(management) cluster holds. Re-running it after an interruption finishes that rotation.")
    creds.add_argument("--cluster-ca", action="store_true", help="rotate the cluster CA (the only credential so far)")
    creds.add_argument("--cluster-name", required=True, metavar="NAME", type=dns_label_argument("cluster name"),
                       help="the user cluster, as registered")
    creds.add_argument("--kubeconfig", required=True, type=Path, metavar="ADMIN_KUBECONFIG",
                       help="kubeconfig of the admin (management) cluster")
    creds.add_argument("--context", metavar="CONTEXT", help="context in ADMIN_KUBECONFIG (default: its current one)")
    creds.add_argument("--namespace", metavar="NS", type=dns_label_argument("namespace"), help="the cluster's namespace in the admin cluster "
                                                         "(default: cluster-NAME)")
    creds.add_argument("--phase-timeout", type=float, default=300.0, metavar="SECONDS",
                       help="how long a phase's check waits for the cluster to show its result (default: 300)")
    add_workspace_option(creds)
    creds.set_defaults(handler=_update_credentials)


def _update_credentials(args: argparse.Namespace) -> int:
    if not args.cluster_ca:
        raise UsageError("say which credentials to update: --cluster-ca")
    outcome = credentials.update_cluster_ca(
        args.kubeconfig, args.cluster_name, context=args.context, namespace=args.namespace,
        workspace=session.workspace_root(args.workspace), phase_timeout=args.phase_timeout)
    if outcome.new_ca == outcome.old_ca:
        print(f"\nThe cluster CA of {outcome.cluster} is {outcome.new_ca}; nothing to do.")
    else:
        print(f"\nThe cluster CA of {outcome.cluster} is now {outcome.new_ca} (was {outcome.old_ca}); "
              f"{outcome.actions} actions done.")
    print(f"New kubeconfig: {outcome.kubeconfig}")
    print(f"Log: {outcome.log}")
    sys.stdout.flush()
    return EXIT_OK
