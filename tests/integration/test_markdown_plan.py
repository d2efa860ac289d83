"""`plan --format markdown` of a 50-worker rotation fits a pull-request comment (issue 4)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from reconciler.core.plan import Action, summary_line
from reconciler.core.render import MARKDOWN_LIMIT

from .rotation import careconcile, set_rotation

pytestmark = pytest.mark.integration

WORKERS = 50


def test_markdown_plan_of_50_workers_fits_a_comment_and_show_gives_the_same(start_sandbox, tmp_path):
    info = start_sandbox("md50", control_planes=1, workers=WORKERS)
    spec = Path(info.spec)
    set_rotation(spec, 1)
    planfile = tmp_path / "rotate.plan.json"

    planned = careconcile("plan", str(spec), "--format", "markdown", "--out", str(planfile), workspace=tmp_path)
    assert planned.returncode == 0, planned.stderr
    output = planned.stdout
    print(f"\n{WORKERS}-worker markdown plan: {len(output)} characters, {len(output.encode())} bytes")
    assert len(output) < MARKDOWN_LIMIT == 65_000

    # The summary table comes first: heading, summary line, then one row for the cluster.
    plan = json.loads(planfile.read_text())
    actions = [action for cluster in plan["clusters"] for action in cluster["actions"]]
    per_phase = [sum(1 for action in actions if action["phase"] == phase) for phase in range(1, 6)]
    lines = output.splitlines()
    assert lines[0] == "### careconcile apply plan"
    assert lines[2] == f"**{summary_line([Action.model_validate(action) for action in actions])}**"
    assert lines[2].startswith("**Plan: 1 CA to create, ")
    assert lines[4].startswith("| cluster | operation | from | to | 1 prepare | 2 trust both | 3 reissue |")
    cells = [cell.strip() for cell in lines[6].split("|")[1:-1]]
    assert cells[:2] == [info.name, "rotate"]
    assert cells[4:] == [*map(str, per_phase), str(len(actions)), "yes"]
    # the etcd and front-proxy CAs' rows, unchanged; one cluster: no totals row
    assert [line.split("|")[1].strip() for line in lines[7:9]] == [f"{info.name} (etcdCA)", f"{info.name} (frontProxyCA)"]
    assert all(line.endswith("| no changes |") for line in lines[7:9]) and lines[9] == ""

    # Every <details> is closed; then either the whole plan or a note naming the plan file.
    tags = re.findall(r"^</?details>", output, flags=re.MULTILINE)
    assert tags == ["<details>", "</details>"] * (len(tags) // 2)
    workers = [node.name for node in info.nodes if node.role == "worker"]
    assert len(workers) == WORKERS
    if "> **Truncated**" in output:
        assert f"`careconcile show {planfile}`" in output
    else:
        assert sum(1 for line in output.splitlines() if line.startswith("| `")) == len(actions)
        for action in actions:
            assert f"| `{action['target']}` |" in output
        for worker in workers:  # each worker's bundles and certificates, one row per action
            on_worker = sum(1 for action in actions if action["target"].startswith(f"{worker}:"))
            assert on_worker >= 3, worker  # phases 2, 3 and 4 at least
            assert sum(1 for line in lines if line.startswith("| `") and f"| `{worker}:" in line) == on_worker

    shown = careconcile("show", str(planfile), "--format", "markdown", workspace=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == output
