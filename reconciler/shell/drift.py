"""`careconcile drift`: read every cluster of one or more specs and compare it with its spec.

Read-only: no lock, no state written, nothing changed on a cluster or in the workspace. A
cluster that cannot be read is reported as such and the others are still checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from reconciler import __version__
from reconciler._time import rfc3339, utcnow
from reconciler.core.drift import REPORT_FORMAT_VERSION, ClusterDrift, DriftReport, authority_status, detect, \
    status_of, totals
from reconciler.core.spec import ClusterSpec, managed_authorities, resolve_authority
from reconciler.errors import CareconcileError, UsageError
from reconciler.shell.fleet import DEFAULT_PARALLELISM, map_bounded
from reconciler.shell.observe import observe
from reconciler.shell.session import open_cluster
from reconciler.shell.specfile import LoadedSpec


@dataclass(frozen=True)
class _Target:
    loaded: LoadedSpec
    cluster: ClusterSpec


def check_cluster(loaded: LoadedSpec, cluster: ClusterSpec, workspace: Path) -> ClusterDrift:
    started = time.monotonic()
    who = {"spec": str(loaded.path), "spec_name": loaded.document.metadata.name, "cluster": cluster.name}
    access = None
    try:
        access = open_cluster(loaded, cluster, workspace)
        findings, statuses = [], []
        for name in managed_authorities(cluster):
            observed = observe(access.for_authority(name))
            findings += detect(resolve_authority(loaded.document, cluster, name), observed, now=utcnow())
            statuses.append(authority_status(observed))
        return ClusterDrift(**who, status=status_of(findings), checked_at=rfc3339(utcnow()),
                            seconds=round(time.monotonic() - started, 3), authorities=statuses, findings=findings)
    except Exception as exc:  # noqa: BLE001
        # One cluster's failure, even one careconcile did not foresee, is that cluster's
        # result: a scheduled job still reports the other clusters and writes their metrics.
        return ClusterDrift(**who, status="error", checked_at=rfc3339(utcnow()), seconds=round(time.monotonic() - started, 3),
                            error=str(exc) if isinstance(exc, CareconcileError) else f"{type(exc).__name__}: {exc}")
    finally:
        if access is not None:
            access.close()


def check(specs: list[LoadedSpec], workspace: Path, *, only: str | None = None,
          parallelism: int = DEFAULT_PARALLELISM) -> DriftReport:
    targets = [_Target(loaded, cluster) for loaded in specs for cluster in loaded.document.spec.clusters
               if only is None or cluster.name == only]
    if only is not None and not targets:
        known = sorted({c.name for loaded in specs for c in loaded.document.spec.clusters})
        raise UsageError(f"no cluster named {only!r} in {', '.join(str(s.path) for s in specs)} "
                         f"(clusters: {', '.join(known)})")
    # Reports and metrics name a cluster by its spec's metadata.name and its own name.
    seen: dict[tuple[str, str], Path] = {}
    for target in targets:
        key = (target.loaded.document.metadata.name, target.cluster.name)
        if key in seen and seen[key] != target.loaded.path:
            raise UsageError(f"cluster {key[1]!r} of spec {key[0]!r} is declared in both {seen[key]} and "
                             f"{target.loaded.path}; their reports and metrics would collide",
                             hint="give the specs different metadata.name values")
        seen[key] = target.loaded.path
    created = rfc3339(utcnow())
    results = map_bounded(lambda target: check_cluster(target.loaded, target.cluster, workspace), targets,
                          parallelism)
    return DriftReport(format_version=REPORT_FORMAT_VERSION, careconcile_version=__version__, created=created,
                       specs=[str(loaded.path) for loaded in specs], clusters=results, totals=totals(results))
