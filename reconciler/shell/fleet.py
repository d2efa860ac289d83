"""Many clusters at once: reading them concurrently, within a bound.

Reading a cluster is mostly waiting (API calls, TLS handshakes, SSH), so threads overlap
the waits; each cluster has its own client, and results come back in the input order so
reports and plans do not depend on which cluster answered first.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

DEFAULT_PARALLELISM = 8

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_bounded(work: Callable[[Item], Result], items: Iterable[Item], parallelism: int, *,
                interrupted: threading.Event | None = None) -> list[Result]:
    """``[work(item) for item in items]`` with at most ``parallelism`` running at once.
    The first exception (in input order) is raised after every item has finished.

    On Ctrl-C (any exception that is not an ``Exception``) the items not yet started are
    dropped and ``interrupted`` is set, so that running work can stop at its next safe
    point; the interrupt is raised once the running items have returned. Threads cannot
    be stopped from outside, so work that runs long should watch ``interrupted``."""
    items = list(items)
    if parallelism <= 1 or len(items) <= 1:
        results: list[Result] = []
        first: Exception | None = None
        for item in items:
            try:
                results.append(work(item))
            except Exception as exc:  # the others still run, as they would in threads
                first = first or exc
        if first is not None:
            raise first
        return results
    with ThreadPoolExecutor(max_workers=min(parallelism, len(items)), thread_name_prefix="careconcile") as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException as exc:
            if not isinstance(exc, Exception):
                if interrupted is not None:
                    interrupted.set()
                for future in futures:
                    future.cancel()  # only those not yet started
            raise
