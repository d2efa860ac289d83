"""Plans as people read them: text like Terraform's, markdown for pull requests, JSON (pure)."""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter

from reconciler.core import effects
from reconciler.core.effects import Places
from reconciler.core.observed import short
from reconciler.core.plan import PHASE_TITLES, ROLLBACK_TITLES, Action, ClusterPlan, PlanDocument, summary_line
from reconciler.core.spec import PRIMARY_AUTHORITY

SYMBOLS = {
    "create-ca": "+", "write-kubeconfig": "+", "update-bundle": "~", "stage-signer": "~", "switch-signer": "~",
    "rollback-target": "~", "finalize": "~", "reissue": "-/+", "remove-signer": "-", "restart": "r",
    "restart-workload": "r", "verify": "?",
}
LEGEND = "  + create   ~ update   -/+ reissue   - remove   r restart   ? check on the live cluster"


def _change(action: Action) -> str:
    if action.kind == "restart-workload":  # namespace, kind, name, replicas: what a reviewer looks for
        site, params = action.site, action.params
        replicas = f", {params.replicas} replicas" if params.replicas is not None else ""
        return f"[{site.workload} {site.namespace}/{site.name}{replicas}, {params.method}]"
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


# Control characters (but tab and newline), DEL, C1 controls and the bidirectional
# overrides: a plan file or a cluster's object holding them must not drive the terminal
# (clear it, move the cursor, set its title) or reorder what a reader sees.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


# A PEM private key, to its END line (or to the end of the text, when it has none).
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (ESC as ``\\x1b``), and
    any PEM private key in it left out: whatever a plan file or an object says, careconcile
    never prints a key."""
    text = _PRIVATE_KEY.sub("(a private key, not shown)", text)
    return _UNPRINTABLE.sub(lambda match: match[0].encode("unicode_escape").decode("ascii"), text)


def restart_counts(actions: list[Action]) -> list[str]:
    """How often each component restarts, and where: "etcd 2 times on each of cp1, cp2"."""
    per_node: dict[str, dict[str, int]] = {}
    for action in actions:
        if action.kind == "restart":
            nodes = per_node.setdefault(action.params.component, {})
            nodes[action.node] = nodes.get(action.node, 0) + 1
    shown = []
    for component, nodes in per_node.items():
        counts = set(nodes.values())
        times = (f"{counts.pop()} time{'s' if max(nodes.values()) > 1 else ''}" if len(counts) == 1
                 else f"{min(nodes.values())} to {max(nodes.values())} times")
        where = ", ".join(nodes)
        shown.append(f"{component} {times} on {'each of ' if len(nodes) > 1 else ''}{where}")
    return shown


def text(plan: PlanDocument, places: Places | None = None) -> str:
    """Each action with what it writes, removes and runs (:mod:`reconciler.core.effects`),
    at the paths ``places`` gives, else the nodes' own."""
    return printable(_text(plan, places or Places()))


def _text(plan: PlanDocument, places: Places) -> str:
    lines = [f"careconcile {plan.operation} plan for {plan.spec_path}", "", LEGEND, ""]
    for cluster in plan.clusters:
        lines.append(_describe(cluster))
        for finding in cluster.findings:
            marker = "!" if finding.blocking else "warning:" if finding.warning else "*"
            lines.append(f"  {marker} {finding.subject}: {finding.message}")
        phase = None
        for action in cluster.actions:
            if action.phase != phase:
                phase = action.phase
                lines += ["", f"  Phase {phase}: {_titles(cluster)[phase]}"]
            detail = _change(action)
            lines.append(f"    {SYMBOLS[action.kind]:>3} {action.kind} {action.target}" + (f"  {detail}" if detail else ""))
            lines.append(f"        {action.reason}")
            lines += [f"        {line}" for line in effects.lines(action, cluster.cluster, cluster.authority, places)]
        restarts = restart_counts(cluster.actions)
        if restarts:
            lines += ["", "  Restarts: " + "; ".join(restarts)]
        if len(plan.clusters) > 1 and cluster.actions:
            lines += ["", f"  {cluster.cluster}: {summary_line(cluster.actions).removeprefix('Plan: ')}"]
        lines.append("")
    blocking = [f for c in plan.clusters for f in c.findings if f.blocking]
    if blocking:
        lines.append(f"Error: {len(blocking)} finding(s) block this plan; nothing will change until they are resolved.")
    names = list(dict.fromkeys(c.cluster for c in plan.clusters))
    if len(names) > 1:
        changing = list(dict.fromkeys(c.cluster for c in plan.clusters if any(a.kind != "verify" for a in c.actions)))
        lines.append(f"{len(changing)} of {len(names)} clusters change"
                     + (f": {', '.join(changing)}." if changing else "."))
    lines.append(summary_line(plan.actions()))
    return "\n".join(lines) + "\n"


