"""One careconcile run at a time per cluster: a Lease as the cluster's lock.

Like Terraform's state lock: a run takes the lock before it changes anything, the lock
records who holds it and why, and ``careconcile force-unlock CLUSTER ID`` removes a lock
whose holder is gone. A lock is taken over without asking only when it is provably stale:
its TTL ran out without a renewal, or its holder was a process on this host that is no
longer alive. Every takeover and removal is conditional on the resourceVersion (or uid)
just read, so two runs racing for a stale lock cannot both win.

The Lease ``kube-system/careconcile-lock`` (in admin mode ``<cluster>-careconcile-lock`` in the
cluster's namespace of the management cluster): ``spec.holderIdentity`` is the lock id,
``spec.leaseDurationSeconds`` the TTL, ``spec.acquireTime``/``renewTime`` when it was
taken and last renewed; the rest is in ``careconcile.dev/lock-*`` annotations.

Every time in the Lease is the API server's clock (:meth:`KubeClient.server_now`), and a
lock's expiry is judged by that clock too: runs on machines whose clocks disagree neither
take over a live lock nor wait on a dead one for longer than its TTL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import getpass
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler._process import process_alive
from reconciler._time import micro_time, parse_time, rfc3339, utcnow
from reconciler.errors import APIConflictError, APINotFoundError, LockError, LockHeldError
from reconciler.shell.kube import KubeClient

NAMESPACE = "kube-system"
LEASE_NAME = "careconcile-lock"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"
LEASE = f"{LEASES}/{LEASE_NAME}"


def lease_paths(namespace: str = NAMESPACE, name: str = LEASE_NAME) -> tuple[str, str]:
    """The API paths of the Leases collection of ``namespace`` and of the lock Lease ``name``."""
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return leases, f"{leases}/{name}"
ANNOTATION = "careconcile.dev/lock-"
MANAGED_BY = {"app.kubernetes.io/managed-by": "careconcile"}
DEFAULT_TTL = 900

# Lost races (another run created, took over or renewed in between) are retried this often.
_ATTEMPTS = 3


def process_space() -> str:
    """This boot's id and this process's PID namespace: where a pid names one process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}"


@dataclass(frozen=True)
class LockInfo:
    """Who holds a cluster's lock, and since when."""

    id: str
    holder: str  # user@host
    host: str
    pid: int
    operation: str  # e.g. "apply"
    version: str  # careconcile's version
    created: str  # RFC 3339
    ttl: int  # seconds without a renewal after which the lock is stale
    renewed: str | None = None  # the Lease's renewTime (MicroTime)
    # The boot and PID namespace the pid belongs to: two containers may share a host name
    # but not their pids, so a pid is only checked where it means the same process.
    process_space: str = ""
    took_over_from: "LockInfo | None" = None  # the stale lock this one replaced

    @classmethod
    def new(cls, operation: str, ttl: int, *, now: dt.datetime | None = None) -> "LockInfo":
        """A lock taken at ``now``: the API server's clock (this process's if unset)."""
        host = socket.gethostname()
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        now = now or utcnow()
        return cls(id=str(uuid.uuid4()), holder=f"{user}@{host}", host=host, pid=os.getpid(),
                   operation=operation, version=__version__, created=rfc3339(now), ttl=ttl,
                   renewed=micro_time(now), process_space=process_space())

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> "LockInfo":
        """Read back what :func:`lease_body` wrote; a Lease written by hand still reads,
        with "unknown" where it lacks an annotation."""
        spec = lease.get("spec") or {}
        notes = (lease.get("metadata") or {}).get("annotations") or {}
        try:
            pid = int(notes.get(f"{ANNOTATION}pid", 0))
        except ValueError:
            pid = 0
        return cls(
            id=str(spec.get("holderIdentity") or ""),
            holder=notes.get(f"{ANNOTATION}holder", "unknown"),
            host=notes.get(f"{ANNOTATION}host", "unknown"),
            pid=pid,
            operation=notes.get(f"{ANNOTATION}operation", "unknown"),
            version=notes.get(f"{ANNOTATION}version", "unknown"),
            created=notes.get(f"{ANNOTATION}created") or spec.get("acquireTime") or "unknown",
            ttl=int(spec.get("leaseDurationSeconds") or 0),
            renewed=spec.get("renewTime") or spec.get("acquireTime"),
            process_space=notes.get(f"{ANNOTATION}process-space", ""),
        )

    def expires_at(self) -> dt.datetime | None:
        renewed = parse_time(self.renewed)
        return renewed + dt.timedelta(seconds=self.ttl) if renewed and self.ttl > 0 else None

    def describe(self) -> str:
        return (f"lock {self.id} held by {self.holder} (pid {self.pid} on {self.host}, "
                f"operation {self.operation}, careconcile {self.version}, created {self.created})")


