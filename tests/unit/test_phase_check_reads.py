"""A phase check reads the node files at its first look and again at its last, not at each
look in between while it waits for the cluster (over SSH a round trip or more per node)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from reconciler.core.observed import StoredState
from reconciler.core.plan import CheckParams
from reconciler.errors import RotationError
from reconciler.shell import polling, verification
from reconciler.shell.statestore import Stored, StoredKeys


class Custody:
    def cert(self, expect: str) -> str:
        return expect

    def stored(self) -> Stored:
        return Stored(StoredState(), StoredKeys())  # no rotation in progress: nothing is recorded


class Clock:
    """time.monotonic for the module under test, moved on by its sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def looks(monkeypatch):
    """Runs a phase check whose looks find ``problems[i]`` at look i (none once past the
    list); returns, per look, whether its node files were read for it."""
    clock = Clock()
    monkeypatch.setattr(verification, "time", clock)
    monkeypatch.setattr(polling, "intervals", lambda: iter(lambda: 1.0, None))
    reads: list[int] = []
    monkeypatch.setattr(verification, "observe_nodes", lambda access: reads.append(1) or [("read", len(reads))])

    def run(problems: list[list[str]], timeout: float = 60.0) -> list[bool]:
        seen: list[object] = []

        def problems_of(self, phase, new, old_fp, *, nodes=None):
            seen.append(nodes)
            return problems[len(seen) - 1] if len(seen) <= len(problems) else []

        monkeypatch.setattr(verification.Verifier, "problems", problems_of)
        verifier = verification.Verifier(SimpleNamespace(name="c1"), Custody(), None, heartbeat=lambda: None,
                                         phase_timeout=timeout)
        action = SimpleNamespace(params=CheckParams(expect="new", old="old"), site=SimpleNamespace(phase=2))
        verifier.verify(action)
        # A look read its files when it got a reading no look before it had.
        return [i == 0 or nodes is not seen[i - 1] for i, nodes in enumerate(seen)]

    run.reads = reads
    return run


def test_a_check_that_passes_at_once_reads_the_node_files_once(looks):
    assert looks([]) == [True]
    assert len(looks.reads) == 1


def test_looks_that_wait_for_the_cluster_reuse_the_files_and_the_last_look_reads_them_again(looks):
    waiting = [["kube-apiserver has not restarted"]] * 3
    # Looks 2 and 3 wait on the first reading; look 4 finds nothing (on that reading), so
    # look 5 reads the files again, finds nothing either, and ends the check.
    assert looks(waiting) == [True, False, False, False, True]


def test_a_last_look_that_finds_a_problem_goes_on_with_its_own_reading(looks):
    problems = [["waiting"], [], ["a file differs"], ["a file differs"]]
    assert looks(problems) == [True, False, True, False, False, True]


def test_a_long_wait_reads_the_files_again_every_few_seconds(looks):
    looks([["waiting"]] * 12)  # a look a second (the patched pauses)
    reread = verification.NODE_FILES_REUSE_SECONDS
    assert 12 / (reread + 1) <= len(looks.reads) - 1 <= 12 / reread + 1, looks.reads


def test_a_check_that_times_out_names_what_the_last_look_found(looks):
    with pytest.raises(RotationError, match="(?s)did not show on the live cluster.*still waiting"):
        looks([["still waiting"]] * 100, timeout=5)
