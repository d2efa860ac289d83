"""Sandbox ports: reserved across processes, outside the kernel's ephemeral range, so two
sandboxes starting at once (the two pytest-xdist workers) never get the same port."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.sandbox import _ports

ROOT = Path(__file__).resolve().parents[2]

RESERVER = """
import json, os, random, sys, time
from pathlib import Path
from reconciler.sandbox import _ports
go, owner = Path(sys.argv[1]), Path(sys.argv[2])
(owner / "ready").touch()
while not go.exists():
    time.sleep(0.0005)
print(json.dumps(_ports.reserve(int(sys.argv[3]), owner, rng=random.Random(7))))
"""


@pytest.fixture(autouse=True)
def reservations(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "reservations"
    monkeypatch.setenv(_ports.RESERVATIONS_ENV, str(directory))
    return directory


def _owner(tmp_path: Path, name: str) -> Path:
    owner = tmp_path / name
    owner.mkdir()
    return owner


def test_two_reservers_in_two_processes_never_get_the_same_port(tmp_path):
    """Both walk the candidates in the same order, started at the same instant: every port
    is contended, and each goes to exactly one of them."""
    go = tmp_path / "go"
    count = 60
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-c", RESERVER, str(go), str(_owner(tmp_path, f"sandbox-{n}")),
                                   str(count)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
                 for n in range(2)]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"sandbox-{n}" / "ready").exists() for n in range(2)):  # both waiting at the gate
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.01)
    go.touch()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err.decode()
        results.append(json.loads(out))
    first, second = results
    assert len(set(first)) == len(set(second)) == count
    assert not set(first) & set(second)
    low, high = _ports.ephemeral_range()
    assert all(port >= _ports.LOWEST and not low <= port <= high for port in first + second)


def test_a_reserved_port_is_given_again_only_once_released_or_its_owner_is_gone(tmp_path):
    a, b, c, d = (_owner(tmp_path, name) for name in "abcd")
    taken_a = _ports.reserve(5, a, rng=random.Random(1))
    taken_b = _ports.reserve(5, b, rng=random.Random(1))  # the same order: A's are held
    assert not set(taken_a) & set(taken_b)
    _ports.release(a)
    assert _ports.reserve(5, c, rng=random.Random(1)) == taken_a
    shutil.rmtree(b)  # a sandbox whose directory is gone holds nothing
    assert _ports.reserve(5, d, rng=random.Random(1)) == taken_b


def test_a_port_something_listens_on_is_not_reserved(tmp_path):
    first = _ports.reserve(1, _owner(tmp_path, "probe"), rng=random.Random(3))[0]
    _ports.release(tmp_path / "probe")
    with socket.socket() as listener:
        listener.bind((_ports.LOOPBACK, first))
        listener.listen()
        taken = _ports.reserve(1, _owner(tmp_path, "sandbox"), rng=random.Random(3))
    assert taken != [first]


def test_candidates_leave_out_the_ephemeral_range(tmp_path):
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("20000\t64999\n")
    assert _ports.ephemeral_range(ranges) == (20000, 64999)
    assert _ports.ephemeral_range(tmp_path / "missing") == _ports.EPHEMERAL_FALLBACK
    low, high = _ports.ephemeral_range()
    pool = _ports.candidates()
    assert pool and not any(low <= port <= high for port in pool) and min(pool) >= _ports.LOWEST


def test_a_reservations_directory_that_others_may_write_is_refused(tmp_path, monkeypatch):
    """The default directory has a name anyone can guess in the shared temp dir: one that
    another user made (here: writable by others) is refused, not written in."""
    from reconciler.errors import SandboxError
    from reconciler.sandbox import _ports

    shared = tmp_path / "ports"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(_ports.RESERVATIONS_ENV, str(shared))
    owner = tmp_path / "owner"
    owner.mkdir()
    with pytest.raises(SandboxError, match="only it may write"):
        _ports.reserve(1, owner)


def test_a_link_planted_as_a_reservation_file_is_not_written_through(tmp_path, monkeypatch):
    from reconciler.sandbox import _ports

    directory = tmp_path / "ports"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv(_ports.RESERVATIONS_ENV, str(directory))
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    low = [port for port in _ports.candidates()][:1][0]
    (directory / str(low)).symlink_to(victim)
    monkeypatch.setattr(_ports, "candidates", lambda: [low, low + 1])
    owner = tmp_path / "owner"
    owner.mkdir()
    assert _ports.reserve(1, owner) == [low + 1]
    assert victim.read_text() == "keep me"
    _ports.release(owner)