# GitHub refuses a comment body over 65,536 characters; this leaves room for a line or two more.
MARKDOWN_LIMIT = 65_000


def _size(text: str) -> int:
    """Counted in UTF-8 bytes: never fewer than the characters, so a limit on either holds."""
    return len(text.encode())


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


# Markdown that would make text into something else: emphasis, links, images, headings.
_MARKUP = re.compile(r"([\\`*_\[\]!~])")
# A zero-width space after "@" or "#" keeps GitHub from making a mention (which notifies
# the user or team) or a reference to an issue of it. A bare URL stays: it shows where it leads.
_REFERENCES = re.compile(r"([@#])(?=\w)")


def _escape(text: str) -> str:
    """Plain text for a cell, list item or heading: one line, pipes escaped, no raw HTML, no
    markdown (a certificate subject from the cluster, ``[x](https://evil)``, stays text), and
    no @mention or issue reference that GitHub would make of it."""
    text = " ".join(printable(text).replace("&", "&amp;").replace("<", "&lt;").split())
    text = _MARKUP.sub(r"\\\1", text).replace("|", "\\|")
    return _REFERENCES.sub("\\1\u200b", text)


def _code(text: str, *, table: bool = True) -> str:
    """A code span; in a table its pipes are escaped (GitHub unescapes them inside the span).
    GitHub makes no link or mention inside one."""
    text = " ".join(printable(text).split())
    if table:
        text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _changes(actions: list[Action]) -> bool:
    return any(action.kind != "verify" for action in actions)


def _blocking(cluster: ClusterPlan) -> list:
    return [finding for finding in cluster.findings if finding.blocking]


def _take(lines: list[str], budget: int, more, rank: list[int] | None = None) -> tuple[list[str], bool]:
    """As many of ``lines`` as fit in ``budget`` (each counted with its newline), lowest
    ``rank`` first, in their own order; when some do not fit, the line ``more(left_out)``
    after them. Returns the lines and whether any was left out."""
    if sum(_size(line) + 1 for line in lines) <= budget:
        return lines, False
    room = budget - (_size(more(len(lines))) + 1)  # the longest ``more`` line it can need
    taken: set[int] = set()
    for index in sorted(range(len(lines)), key=lambda i: (rank[i] if rank else 0, i)):
        room -= _size(lines[index]) + 1
        if room < 0:
            break
        taken.add(index)
    return [line for index, line in enumerate(lines) if index in taken] + [more(len(lines) - len(taken))], True


def _summary_table(plan: PlanDocument, budget: int) -> tuple[str, bool]:
    """One row per cluster and authority (the cluster CA's named by the cluster alone):
    operation, CAs, actions per phase, total, whether it changes; a totals row when there
    are several clusters. Rows that do not fit, those without changes first, become one
    "more" row."""
    titles = ROLLBACK_TITLES if plan.operation == "rollback" else PHASE_TITLES
    phases = sorted(titles)
    head = ["| cluster | operation | from | to | " + " | ".join(f"{p} {titles[p].split(':')[0]}" for p in phases)
            + " | total | changes |",
            "|---|---|---|---|" + "---:|" * (len(phases) + 1) + "---|"]
    rows, rank = [], []
    for cluster in plan.clusters:
        counts = Counter(action.phase for action in cluster.actions)
        status = "**blocked**" if _blocking(cluster) else "yes" if _changes(cluster.actions) else "no changes"
        rank.append(0 if _blocking(cluster) else 1 if _changes(cluster.actions) else 2)
        rows.append(" | ".join([
            f"| {_escape(_row_name(cluster))}", cluster.operation, _code(short(cluster.old_ca or "-")),
            _code(short(cluster.new_ca or "-")), *(str(counts.get(p, 0)) for p in phases),
            str(len(cluster.actions)), f"{status} |"]))
    tail = []
    names = set(cluster.cluster for cluster in plan.clusters)
    if len(names) > 1:
        counts = Counter(action.phase for action in plan.actions())
        changing = len({cluster.cluster for cluster in plan.clusters if _changes(cluster.actions)})
        tail.append(" | ".join([
            f"| **all {len(names):,} clusters**", "", "", "", *(f"**{counts.get(p, 0)}**" for p in phases),
            f"**{len(plan.actions())}**", f"{changing:,} with changes |"]))
    fixed = sum(_size(line) + 1 for line in head + tail)

    def more(left_out: int) -> str:
        return f"| ... {_plural(left_out, 'more cluster')}, see the full plan |" + " |" * (len(phases) + 5)

    rows, cut = _take(rows, budget - fixed, more, rank)  # blocked and changing clusters before the others
    return "\n".join(head + rows + tail) + "\n", cut


