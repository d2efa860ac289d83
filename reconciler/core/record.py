"""Which CA is an authority's CA of record (pure): the one judgement that diff, drift,
plan checks, `pin` and `update credentials` share.

Every control-plane node holds the CA of record (its key file and the certificate in its
CA file the key belongs to); in admin mode the management cluster's Secret holds it too,
beside the nodes, never instead of them. The CA of record is known when every holder has
one and all agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cryptography import x509

from reconciler.core.observed import ObservedRecord, fp


# The finding (diff) and drift kind each problem is reported as.
RECORD_PROBLEMS = {"missing": "record-missing", "disagree": "records-disagree"}


@dataclass(frozen=True)
class RecordResolution:
    cert: x509.Certificate | None  # None unless every holder agrees on one
    key_spec: str | None
    problem: Literal["missing", "disagree"] | None = None
    message: str = ""  # what is wrong, naming the holders; empty when the CA of record is known

    @property
    def fingerprint(self) -> str | None:
        return fp(self.cert) if self.cert is not None else None


def resolve_record(records: tuple[ObservedRecord, ...] | list[ObservedRecord]) -> RecordResolution:
    missing = [record.node for record in records if record.cert is None]
    if missing or not any(record.kind == "node" for record in records):
        secret_missing = any(record.kind == "secret" and record.cert is None for record in records)
        return RecordResolution(None, None, "missing", (
            ("a CA key matches no certificate beside it (tls.key and tls.crt of a Secret, ca.key and ca.crt of a "
             "node): " if secret_missing else "no control-plane node holds a CA key that matches its CA certificate: ")
            + (", ".join(missing) if missing else "no control-plane nodes in the spec")))
    if len({fp(record.cert) for record in records}) > 1:
        holders = ("control-plane nodes" if all(record.kind == "node" for record in records)
                   else "control-plane nodes and the management cluster")
        return RecordResolution(None, None, "disagree", (
            f"{holders} hold different CAs of record: "
            + ", ".join(f"{record.node}={fp(record.cert)}" for record in records)))
    return RecordResolution(records[0].cert, records[0].key_spec)
