"""Starts careconcile's command lines for the integration tests, each in a process of its own,
without paying Python's start-up and careconcile's imports each time.

A careconcile process spends about 0.55 s of CPU before it reads its first argument
(Python, pydantic's models, cryptography). The tests start it about a thousand times, the
kill loops of test_authorities.py 123 times in a row, on two busy cores. So each test
process keeps one server (this file, run as a script): it imports the CLI once and forks a
child per command line. The child is a real process with a pid of its own, its own
environment, working directory, stdin, stdout and stderr (files), and it runs
``reconciler.cli.main(argv)`` as ``python -m reconciler`` does, then Python's exit (its
threads joined, the atexit handlers run). A signal that ends it (the executor's test hook
SIGKILLs it) is its exit status, as subprocess reports it. tests/corpus/runner.py does the
same for the fuzz corpus.

The protocol, one JSON object per line: the test process sends ``id``, ``argv``, ``env``,
``cwd`` and the paths ``stdin``, ``stdout`` and ``stderr``; the server answers
``{"id", "pid"}`` once the child runs and ``{"id", "exit"}`` (subprocess's returncode)
once it ended. The server exits when its stdin closes."""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from concurrent.futures import Future
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "reconciler" / "__main__.py")


def _child(request: dict) -> None:
    code = 1
    try:
        os.dup2(os.open(request["stdin"], os.O_RDONLY), 0)
        os.dup2(os.open(request["stdout"], os.O_WRONLY | os.O_TRUNC), 1)
        os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_TRUNC), 2)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [MAIN, *request["argv"]]
        try:
            from reconciler.cli import main

            code = main(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - what Python prints for an uncaught exception
            traceback.print_exc()
            code = 1
        threading._shutdown()  # as Python's exit does: wait for the threads that are not daemons
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def serve() -> None:
    importlib.import_module("reconciler.cli")  # once, before the forks

    children: dict[int, int] = {}  # pid: request id
    pending = b""
    closed = False

    def answer(message: dict) -> None:
        os.write(1, json.dumps(message).encode() + b"\n")

    while not closed or children:
        if not closed:
            ready, _, _ = select.select([0], [], [], 0.005 if children else None)
            if ready:
                data = os.read(0, 65536)
                closed = not data
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    request = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        _child(request)
                    children[pid] = request["id"]
                    answer({"id": request["id"], "pid": pid})
        else:
            select.select([], [], [], 0.005)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            answer({"id": children.pop(pid), "exit": os.waitstatus_to_exitcode(status)})


class Launcher:
    """The test process's end: one server, shared by the threads of the test process."""

    def __init__(self) -> None:
        self._server = subprocess.Popen([sys.executable, "-P", __file__], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, cwd=ROOT)
        self._lock = threading.Lock()
        self._next = 0
        self._started: dict[int, Future] = {}
        self._ended: dict[int, Future] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._server.stdout:
            message = json.loads(line)
            with self._lock:
                if "pid" in message:
                    self._started.pop(message["id"]).set_result(message["pid"])
                else:
                    self._ended.pop(message["id"]).set_result(message["exit"])
        with self._lock:  # the server is gone: nobody waits forever
            for future in (*self._started.values(), *self._ended.values()):
                future.set_exception(RuntimeError("the careconcile launcher exited"))

    def run(self, argv: list[str], *, env: dict[str, str], cwd: Path, stdin: str,
            timeout: float) -> subprocess.CompletedProcess:
        """As ``subprocess.run([python, -m, reconciler, *argv], capture_output=True,
        text=True, ...)`` would: TimeoutExpired after SIGKILL if it runs past ``timeout``."""
        with tempfile.TemporaryDirectory(prefix="careconcile-launch-") as scratch:
            paths = {name: Path(scratch) / name for name in ("stdin", "stdout", "stderr")}
            paths["stdin"].write_text(stdin)
            for name in ("stdout", "stderr"):
                paths[name].touch()
            started, ended = Future(), Future()
            with self._lock:
                self._next += 1
                ident = self._next
                self._started[ident], self._ended[ident] = started, ended
                request = {"id": ident, "argv": [str(a) for a in argv], "env": env, "cwd": str(cwd),
                           **{name: str(path) for name, path in paths.items()}}
                self._server.stdin.write(json.dumps(request).encode() + b"\n")
                self._server.stdin.flush()
            pid = started.result(timeout=60)
            try:
                code = ended.result(timeout=timeout)
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                ended.result(timeout=60)
                raise subprocess.TimeoutExpired(["careconcile", *argv], timeout,
                                                paths["stdout"].read_text(), paths["stderr"].read_text())
            return subprocess.CompletedProcess(["careconcile", *argv], code, paths["stdout"].read_text(),
                                               paths["stderr"].read_text())


_launcher: Launcher | None = None
_launcher_lock = threading.Lock()


def launcher() -> Launcher:
    """This test process's launcher, started on first use."""
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            _launcher = Launcher()
        return _launcher


if __name__ == "__main__":
    serve()