def _row_name(cluster: ClusterPlan) -> str:
    return cluster.cluster if cluster.authority == PRIMARY_AUTHORITY else f"{cluster.cluster} ({cluster.authority})"


def _head(plan: PlanDocument, budget: int) -> tuple[str, bool]:
    """Heading, summary line, blocking findings and the summary table: what a reviewer sees
    without unfolding anything."""
    text = f"### careconcile {plan.operation} plan\n\n**{summary_line(plan.actions())}**\n"
    blocking = [(cluster, finding) for cluster in plan.clusters for finding in _blocking(cluster)]
    cut = False
    if blocking:
        one = len(blocking) == 1
        text += (f"\n**Error: {_plural(len(blocking), 'finding')} block{'s' if one else ''} this plan; nothing will "
                 f"change until {'it is' if one else 'they are'} resolved.**\n\n")
        items = [f"- {_escape(cluster.cluster)}: {_code(finding.subject, table=False)}: {_escape(finding.message)}"
                 for cluster, finding in blocking]
        # Half of what is left at most, so the table always has room.
        items, cut = _take(items, (budget - _size(text)) // 2,
                           lambda left_out: f"- ... {_plural(left_out, 'more blocking finding')}, see the full plan")
        text += "\n".join(items) + "\n"
    text += "\n"
    table, table_cut = _summary_table(plan, budget - _size(text))
    return text + table, cut or table_cut


def _does(action: Action, cluster: ClusterPlan) -> str:
    """The cell of what an action writes, removes and runs, a code span per line, with the
    nodes' own paths (the cluster's block says once where each node's root is); "the
    target" when it writes the one file the target names, as most rows do, which keeps a
    50-worker rotation within a comment."""
    found = effects.effects(action, cluster.authority)
    if len(found) == 1 and found[0].verb == "writes" and found[0].scope in ("node", "local") \
            and found[0].what == getattr(action.site, "path", None):
        return "the target"
    return "<br>".join(_code(line) for line in effects.lines(action, cluster.cluster, cluster.authority, Places()))


def _node_places(cluster: ClusterPlan, places: Places) -> list[str]:
    """Where the cluster's nodes are: how each is reached and the directory that stands for
    its '/', which the rows' node paths are under. One line when every node has the same
    transport and its root is one directory per node (``/srv/nodes/<node>``, as the
    sandbox lays them out); else a folded table."""
    nodes = list(dict.fromkeys(action.node for action in cluster.actions if action.node))
    known = [(node, places.nodes[(cluster.cluster, node)]) for node in nodes if (cluster.cluster, node) in places.nodes]
    if not known:
        return []

    def pattern(node: str, root: str) -> str:
        return root[:-len(node)] + "<node>" if root.endswith("/" + node) else root

    shapes = {(place.transport, pattern(node, place.root)) for node, place in known}
    if len(shapes) == 1 and len(known) == len(nodes):
        transport, root = shapes.pop()
        every = "The node is" if len(known) == 1 else f"Each of the {len(known)} nodes is"
        return ["", f"{every} reached by {_code(transport, table=False)}; the node paths below are under its root "
                    f"{_code(root, table=False)}."]
    lines = ["", f"<details><summary>Where the nodes are ({_plural(len(known), 'node')}): the node paths below "
                 "are under each one's root</summary>", "", "| node | reached by | root |", "|---|---|---|"]
    lines += [f"| {_escape(node)} | {_code(place.transport)} | {_code(place.root)} |" for node, place in known]
    return [*lines, "", "</details>"]


