"""Custody of an authority's CA keys during a run: the state store (where the new CA is
kept durably before anything uses it, and the old one until the rotation is final) and
the CA of record on the control-plane nodes.

This run holds the cluster's lock, so only it writes the store: the store is read once and
kept in step by :meth:`Custody.save`.
"""

from __future__ import annotations

import threading

from cryptography import x509

from reconciler._time import utcnow
from reconciler.core import pki
from reconciler.core.observed import NEW_CA, RETIRED_KEPT, StoredState, fp
from reconciler.core.pki import KeyPair
from reconciler.core.plan import Action, CreateCAParams
from reconciler.core.spec import ResolvedAuthority
from reconciler.errors import PKIError, RotationError
from reconciler.shell.observe import ClusterAccess, read_record
from reconciler.shell.statestore import Stored, StoredKeys


class Custody:
    def __init__(self, access: ClusterAccess, desired: ResolvedAuthority) -> None:
        self.access = access
        self.desired = desired
        self._stored: Stored | None = None
        self._record: KeyPair | None = None
        # Writers to several nodes at once (the executor's node groups) ask for the CAs together.
        self._loading = threading.RLock()

    # --- reading -------------------------------------------------------------------------

    def stored(self) -> Stored:
        with self._loading:
            if self._stored is None:
                self._stored = self.access.store.load(self.access.layout.name)
            return self._stored

    def save(self, stored: Stored) -> None:
        self.access.store.save(self.access.layout.name, stored)
        self._stored = stored

    def record_pair(self) -> KeyPair:
        """The CA of record with its key, read from the first control-plane node."""
        with self._loading:
            if self._record is None:
                files = self.access.nodes[self.access.control_planes()[0]]
                layout = self.access.layout
                key, cert = read_record(files, layout)
                if cert is None:
                    raise PKIError(f"{files.describe()}: {layout.record_key} matches no certificate in "
                                   f"{layout.record_cert}")
                self._record = KeyPair(cert, key)
            return self._record

    def forget_record(self) -> None:
        """The CA of record was just rewritten: read it again when next asked."""
        self._record = None

    def pair(self, fingerprint: str) -> KeyPair:
        """The CA with this fingerprint (or the new CA) and its key."""
        keys = self.stored().keys
        if fingerprint == NEW_CA:
            if keys.target is None and self.stored().state.target is not None:
                raise RotationError(f"cluster {self.access.name}: the new CA's key is missing from "
                                    f"{self.access.store.describe_keys()}")
            if keys.target is None:
                raise RotationError(f"cluster {self.access.name}: the new CA is not in the state store "
                                    f"({self.access.store.describe()}); run phase 1 first")
            return keys.target
        for pair in (keys.target, keys.previous):
            if pair is not None and fp(pair.cert) == fingerprint:
                return pair
        record = self.record_pair()
        if fp(record.cert) == fingerprint:
            return record
        raise RotationError(f"cluster {self.access.name}: no key for CA {fingerprint} in the state store "
                            f"({self.access.store.describe_keys()}) or on the control-plane nodes")

    def cert(self, fingerprint: str) -> x509.Certificate:
        return self.pair(fingerprint).cert

    # --- the state's actions -------------------------------------------------------------

    def create_ca(self, action: Action) -> None:
        stored = self.stored()
        if stored.state.in_progress:
            raise RotationError(f"cluster {self.access.name}: a rotation is already in progress in "
                                f"{self.access.store.describe()}; plan again to resume it")
        assert isinstance(action.params, CreateCAParams)
        previous = self.record_pair()
        desired = self.desired
        new = pki.new_ca(desired.common_name, now=utcnow(), key=desired.key, validity=desired.validity,
                         organizations=desired.organizations)
        state = stored.state
        self.save(Stored(
            StoredState(applied_rotation=state.applied_rotation, rotation=action.params.rotation,
                        target=new.cert, previous=previous.cert, has_target_key=True, has_previous_key=True,
                        verified_phase=1, rolled_back_rotation=state.rolled_back_rotation,
                        started=utcnow().isoformat(), retired=state.retired),
            StoredKeys(target=new, previous=previous)))

    def rollback_target(self, action: Action) -> None:
        stored = self.stored()
        if not stored.state.in_progress:
            raise RotationError(f"cluster {self.access.name}: the state store holds no rotation to roll back")
        if stored.keys.previous is None or stored.keys.target is None:
            raise RotationError(f"cluster {self.access.name}: the keys of the rotation to roll back are missing "
                                f"from {self.access.store.describe_keys()}")
        state = stored.state
        self.save(Stored(
            StoredState(applied_rotation=state.applied_rotation, rotation=state.rotation,
                        target=state.previous, previous=state.target, has_target_key=True, has_previous_key=True,
                        verified_phase=min(state.verified_phase, 2), rolling_back=True,
                        rolled_back_rotation=state.rolled_back_rotation, started=state.started,
                        retired=state.retired, workloads_trusted_since=state.workloads_trusted_since,
                        workloads_trusted_alone=state.workloads_trusted_alone),
            StoredKeys(target=stored.keys.previous, previous=stored.keys.target)))

    def finalize(self, action: Action) -> None:
        stored = self.stored()
        state = stored.state
        if not state.in_progress:
            return
        # The CA left behind is remembered (public fingerprint only) so that a caBundle still
        # carrying it is recognised as the cluster's and reported by drift.
        retired = tuple(dict.fromkeys((*state.retired, fp(state.previous))))[-RETIRED_KEPT:]
        # What pods trust is kept: drift finds a pod left trusting only the CA just distrusted.
        pods = {"workloads_trusted_since": state.workloads_trusted_since,
                "workloads_trusted_alone": state.workloads_trusted_alone}
        if state.rolling_back:
            final = StoredState(applied_rotation=state.applied_rotation, rolled_back_rotation=state.rotation,
                                retired=retired, **pods)
        else:
            final = StoredState(applied_rotation=state.rotation if state.rotation is not None
                                else state.applied_rotation, rolled_back_rotation=state.rolled_back_rotation,
                                retired=retired, **pods)
        self.save(Stored(final, StoredKeys()))
