"""Plans as people read them: text like Terraform's, markdown for pull requests, JSON (pure)."""

from __future__ import annotations

import json

from reconciler.core.observed import short
from reconciler.core.plan import PHASE_TITLES, ROLLBACK_TITLES, Action, ClusterPlan, PlanDocument, summary_line

SYMBOLS = {
    "create-ca": "+", "write-kubeconfig": "+", "update-bundle": "~", "stage-signer": "~", "switch-signer": "~",
    "rollback-target": "~", "finalize": "~", "reissue": "-/+", "remove-signer": "-", "restart": "r",
    "verify": "?",
}
LEGEND = "  + create   ~ update   -/+ reissue   - remove   r restart   ? check on the live cluster"


def _change(action: Action) -> str:
    if action.change is None:
        return ""
    before = ", ".join(short(v) for v in action.change.before) or "-"
    after = ", ".join(short(v) for v in action.change.after) or "-"
    return f"[{before}] -> [{after}]"


def _titles(cluster: ClusterPlan) -> dict[int, str]:
    return ROLLBACK_TITLES if cluster.operation == "rollback" else PHASE_TITLES


def _describe(cluster: ClusterPlan) -> str:
    headline = {
        "rotate": f"rotate from {short(cluster.old_ca or '')} to a new CA",
        "resume": f"resume the rotation from {short(cluster.old_ca or '')} to {short(cluster.new_ca or '')}",
        "rollback": f"roll back from {short(cluster.old_ca or '')} to {short(cluster.new_ca or '')}",
        "repair": f"repair consumers of {short(cluster.old_ca or '')}",
        "none": "no changes",
    }[cluster.operation]
    return f"Cluster {cluster.cluster} ({cluster.authority}): {headline}"


def text(plan: PlanDocument) -> str:
    lines = [f"careconcile {plan.operation} plan for {plan.spec_path}", "", LEGEND, ""]
    for cluster in plan.clusters:
        lines.append(_describe(cluster))
        for finding in cluster.findings:
            lines.append(f"  {'!' if finding.blocking else '*'} {finding.subject}: {finding.message}")
        phase = None
        for action in cluster.actions:
            if action.phase != phase:
                phase = action.phase
                lines += ["", f"  Phase {phase}: {_titles(cluster)[phase]}"]
            detail = _change(action)
            lines.append(f"    {SYMBOLS[action.kind]:>3} {action.kind} {action.target}" + (f"  {detail}" if detail else ""))
            lines.append(f"        {action.reason}")
        lines.append("")
    blocking = [f for c in plan.clusters for f in c.findings if f.blocking]
    if blocking:
        lines.append(f"Error: {len(blocking)} finding(s) block this plan; nothing will change until they are resolved.")
    lines.append(summary_line(plan.actions()))
    return "\n".join(lines) + "\n"


def markdown(plan: PlanDocument) -> str:
    """Summary first and details folded, as a pull-request comment wants it."""
    lines = [f"### careconcile {plan.operation} plan", "", f"**{summary_line(plan.actions())}**", ""]
    lines += ["| cluster | operation | from | to | actions |", "|---|---|---|---|---|"]
    for cluster in plan.clusters:
        lines.append(f"| {cluster.cluster} | {cluster.operation} | `{short(cluster.old_ca or '-')}` | "
                     f"`{short(cluster.new_ca or '-')}` | {len(cluster.actions)} |")
    for cluster in plan.clusters:
        lines += ["", f"#### {_describe(cluster)}", ""]
        for finding in cluster.findings:
            lines.append(f"- {'**blocking** ' if finding.blocking else ''}`{finding.subject}`: {finding.message}")
        phases = sorted({action.phase for action in cluster.actions})
        for phase in phases:
            actions = [a for a in cluster.actions if a.phase == phase]
            lines += ["", f"<details><summary>Phase {phase}: {_titles(cluster)[phase]} ({len(actions)} actions)</summary>",
                      "", "| | action | target | change | why |", "|---|---|---|---|---|"]
            for action in actions:
                lines.append(f"| `{SYMBOLS[action.kind]}` | {action.kind} | `{action.target}` | "
                             f"{_change(action).replace('|', '/')} | {action.reason} |")
            lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def as_json(plan: PlanDocument) -> str:
    """The saved plan's format, which `show --format json` prints as well."""
    return json.dumps(plan.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
