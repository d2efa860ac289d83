"""`careconcile force-unlock CLUSTER LOCK_ID --spec SPEC`: remove a lock whose run is gone."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reconciler.cli._common import add_workspace_option, dns_label_argument
from reconciler.errors import EXIT_OK, LockError, UsageError
from reconciler.shell import session
from reconciler.shell.lock import LEASE_NAME, NAMESPACE as LOCK_NAMESPACE, current_lock, force_unlock
from reconciler.shell.specfile import load_spec


def register(commands: Any) -> None:
    parser = commands.add_parser("force-unlock", help="remove a cluster's lock left by a run that is gone")
    parser.add_argument("cluster", metavar="CLUSTER", type=dns_label_argument("cluster name"))
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
    # Admin mode holds two Leases (management namespace, and the cluster's kube-system);
    # the id says which one to remove.
    places = [(access.lock_client or access.client, access.lock_namespace, access.lock_name)]
    if access.lock_client is not None:
        places.append((access.client, LOCK_NAMESPACE, LEASE_NAME))
    found = []
    try:
        if len(places) == 1:
            client, namespace, name = places[0]
            removed = force_unlock(client, args.cluster, args.lock_id, namespace=namespace, name=name)
            print(f"Removed the lock of cluster {args.cluster}: {removed.describe()}")
            return EXIT_OK
        for client, namespace, name in places:
            held = current_lock(client, namespace=namespace, name=name)
            if held is not None and held.id == args.lock_id:
                removed = force_unlock(client, args.cluster, args.lock_id, namespace=namespace, name=name)
                print(f"Removed the lock of cluster {args.cluster} (Lease {namespace}/{name}): {removed.describe()}")
                return EXIT_OK
            if held is not None:
                found.append(f"{namespace}/{name} holds {held.id}")
    finally:
        access.close()
    raise LockError(f"cluster {args.cluster}: no lock with id {args.lock_id}"
                    + (f" ({'; '.join(found)})" if found else "; the cluster is not locked"))
