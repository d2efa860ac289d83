"""`careconcile force-unlock CLUSTER LOCK_ID --spec SPEC`: remove a lock whose run is gone."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reconciler.cli._common import add_workspace_option
from reconciler.errors import EXIT_OK, UsageError
from reconciler.shell import session
from reconciler.shell.lock import force_unlock
from reconciler.shell.specfile import load_spec


def register(commands: Any) -> None:
    parser = commands.add_parser("force-unlock", help="remove a cluster's lock left by a run that is gone")
    parser.add_argument("cluster", metavar="CLUSTER")
    parser.add_argument("lock_id", metavar="LOCK_ID", help="the id the lock error printed")
    parser.add_argument("--spec", type=Path, required=True, metavar="SPEC", help="the spec that names the cluster")
    add_workspace_option(parser)
    parser.set_defaults(handler=_force_unlock)


def _force_unlock(args: argparse.Namespace) -> int:
    loaded = load_spec(args.spec)
    cluster = next((c for c in loaded.document.spec.clusters if c.name == args.cluster), None)
    if cluster is None:
        raise UsageError(f"{args.spec}: no cluster named {args.cluster!r}")
    # Unlocking needs the API only: a node that cannot be reached must not keep the lock in place.
    access = session.open_cluster(loaded, cluster, session.workspace_root(args.workspace), check_nodes=False)
    removed = force_unlock(access.lock_client or access.client, args.cluster, args.lock_id,
                           namespace=access.lock_namespace, name=access.lock_name)
    print(f"Removed the lock of cluster {args.cluster}: {removed.describe()}")
    return EXIT_OK