def lease_body(info: LockInfo, *, acquired: str | None = None, namespace: str = NAMESPACE,
               name: str = LEASE_NAME) -> dict[str, Any]:
    """The Lease that records ``info``."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(MANAGED_BY),
            "annotations": {
                f"{ANNOTATION}holder": info.holder,
                f"{ANNOTATION}host": info.host,
                f"{ANNOTATION}pid": str(info.pid),
                f"{ANNOTATION}operation": info.operation,
                f"{ANNOTATION}version": info.version,
                f"{ANNOTATION}created": info.created,
                f"{ANNOTATION}process-space": info.process_space,
            },
        },
        "spec": {
            "holderIdentity": info.id,
            "leaseDurationSeconds": info.ttl,
            "acquireTime": acquired or info.renewed,
            "renewTime": info.renewed,
        },
    }


def stale_reason(holder: LockInfo, *, now: dt.datetime | None = None) -> str | None:
    """Why a lock may be taken over without asking, or None while its holder may be alive.
    ``now`` is the clock the Lease's times were written by: the API server's."""
    expires = holder.expires_at()
    if expires is not None and expires < (now or utcnow()):
        return f"its TTL of {holder.ttl}s ran out at {rfc3339(expires)}"
    if holder.host == socket.gethostname() and holder.process_space and \
            holder.process_space == process_space() and holder.pid > 0 and not process_alive(holder.pid):
        return f"its process {holder.pid} on this host is gone"
    return None


def current_lock(client: KubeClient, *, namespace: str = NAMESPACE, name: str = LEASE_NAME) -> LockInfo | None:
    """The lock on the cluster ``client`` talks to, or None."""
    try:
        return LockInfo.from_lease(client.get(lease_paths(namespace, name)[1]))
    except APINotFoundError:
        return None


def force_unlock(client: KubeClient, cluster: str, lock_id: str, *, namespace: str = NAMESPACE,
                 name: str = LEASE_NAME) -> LockInfo:
    """Remove the lock ``lock_id`` whoever holds it; the id guards against removing a
    lock taken since its holder was looked at. Returns the lock removed."""
    lease_path = lease_paths(namespace, name)[1]
    for _ in range(_ATTEMPTS):
        try:
            lease = client.get(lease_path)
        except APINotFoundError:
            raise LockError(f"cluster {cluster}: not locked (no lock {lock_id} to remove)") from None
        held = LockInfo.from_lease(lease)
        if held.id != lock_id:
            raise LockError(f"cluster {cluster}: {held.describe()}, not lock {lock_id}; nothing removed",
                            hint=f"careconcile force-unlock {cluster} {held.id} --spec SPEC")
        metadata = lease.get("metadata") or {}
        try:
            client.delete(lease_path, uid=metadata.get("uid"), resource_version=metadata.get("resourceVersion"))
        except APINotFoundError:
            raise LockError(f"cluster {cluster}: not locked (lock {lock_id} was removed meanwhile)") from None
        except APIConflictError:
            continue  # renewed in between: read again, the id decides
        return held
    raise LockError(f"cluster {cluster}: lock {lock_id} kept changing while being removed; try again")


class ClusterLock:
    """The lock of one cluster for one operation. ``with ClusterLock(...) as info:``
    acquires and releases; a long run calls :meth:`renew` well within ``ttl``."""

    def __init__(self, client: KubeClient, cluster: str, *, operation: str, ttl: int = DEFAULT_TTL,
                 namespace: str = NAMESPACE, name: str = LEASE_NAME) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.client = client
        self.namespace, self.name = namespace, name
        self._leases, self._lease = lease_paths(namespace, name)
        self.cluster = cluster
        self.operation = operation
        self.ttl = ttl
        self.info: LockInfo | None = None

    def __enter__(self) -> LockInfo:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> LockInfo:
        """Take the lock, or take over a stale one; LockHeldError when it is held."""
        if self.info is not None:
            raise LockError(f"cluster {self.cluster}: lock {self.info.id} is already held by this ClusterLock")
        for _ in range(_ATTEMPTS):
            mine = LockInfo.new(self.operation, self.ttl, now=self._server_now())
            try:
                self.client.create(self._leases, self._body(mine))
                self.info = mine
                return mine
            except APIConflictError:
                pass
            try:
                lease = self.client.get(self._lease)
            except APINotFoundError:
                continue  # released in between: create again
            held = LockInfo.from_lease(lease)
            reason = stale_reason(held, now=self._server_now())  # the clock of the GET just answered
            if reason is None:
                raise LockHeldError(
                    f"cluster {self.cluster} is locked: {held.describe()}"
                    + (f", expires {rfc3339(held.expires_at())} unless renewed" if held.expires_at() else ""),
                    hint=f"if that run is gone, remove its lock: careconcile force-unlock {self.cluster} {held.id} "
                         "--spec SPEC",
                )
            mine = dataclasses.replace(mine, took_over_from=held)
            body = self._body(mine)
            # The resourceVersion just read makes the takeover conditional: of two runs
            # taking over the same stale lock, the second gets 409 and reads the winner.
            body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
            body["spec"]["leaseTransitions"] = int((lease.get("spec") or {}).get("leaseTransitions") or 0) + 1
            try:
                self.client.replace(self._lease, body)
            except (APIConflictError, APINotFoundError):
                continue
            self.info = mine
            return mine
        raise LockError(f"cluster {self.cluster}: the lock kept changing hands while being acquired; try again")

    def renew(self) -> LockInfo:
        """Push the expiry out by another ``ttl``; LockError if the lock is no longer ours."""
        mine = self._held()
        for _ in range(_ATTEMPTS):
            lease = self._read_own_lease("renew")
            if lease is None:
                raise LockError(f"cluster {self.cluster}: cannot renew lock {mine.id}: it was removed "
                                f"(force-unlocked?) while this run held it")
            lease.setdefault("spec", {})["renewTime"] = micro_time(self._server_now())
            try:
                renewed = self.client.replace(self._lease, lease)  # conditional: carries the read resourceVersion
            except (APIConflictError, APINotFoundError):
                continue  # changed in between: read again, the id decides
            self.info = dataclasses.replace(mine, renewed=(renewed.get("spec") or {}).get("renewTime"))
            return self.info
        raise LockError(f"cluster {self.cluster}: lock {mine.id} could not be renewed; it kept changing")

    def release(self) -> None:
        """Remove the lock if it is still ours; LockError if another run took it over.
        A lock already gone (force-unlocked) is left at that."""
        if self.info is None:
            return
        for _ in range(_ATTEMPTS):
            lease = self._read_own_lease("release")
            if lease is not None:
                metadata = lease.get("metadata") or {}
                try:
                    self.client.delete(self._lease, uid=metadata.get("uid"),
                                       resource_version=metadata.get("resourceVersion"))
                except APINotFoundError:
                    pass
                except APIConflictError:
                    continue  # renewed by a thread of ours in between: read again
            self.info = None
            return
        raise LockError(f"cluster {self.cluster}: lock {self._held().id} could not be released; it kept changing")

    def _server_now(self) -> dt.datetime:
        """The API server's clock, asked with a read of the Lease when no answer told it yet;
        this process's clock only with a server that sends no Date."""
        now = self.client.server_now()
        if now is None:
            with contextlib.suppress(APINotFoundError):
                self.client.get(self._lease)
            now = self.client.server_now()
        return now or utcnow()

    def _body(self, info: LockInfo) -> dict[str, Any]:
        return lease_body(info, namespace=self.namespace, name=self.name)

    def _held(self) -> LockInfo:
        if self.info is None:
            raise LockError(f"cluster {self.cluster}: this run does not hold the lock")
        return self.info

    def _read_own_lease(self, doing: str) -> dict[str, Any] | None:
        """The Lease while it still records our lock, None once it is gone."""
        mine = self._held()
        try:
            lease = self.client.get(self._lease)
        except APINotFoundError:
            return None
        held = LockInfo.from_lease(lease)
        if held.id != mine.id:
            raise LockError(f"cluster {self.cluster}: cannot {doing} lock {mine.id}: lock was taken over, "
                            f"now {held.describe()}")
        return lease


class LockSet:
    """Several Leases held as one lock. An admin-mode cluster is locked where admin mode
    keeps its state (the management namespace) and in its own kube-system, where a run from
    a plain spec of the same cluster looks: either run refuses the other."""

    def __init__(self, locks: list[ClusterLock]) -> None:
        self.locks = locks

    @property
    def info(self) -> LockInfo | None:
        return self.locks[0].info

    def __enter__(self) -> LockInfo:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> LockInfo:
        taken: list[ClusterLock] = []
        try:
            infos = []
            for lock in self.locks:
                infos.append(lock.acquire())
                taken.append(lock)
        except BaseException:
            for lock in reversed(taken):
                with contextlib.suppress(Exception):
                    lock.release()
            raise
        took_over = next((info.took_over_from for info in infos if info.took_over_from is not None), None)
        return dataclasses.replace(infos[0], took_over_from=took_over)

    def renew(self) -> LockInfo:
        return [lock.renew() for lock in self.locks][0]

    def release(self) -> None:
        errors = []
        for lock in reversed(self.locks):
            try:
                lock.release()
            except Exception as exc:  # release every one; report the first failure after
                errors.append(exc)
        if errors:
            raise errors[0]
