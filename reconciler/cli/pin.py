"""`careconcile pin SPEC`: write each cluster's live CA fingerprint into the spec.

After a rotation the spec in Git should record the CA that is live, so that a later plan
(or drift check) notices a CA nobody asked for. `pin` reads each cluster's CA of record
from its control-plane nodes, takes no lock and changes nothing on the cluster; it
rewrites only the `fingerprint` values in the spec file, keeping its comments, order and
formatting (reconciler.core.pinning). All clusters are read before anything is written:
when one cannot be pinned (a rotation in progress, control planes that disagree), the
file stays as it was.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from reconciler._files import atomic_write
from reconciler.cli._common import add_workspace_option
from reconciler.core.observed import ClusterObservation, fp
from reconciler.core.pinning import pin_fingerprints
from reconciler.core.record import resolve_record
from reconciler.core.spec import AUTHORITY_FIELDS, PRIMARY_AUTHORITY, managed_authorities
from reconciler.errors import EXIT_CHANGES, EXIT_OK, OutputFileError, PlanConflictError
from reconciler.shell import session
from reconciler.shell.observe import observe
from reconciler.shell.specfile import load_spec


def register(commands: Any) -> None:
    pin = commands.add_parser(
        "pin", help="write the live cluster CA's fingerprint into the spec, keeping its comments and layout")
    pin.add_argument("spec", type=Path, metavar="SPEC")
    pin.add_argument("--cluster", metavar="NAME", help="only this cluster of the spec")
    pin.add_argument("--check", action="store_true",
                     help="write nothing; exit 2 when the spec would change, 0 when every fingerprint is pinned")
    add_workspace_option(pin)
    pin.set_defaults(handler=_pin)


def live_ca(observed: ClusterObservation) -> str:
    """The fingerprint of the cluster's CA of record, which every control-plane node must
    agree on; refused while a rotation is in progress (its CA is about to change)."""
    name = observed.cluster
    state = observed.state
    if state.in_progress:
        raise PlanConflictError(
            f"cluster {name}: a rotation is in progress (to {fp(state.target)}); pinning the CA "
            "that is about to be replaced would be wrong; nothing was written",
            hint="finish it with `careconcile apply SPEC` (or undo it with `careconcile rollback SPEC`), "
                 "then pin; `--cluster NAME` pins the other clusters")
    resolved = resolve_record(observed.records)
    if resolved.problem is not None:
        raise PlanConflictError(f"cluster {name}: {resolved.message}; nothing was written")
    return resolved.fingerprint


def _pin(args: argparse.Namespace) -> int:
    loaded = load_spec(args.spec)
    accesses = session.open_clusters(loaded, session.workspace_root(args.workspace), args.cluster)
    live: dict[str, dict[str, str]] = {}  # authority -> cluster -> fingerprint
    with contextlib.ExitStack() as stack:
        for access in accesses.values():
            stack.callback(access.client.close)
        for name, access in accesses.items():
            for authority in managed_authorities(access.cluster):
                live.setdefault(authority, {})[name] = live_ca(observe(access.for_authority(authority)))

    path = args.spec.resolve()  # a spec reached through a symlink is rewritten where it lives
    text = path.read_bytes().decode("utf-8")  # bytes: CRLF line endings stay as they are
    pinned = text
    for authority, fingerprints in live.items():
        pinned = pin_fingerprints(pinned, str(args.spec), fingerprints, authority)
    clusters = {cluster.name: cluster for cluster in loaded.document.spec.clusters}
    for authority, fingerprints in live.items():
        for name, value in fingerprints.items():
            before = getattr(clusters[name].authorities, AUTHORITY_FIELDS[authority]).fingerprint
            what = "" if authority == PRIMARY_AUTHORITY else f" {authority}"
            if before == value:
                print(f"cluster {name}:{what} pinned {value} (unchanged)")
            else:
                print(f"cluster {name}:{what} {'would pin' if args.check else 'pinned'} {value} "
                      f"(was: {before or 'none'})")
    if pinned == text:
        return EXIT_OK
    if args.check:
        return EXIT_CHANGES
    stat = path.stat()
    try:
        atomic_write(path, pinned.encode("utf-8"), stat.st_mode & 0o7777, owner=(stat.st_uid, stat.st_gid))
    except OSError as exc:
        raise OutputFileError(f"{args.spec}: cannot write the pinned spec: {exc.strerror or exc}") from exc
    return EXIT_OK