def _cluster_blocks(cluster: ClusterPlan, places: Places) -> list[tuple[str, int]]:
    """A cluster's details as blocks that are shown whole or not at all: its heading with its
    findings, then one folded block per phase. Each with the number of actions it shows."""
    lines = ["", f"#### {_escape(_describe(cluster))}"]
    if cluster.findings:
        lines.append("")
    for finding in cluster.findings:
        marker = "**blocking** " if finding.blocking else "**warning** " if finding.warning else ""
        lines.append(f"- {marker}{_code(finding.subject, table=False)}: "
                     f"{_escape(finding.message)}")
    lines += _node_places(cluster, places)
    blocks = [("\n".join(lines) + "\n", 0)]
    for phase in sorted({action.phase for action in cluster.actions}):
        actions = [action for action in cluster.actions if action.phase == phase]
        lines = ["", f"<details><summary>Phase {phase}: {_escape(_titles(cluster)[phase])} "
                     f"({_plural(len(actions), 'action')})</summary>",
                 "", "| | action | target | change | why | writes, runs |", "|---|---|---|---|---|---|"]
        for action in actions:
            lines.append(f"| `{SYMBOLS[action.kind]}` | {action.kind} | {_code(action.target)} | "
                         f"{_escape(_change(action))} | {_escape(action.reason)} | {_does(action, cluster)} |")
        lines += ["", "</details>"]
        blocks.append(("\n".join(lines) + "\n", len(actions)))
    return blocks


def _truncation_note(plan_file: str | None, *, limit: int, actions: int, of_actions: int, clusters: int,
                     of_clusters: int) -> str:
    where = (f"The full plan is the saved plan file {_code(plan_file, table=False)}; "
             f"{_code(f'careconcile show {shlex.quote(plan_file)}', table=False)} prints all of it."
             if plan_file else
             "To see all of it, save the plan with `careconcile plan SPEC --out PLANFILE`, upload the file "
             "beside this comment (for example as a CI artifact) and run `careconcile show PLANFILE`.")
    return (f"\n> **Truncated** to fit a pull-request comment ({limit:,} characters). Left out here: "
            + (f"{actions:,} of {_plural(of_actions, 'action')}, in " if of_actions else "")
            + f"{clusters:,} of {_plural(of_clusters, 'cluster')}. {where}\n")


def markdown(plan: PlanDocument, *, plan_file: str | None = None, limit: int = MARKDOWN_LIMIT,
             places: Places | None = None) -> str:
    """Summary first and details folded, as a pull-request comment wants it, in at most
    ``limit`` characters.

    The heading, summary line, blocking findings and the summary table come first; then
    each cluster's findings and its phases in ``<details>``, block by block while they fit.
    The first block that does not fit ends the comment with a note of what was left out
    and where the full plan is: ``plan_file``, the saved plan, or, without one, how to save
    it. A block is never cut, so every table and every ``<details>`` stays whole. Each
    action's row says what it writes, removes and runs on which node, and each cluster's
    block where its nodes' roots are, as ``places`` gives them."""
    clusters = [_cluster_blocks(cluster, places or Places()) for cluster in plan.clusters]
    head, cut = _head(plan, limit)
    whole = head + "".join(block for blocks in clusters for block, _ in blocks)
    if not cut and _size(whole) <= limit:
        return whole
    total_actions, total_clusters = len(plan.actions()), len(plan.clusters)
    budget = limit - _size(_truncation_note(plan_file, limit=limit, actions=total_actions, of_actions=total_actions,
                                            clusters=total_clusters, of_clusters=total_clusters))
    head, cut = _head(plan, budget)
    parts, used, shown, complete = [head], _size(head), 0, 0
    for blocks in clusters if not cut else ():  # a cut summary leaves no room for details
        for block, count in blocks:
            if used + _size(block) > budget:
                break
            parts.append(block)
            used += _size(block)
            shown += count
        else:
            complete += 1
            continue
        break
    parts.append(_truncation_note(plan_file, limit=limit, actions=total_actions - shown, of_actions=total_actions,
                                  clusters=total_clusters - complete, of_clusters=total_clusters))
    return "".join(parts)


def as_json(plan: PlanDocument) -> str:
    """The saved plan's format, which `show --format json` prints as well."""
    return json.dumps(plan.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
