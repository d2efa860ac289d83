"""Fixtures shared by all tests: real sandboxes for the integration tests.

Integration tests skip only when the Kubernetes binaries are missing and CI is unset;
under CI a missing binary fails the run (the README's test command builds them first).

Sandboxes live as long as the tests that need them: ``cluster`` (1 control plane, 3
workers) until the last test of the files that share it, every other one until the end
of the module that started it. An idle control plane still costs CPU (leader elections,
node Leases, controllers' resyncs), and on 2 cores a dozen idle ones slow every test
after them. Their files (and logs) stay in the session's temporary directory.

Under pytest-xdist (``make test`` runs three workers) each worker has its own sandbox root;
``pytest_xdist_make_scheduler`` below splits whole files between the workers by their
measured cost, and keeps the files that share ``cluster`` on one worker so that it is
started once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.sandbox import binaries
from reconciler.sandbox._paths import ROOT_ENV, SandboxPaths

# What each work unit costs, in seconds of one worker with the other one busy (setup and
# teardown included), from `--durations=0` of a `make test` run; docs/development.md shows
# the same figures as the suite's time budget. A unit is a file, or SHARED_CLUSTER for the
# files that use ``cluster``. The scheduler below splits the units between the workers
# longest first, each to the worker with less work so far; a unit not listed counts as
# UNLISTED_SECONDS.
SHARED_CLUSTER = "files sharing the cluster fixture"
ESTIMATED_SECONDS = {
    # Clean-clone run AB of 2026-12-04 (3 workers): each file's setup, call and teardown times.
    SHARED_CLUSTER: 293,  # test_drift.py, test_sandbox.py (its HA sandbox now test_ha.py's) and the others
    "tests/integration/test_authorities.py": 430,
    "tests/integration/test_ha.py": 338,
    "tests/integration/test_workloads.py": 159,
    "tests/integration/test_update_credentials.py": 151,
    "tests/integration/test_fleet.py": 120,
    "tests/integration/test_admin_mode.py": 119,
    "tests/integration/test_plan_safety.py": 87,
    "tests/integration/test_rotation.py": 75,
    "tests/integration/test_cli_sandbox.py": 69,
    "tests/unit/test_fuzz_corpus.py": 41,  # 9 s alone, about 40 s beside two rotations
    "tests/integration/test_markdown_plan.py": 24,
    "tests/integration/test_kube_client.py": 22,
    "tests/integration/test_extension_apiserver.py": 22,
    "tests/integration/test_ssh_nodes.py": 16,
    "tests/integration/test_sandbox_failures.py": 8,
    "tests/integration/test_node_links.py": 4,
}
UNLISTED_SECONDS = 1
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
        sandbox.down(paths, keep=True)
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

        info = sandbox.up(name, **options)
        self.started.append(name)
        return info

    def stop_all(self) -> None:
        """Stop every one, a registered user sandbox before its admin, even if one fails to stop."""
        from reconciler import sandbox

        failures = []
        while self.started:
            paths = SandboxPaths.named(self.started.pop())
            if paths.directory.exists():
                try:
                    sandbox.down(paths, keep=True)
                except Exception as exc:  # the others must still stop; report it after
                    failures.append(f"{paths.name}: {exc}")
        if failures:
            raise RuntimeError("sandboxes did not stop: " + "; ".join(failures))


@pytest.fixture(scope="module")
def start_sandbox(sandbox_root):
    """A factory: start a sandbox for this module; each is stopped when the module ends."""
    _require_binaries()
    sandboxes = _Sandboxes()
    yield sandboxes.start
    sandboxes.stop_all()


_shared = _Sandboxes()  # the session's ``cluster``


@pytest.fixture(scope="session")
def cluster(sandbox_root):
    """One control plane, three kwok workers, kubeadm's add-ons and 2 sample namespaces of
    workloads: the sandbox most tests share. Tests leave it as they found it (they change
    copies of its spec, or put back what they changed); test_sandbox.py restarts CoreDNS,
    whose new pods are as good as the old. It is stopped right after the last test of
    SHARED_CLUSTER_FILES, not at the end of the session."""
    _require_binaries()
    yield _shared.start("it", control_planes=1, workers=3, workloads=2)
    _shared.stop_all()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem) -> None:
    """Stop ``cluster`` once its work unit is done: an idle control plane costs CPU."""
    if _work_unit(item.nodeid) == SHARED_CLUSTER and (nextitem is None or
                                                      _work_unit(nextitem.nodeid) != SHARED_CLUSTER):
        _shared.stop_all()


def _work_unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return SHARED_CLUSTER if path in SHARED_CLUSTER_FILES else path


def pytest_collection_modifyitems(config, items) -> None:
    """The files of one work unit together and the costliest units first; every xdist worker
    collects the same items and sorts them the same way, as xdist requires. A test that
    uses ``cluster`` outside SHARED_CLUSTER_FILES would start it on a second worker, and
    after the unit is done find it stopped: refused here."""
    strays = sorted({item.nodeid.split("::", 1)[0] for item in items
                     if "cluster" in item.fixturenames and _work_unit(item.nodeid) != SHARED_CLUSTER})
    if strays:
        raise pytest.UsageError(f"tests/conftest.py: add {', '.join(strays)} to SHARED_CLUSTER_FILES "
                                "(they use the shared cluster fixture)")
    # By cost, then by unit: the files of a unit stay together even where two units cost the same.
    items.sort(key=lambda item: (-_estimate(_work_unit(item.nodeid)), _work_unit(item.nodeid)))


def _estimate(unit: str) -> float:
    return ESTIMATED_SECONDS.get(unit, UNLISTED_SECONDS)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Each work unit goes to one worker whole, so a module's sandboxes start once. The
    units are split up front, longest first, each to the worker with less estimated work:
    xdist's own scheduler hands a worker its next unit while two of its tests are still to
    run, which put the two costliest single-test files on one worker."""
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

        def schedule(self) -> None:
            assert self.collection_is_completed
            if self.collection is not None or not self._check_nodes_have_same_collection():
                return
            self.collection = list(next(iter(self.registered_collections.values())))
            units: dict[str, dict[str, bool]] = {}
            for nodeid in self.collection:
                units.setdefault(self._split_scope(nodeid), {})[nodeid] = False
            load = {node: 0.0 for node in self.nodes}
            for scope in sorted(units, key=_estimate, reverse=True):  # stable: ties keep collection order
                node = min(self.nodes, key=lambda n: load[n])
                load[node] += _estimate(scope)
                self.assigned_work.setdefault(node, {})[scope] = units[scope]
            for node in self.nodes:
                work = self.assigned_work.setdefault(node, {})
                collection = self.registered_collections[node]
                indexes = [collection.index(nodeid) for unit in work.values() for nodeid in unit]
                if indexes:
                    node.send_runtest_some(indexes)
                node.shutdown()  # all its work is sent

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
