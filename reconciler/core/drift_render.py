"""Drift reports as people and programs read them: text, markdown, JSON (pure)."""

from __future__ import annotations

import json

from reconciler.core.drift import ClusterDrift, DriftReport
from reconciler.core.observed import short
# The plan's markdown rules: one line per cell, pipes escaped, no raw HTML outside code spans.
from reconciler.core.render import _code, _escape, printable

_STATUS = {"in-sync": "in sync", "drift": "DRIFT", "error": "ERROR"}


def _headline(cluster: ClusterDrift) -> str:
    live = ", ".join(f"{a.authority} {short(a.fingerprint)} until {a.not_after}" for a in cluster.authorities
                     if a.fingerprint)
    return f"Cluster {cluster.cluster} ({cluster.spec}): {_STATUS[cluster.status]}" + (f"; {live}" if live else "")


def totals_line(report: DriftReport) -> str:
    t = report.totals
    if t.clusters == 0:
        return "Drift: no clusters checked."
    parts = [f"{t.in_sync} in sync", f"{t.drifted} drifted", f"{t.errors} unreachable or failed"]
    kinds = ", ".join(f"{n} {kind}" for kind, n in t.by_kind.items())
    return (f"Drift: {t.clusters} cluster{'s' if t.clusters != 1 else ''} checked, " + ", ".join(parts)
            + (f"; {t.findings} finding{'s' if t.findings != 1 else ''}: {kinds}." if t.findings else "."))


def text(report: DriftReport) -> str:
    return printable(_text(report))


def _text(report: DriftReport) -> str:
    lines = []
    for cluster in report.clusters:
        lines.append(_headline(cluster))
        if cluster.error:
            lines.append(f"  ! {cluster.error}")
        for finding in cluster.findings:
            lines.append(f"  * [{finding.kind}] {finding.subject}: {finding.message}")
            lines.append(f"      to do: {finding.remedy}")
        lines.append("")
    lines.append(totals_line(report))
    return "\n".join(lines) + "\n"


def markdown(report: DriftReport) -> str:
    lines = ["### careconcile drift", "", f"**{totals_line(report)}**", "",
             "| cluster | spec | status | CA | expires | findings |", "|---|---|---|---|---|---|"]
    for cluster in report.clusters:
        authority = next(iter(cluster.authorities), None)
        lines.append(f"| {cluster.cluster} | {_code(cluster.spec)} | {_STATUS[cluster.status]} | "
                     f"`{short(authority.fingerprint) if authority and authority.fingerprint else '-'}` | "
                     f"{authority.not_after if authority and authority.not_after else '-'} | {len(cluster.findings)} |")
    for cluster in report.clusters:
        if cluster.status == "in-sync":
            continue
        lines += ["", f"<details><summary>{cluster.cluster}: {_STATUS[cluster.status]}</summary>", ""]
        if cluster.error:
            lines.append(f"- **error**: {_escape(cluster.error)}")
        if cluster.findings:
            lines += ["| kind | where | what | to do |", "|---|---|---|---|"]
            lines += [f"| {f.kind} | {_code(f.subject)} | {_escape(f.message)} | {_escape(f.remedy)} |"
                      for f in cluster.findings]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def as_json(report: DriftReport) -> str:
    return json.dumps(report.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


FORMATS = {"text": text, "json": as_json, "markdown": markdown}
