"""Fixtures shared by all tests: real sandboxes for the integration tests.

Integration tests skip only when the Kubernetes binaries are missing and CI is unset;
under CI a missing binary fails the run (the README's test command builds them first).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.sandbox import binaries
from reconciler.sandbox._paths import ROOT_ENV, SandboxPaths


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
    """Every sandbox of the test session lives here, never in the user's own state dir."""
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


@pytest.fixture(scope="session")
def start_sandbox(sandbox_root):
    """A factory: start a sandbox for the session; all are stopped at the end."""
    from reconciler import sandbox

    _require_binaries()
    started = []

    def start(name: str, **options):
        info = sandbox.up(name, **options)
        started.append(name)
        return info

    yield start
    for name in started:
        paths = SandboxPaths.named(name)
        if paths.directory.exists():
            sandbox.down(paths)


@pytest.fixture(scope="session")
def cluster(start_sandbox):
    """One control plane, three kwok workers: the sandbox most tests share."""
    return start_sandbox("it", control_planes=1, workers=3)


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
