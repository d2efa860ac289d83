"""A drift report as Prometheus metrics, in the text exposition format (pure).

Times are absolute Unix timestamps in seconds, so that alerts compute "expires within"
and "not checked for" themselves (``careconcile_ca_not_after_timestamp_seconds - time()``)
and a file read hours later still says the truth. No sample carries an explicit
timestamp: node-exporter's textfile collector refuses those.
"""

from __future__ import annotations

import datetime as dt
import re

from reconciler.core.drift import DRIFT_KINDS, ClusterDrift, DriftReport

LAST_SUCCESS = "careconcile_drift_last_success_timestamp_seconds"

# name -> (help, type)
METRICS: dict[str, tuple[str, str]] = {
    "careconcile_drift_run_timestamp_seconds": ("When this drift check ran.", "gauge"),
    "careconcile_cluster_reachable": ("1 when careconcile could read the cluster in this run, else 0.", "gauge"),
    LAST_SUCCESS: ("When the cluster was last read successfully (kept from the previous file while it "
                   "cannot be read).", "gauge"),
    "careconcile_cluster_in_sync": ("1 when the cluster matches its spec, 0 when it drifts (absent when "
                                    "unreachable).", "gauge"),
    "careconcile_drift_findings": ("Drift findings per kind (every kind listed, 0 when none).", "gauge"),
    "careconcile_ca_not_after_timestamp_seconds": ("When the live CA of record expires.", "gauge"),
    "careconcile_ca_info": ("The live CA of record: its fingerprint and key.", "gauge"),
    "careconcile_leaf_earliest_not_after_timestamp_seconds": (
        "When the first certificate signed by the authority expires.", "gauge"),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items()) + "}"


def _seconds(rfc3339: str) -> float:
    return dt.datetime.fromisoformat(rfc3339).timestamp()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>.*)\}\s+(?P<value>\S+)\s*$')
_LABEL = re.compile(r'(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


def last_successes(previous: str) -> dict[tuple[str, str], float]:
    """(spec, cluster) -> last success time, from an earlier metrics file's text; lines that
    do not parse are ignored, since the file is only a memory of earlier runs."""
    found: dict[tuple[str, str], float] = {}
    for line in previous.splitlines():
        match = _SAMPLE.match(line)
        if not match or match["name"] != LAST_SUCCESS:
            continue
        labels = {m["name"]: re.sub(r"\\(.)", lambda e: {"n": "\n"}.get(e[1], e[1]), m["value"])
                  for m in _LABEL.finditer(match["labels"])}
        try:
            found[(labels.get("spec", ""), labels.get("cluster", ""))] = float(match["value"])
        except ValueError:
            continue
    return found


def exposition(report: DriftReport, *, previous: str = "") -> str:
    """The metrics file's text. ``previous`` is the text of the file this run replaces."""
    samples: dict[str, list[str]] = {name: [] for name in METRICS}
    remembered = last_successes(previous)
    run_at = _seconds(report.created)
    samples["careconcile_drift_run_timestamp_seconds"].append(_number(run_at))
    for cluster in report.clusters:
        _cluster_samples(samples, cluster, remembered)
    lines = []
    for name, (help_text, kind) in METRICS.items():
        if not samples[name]:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{sample}" if sample.startswith("{") else f"{name} {sample}" for sample in samples[name]]
    return "\n".join(lines) + "\n"


def _cluster_samples(samples: dict[str, list[str]], cluster: ClusterDrift,
                     remembered: dict[tuple[str, str], float]) -> None:
    who = {"spec": cluster.spec_name, "cluster": cluster.cluster}
    reachable = cluster.status != "error"
    samples["careconcile_cluster_reachable"].append(f"{_labels(**who)} {int(reachable)}")
    last = _seconds(cluster.checked_at) if reachable else remembered.get((cluster.spec_name, cluster.cluster))
    if last is not None:
        samples[LAST_SUCCESS].append(f"{_labels(**who)} {_number(last)}")
    if not reachable:
        return
    samples["careconcile_cluster_in_sync"].append(f"{_labels(**who)} {int(cluster.status == 'in-sync')}")
    counts = {kind: 0 for kind in DRIFT_KINDS}
    for finding in cluster.findings:
        counts[finding.kind] += 1
    for kind, count in counts.items():
        samples["careconcile_drift_findings"].append(f"{_labels(**who, kind=kind)} {count}")
    for authority in cluster.authorities:
        labels = {**who, "authority": authority.authority}
        if authority.not_after:
            samples["careconcile_ca_not_after_timestamp_seconds"].append(
                f"{_labels(**labels)} {_number(_seconds(authority.not_after))}")
        if authority.fingerprint:
            samples["careconcile_ca_info"].append(
                f"{_labels(**labels, fingerprint=authority.fingerprint, key=authority.key or '')} 1")
        if authority.earliest_leaf_not_after:
            samples["careconcile_leaf_earliest_not_after_timestamp_seconds"].append(
                f"{_labels(**labels)} {_number(_seconds(authority.earliest_leaf_not_after))}")
