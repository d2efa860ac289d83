"""Fixtures shared by all tests: real sandboxes for the integration tests.

Integration tests skip only when the Kubernetes binaries are missing and CI is unset;
under CI a missing binary fails the run (the README's test command builds them first).

Sandboxes live as long as the tests that need them: ``cluster`` (1 control plane, 3
workers) for the whole session of a worker, every other one until the end of the module
that started it. An idle control plane still costs CPU (leader elections, node Leases,
controllers' resyncs), and on 2 cores a dozen idle ones slow every test after them.

Under pytest-xdist (``make test`` runs two workers) each worker has its own sandbox root;
``pytest_xdist_make_scheduler`` below hands out whole files, the heaviest first, and keeps
the files that share ``cluster`` on one worker so that it is started once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.sandbox import binaries
from reconciler.sandbox._paths import ROOT_ENV, SandboxPaths

# Work units in the order they are handed to the workers: the longest first, so that the
# two workers finish together (longest-processing-time-first); the times are from
# `--durations` (docs/development.md has the budget). A unit is a file, or SHARED_CLUSTER
# for the files that use ``cluster``. Units not listed go after these, in collection order.
SHARED_CLUSTER = "files sharing the cluster fixture"
HEAVIEST_FIRST = (
    "tests/integration/test_rotation_resume.py",
    "tests/integration/test_admin_mode.py",
    "tests/integration/test_update_credentials.py",
    "tests/integration/test_rotation.py",
    SHARED_CLUSTER,
    "tests/integration/test_fleet.py",
    "tests/integration/test_plan_safety.py",
    "tests/integration/test_ssh_nodes.py",
)
# The files whose tests use the session's ``cluster``: one work unit, so one worker starts it.
SHARED_CLUSTER_FILES = (
    "tests/integration/test_bad_input.py",
    "tests/integration/test_ci_recipes.py",
    "tests/integration/test_drift.py",
    "tests/integration/test_foreign_certificates.py",
    "tests/integration/test_pin.py",
    "tests/integration/test_sandbox.py",
)


def _require_binaries() -> None:
    missing = binaries.missing_binaries()
    if not missing:
        return
    message = f"Kubernetes binaries missing from {binaries.bin_dir()}: {', '.join(missing)} (run `make binaries`)"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def sandbox_root(tmp_path_factory) -> Path:
    """Every sandbox of the test session lives here, never in the user's own state dir
    (under xdist, tmp_path_factory gives each worker a directory of its own)."""
    root = tmp_path_factory.mktemp("sandboxes")
    previous = os.environ.get(ROOT_ENV)
    os.environ[ROOT_ENV] = str(root)
    yield root
    from reconciler import sandbox

    for paths in sandbox.list_sandboxes():  # whatever a failing test left running
        sandbox.down(paths)
    if previous is None:
        os.environ.pop(ROOT_ENV, None)
    else:
        os.environ[ROOT_ENV] = previous


class _Sandboxes:
    """Starts sandboxes and stops them all when its scope ends, keeping their files (and
    so their logs) under the session's temporary directory."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def start(self, name: str, **options):
        from reconciler import sandbox

        _require_binaries()
        info = sandbox.up(name, **options)
        self.started.append(name)
        return info

    def stop_all(self) -> None:
        from reconciler import sandbox

        for name in reversed(self.started):  # a registered user sandbox before its admin
            paths = SandboxPaths.named(name)
            if paths.directory.exists():
                sandbox.down(paths, keep=True)


@pytest.fixture(scope="module")
def start_sandbox(sandbox_root):
    """A factory: start a sandbox for this module; each is stopped when the module ends."""
    sandboxes = _Sandboxes()
    yield sandboxes.start
    sandboxes.stop_all()


@pytest.fixture(scope="session")
def cluster(sandbox_root):
    """One control plane, three kwok workers: the sandbox most tests share. Tests leave it
    as they found it (they change copies of its spec, or put back what they changed)."""
    sandboxes = _Sandboxes()
    yield sandboxes.start("it", control_planes=1, workers=3)
    sandboxes.stop_all()


def _work_unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return SHARED_CLUSTER if path in SHARED_CLUSTER_FILES else path


def pytest_collection_modifyitems(config, items) -> None:
    """The heaviest work units first, the rest in collection order. Every xdist worker
    collects the same items and sorts them the same way, as xdist requires."""
    rank = {unit: index for index, unit in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(_work_unit(item.nodeid), len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Each work unit goes to one worker whole, so module-scoped sandboxes start once, and
    units are handed out in the order collected (the heaviest first)."""
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    config.option.loadscopereorder = False  # keep the order of pytest_collection_modifyitems
    return WorkUnitScheduling(config, log)


_PRIVATE_KEY_HEADER = "PRIVATE KEY-----"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """No test's captured stdout, stderr or log may show a private key: a test that passes
    while printing one fails here."""
    outcome = yield
    report = outcome.get_result()
    captured = "".join(content for name, content in report.sections if name.endswith(f" {call.when}"))
    if _PRIVATE_KEY_HEADER in captured and report.passed:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid}: a private key appears in the test's captured output"
