"""Whether a restarted kubelet runs again, judged from its node's Lease by one clock at a time.

A node's Lease carries two clocks: ``spec.renewTime`` is the node's (the kubelet writes it),
and the API server stamps ``metadata.managedFields[].time`` by its own when it stores a
renewal. careconcile's machine has a third clock, which may disagree with both by more than
a Lease's duration. So each comparison here is between two times of the same clock:

- renewed since the restart: the renewTime now against the renewTime read just after the
  restart (the node's clock), or else the time the API server stored the renewal against
  the API server's time just after the restart (its Date header);
- renewed lately: the time the API server stored the renewal against the API server's time
  now. Without those (a server that keeps no managedFields) the check is skipped rather
  than made across clocks.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from reconciler._time import parse_time

DEFAULT_NODE_LEASE_SECONDS = 40  # the kubelet's nodeLeaseDurationSeconds
NOT_RENEWED = "has not been renewed since the restart"


def lease_spec(lease: Any) -> dict[str, Any]:
    """A Lease's spec as the API answered it, read as untrusted: {} when it is not an object."""
    spec = lease.get("spec") if isinstance(lease, dict) else None
    return spec if isinstance(spec, dict) else {}


def lease_duration(spec: dict[str, Any], default: int) -> dt.timedelta:
    """leaseDurationSeconds, or ``default`` when it is missing or not a sane number of seconds."""
    seconds = spec.get("leaseDurationSeconds")
    return dt.timedelta(seconds=seconds if type(seconds) is int and 0 < seconds <= 86400 else default)


def renewal_stored_at(lease: dict[str, Any]) -> dt.datetime | None:
    """When the API server stored the Lease's latest renewTime, by its clock: the time of the
    managedFields entry that owns ``spec.renewTime``; None when no entry says."""
    metadata = lease.get("metadata") if isinstance(lease, dict) else None
    fields = metadata.get("managedFields") if isinstance(metadata, dict) else None
    for entry in fields if isinstance(fields, list) else []:
        if not isinstance(entry, dict):
            continue
        fields_v1 = entry.get("fieldsV1")
        spec = fields_v1.get("f:spec") if isinstance(fields_v1, dict) else None
        if isinstance(spec, dict) and "f:renewTime" in spec:
            return parse_time(entry.get("time"))
    return None


def kubelet_lease_problem(lease: dict[str, Any], *, renewed_at_restart: dt.datetime | None,
                          server_at_restart: dt.datetime | None, server_now: dt.datetime | None) -> str | None:
    """Why the node's Lease does not show a kubelet that runs again since its restart; None
    when it does. ``renewed_at_restart``: the Lease's renewTime read just after the restart
    (the node's clock); ``server_at_restart`` and ``server_now``: the API server's clock just
    after the restart and now."""
    spec = lease_spec(lease)
    renewed = parse_time(spec.get("renewTime"))
    stored = renewal_stored_at(lease)
    duration = lease_duration(spec, DEFAULT_NODE_LEASE_SECONDS)
    if renewed is None:
        return NOT_RENEWED
    if renewed_at_restart is not None:
        if renewed <= renewed_at_restart:
            return NOT_RENEWED
    elif server_at_restart is not None and stored is not None:
        if stored <= server_at_restart:
            return NOT_RENEWED
    # else: the Lease could not be read at the restart and the server keeps no times; a Lease
    # renewed lately (below) is the only sign left that needs no second clock.
    if stored is not None and server_now is not None and server_now - stored > duration * 2:
        return f"was last renewed {int((server_now - stored).total_seconds())}s ago by the API server's clock"
    return None
