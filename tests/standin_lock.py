"""`careconcile apply` in the CLI's own main, for tests that run it in a subprocess and
signal it: a file ``WORK/lease`` stands in for the cluster's Lease (``session.locked``
takes and releases it), and ``make_plan`` is the work done while it is held. Such a
script puts the repository on sys.path and calls :func:`apply_holding_the_lock`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from reconciler import cli
from reconciler.shell import session


def apply_holding_the_lock(work: Path, spec: str, make_plan: Callable[..., object]) -> int:
    class Lock:
        def acquire(self):
            (work / "lease").write_text("held")
            return type("Info", (), {"took_over_from": None})()

        def release(self):
            (work / "lease").unlink()

    class Access:
        def lock(self, operation):
            return Lock()

    session.open_clusters = lambda *args, **kwargs: {"one": Access()}
    session.make_plan = make_plan
    return cli.main(["apply", spec, "--auto-approve"])
