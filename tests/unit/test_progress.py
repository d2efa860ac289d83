"""apply's progress lines: numbered by the actions ended, whatever runs at once."""

from __future__ import annotations

import io

from reconciler.shell.session import Progress
from tests.unit.test_render import rotation


def test_progress_numbers_lines_by_the_actions_ended_when_several_run_at_once():
    """Writes to several SSH nodes run at once: a run killed after its 25th action must
    not have printed [27/...] for it (two more had started)."""
    plan = rotation()
    first, second = [a for c in plan.clusters for a in c.actions if a.kind == "update-bundle"][:2]
    stream = io.StringIO()
    progress = Progress(total=2, stream=stream)
    progress.event("c1", "start", first, {})
    progress.event("c1", "start", second, {})
    progress.event("c1", "done", second, {"seconds": 0.1})
    progress.event("c1", "done", first, {"seconds": 0.2})
    assert stream.getvalue().splitlines() == [
        f"c1: [1/2] update-bundle {second.target}: done in 0.10s",
        f"c1: [2/2] update-bundle {first.target}: done in 0.20s"]
