"""Time as the Kubernetes API writes it: UTC, RFC 3339, MicroTime with microseconds.

A time written on one machine is compared only with a time of the same machine's clock:
the API server's (its Date header, and what careconcile writes from it; see
:meth:`reconciler.shell.kube.KubeClient.server_now`) or a node's (its Lease renewals).
This process's own clock (:func:`utcnow`) dates logs, certificates and file names.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import os
import time

# For tests only: this process's clock runs this many seconds off (negative: behind), as
# on a machine whose clock is skewed. The system clock is never touched.
CLOCK_OFFSET_ENV = "CARECONCILE_CLOCK_OFFSET_SECONDS"


def _offset() -> dt.timedelta:
    try:
        return dt.timedelta(seconds=float(os.environ.get(CLOCK_OFFSET_ENV) or 0))
    except (ValueError, OverflowError):
        return dt.timedelta(0)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) + _offset()


def monotonic() -> float:
    """Seconds on this process's monotonic clock: for durations measured here alone."""
    return time.monotonic()


def micro_time(moment: dt.datetime) -> str:
    """A Kubernetes MicroTime, e.g. 2026-11-28T10:00:00.000000Z."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> dt.datetime | None:
    """An RFC 3339 time or MicroTime; None when absent or not a time (edited by hand)."""
    if not text or not isinstance(text, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None  # no zone: not a time the API writes


def parse_http_date(text: str | None) -> dt.datetime | None:
    """An HTTP Date header (RFC 9110, whole seconds, GMT); None when absent or malformed."""
    if not text or not isinstance(text, str):
        return None
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return moment if moment is not None and moment.tzinfo is not None else None
